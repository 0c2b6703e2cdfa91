"""Timers: compile times, copy bandwidth, memory (repeated calls: :mod:`.rounds`)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

from adam_optax.benchmarks.rounds import round_robin


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
  (calls,) = round_robin({"copy": scale}, {"copy": jnp.ones(size, jnp.float32)}, 1, repeats)["copy"]
  seconds = statistics.median(calls)
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
