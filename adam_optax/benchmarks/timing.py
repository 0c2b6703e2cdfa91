"""The copy bandwidth: the roofline's denominator."""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp

from adam_optax.benchmarks.rounds import round_robin


def copy_bandwidth(size: int, repeats: int) -> float:
  """Read+write bandwidth in bytes/s of a donated jitted multiply of ``size`` float32s.

  This is the traffic pattern of an optimizer step (stream in, stream out, in
  place), so it is the roofline's denominator.
  """
  scale = jax.jit(lambda x: x * jnp.float32(1.0000001), donate_argnums=0)
  (calls,) = round_robin({"copy": scale}, {"copy": jnp.ones(size, jnp.float32)}, 1, repeats)["copy"]
  seconds = statistics.median(calls)
  return 2 * 4 * size / seconds
