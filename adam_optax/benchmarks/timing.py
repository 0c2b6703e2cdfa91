"""Timers: medians of repeated calls, compile times, copy bandwidth, memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def median_seconds(call: Callable[[Any], Any], carry: Any, repeats: int, warmup: int = 2) -> float:
  """Median wall time of ``carry = call(carry)``, each call waited for.

  ``call`` takes and returns the carried value (donated buffers must be
  threaded through), so every call sees live inputs.

  Args:
    call: one step; returns what the next call takes.
    carry: its first input.
    repeats: the number of timed calls.
    warmup: untimed calls first (compilation, first-touch of new buffers).

  Returns:
    The median seconds per call.
  """
  for _ in range(warmup):
    carry = jax.block_until_ready(call(carry))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    carry = jax.block_until_ready(call(carry))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def compile_seconds(jitted: Any, *args: Any) -> tuple[Any, float]:
  """Lowers and compiles ``jitted`` for ``args``; returns (compiled, seconds)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def copy_bandwidth(size: int, repeats: int) -> float:
  """Read+write bandwidth in bytes/s of a donated jitted multiply of ``size`` float32s.

  This is the traffic pattern of an optimizer step (stream in, stream out, in
  place), so it is the roofline's denominator.
  """
  scale = jax.jit(lambda x: x * jnp.float32(1.0000001), donate_argnums=0)
  seconds = median_seconds(scale, jnp.ones(size, jnp.float32), repeats)
  return 2 * 4 * size / seconds


def step_memory_bytes(compiled: Any) -> int:
  """Peak bytes of one compiled call by XLA's own accounting.

  Arguments, plus outputs that do not reuse a donated argument, plus
  temporaries: with donation this is params + grads + state and whatever
  else the step allocates.
  """
  stats = compiled.memory_analysis()
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    - stats.alias_size_in_bytes
    + stats.temp_size_in_bytes
  )
