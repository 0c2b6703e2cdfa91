r"""The JAX steps the benchmark times: optax.adam, ao.adam and the fast path.

Each is timed three ways: one dispatched call of a jitted, donating step that
takes params, grads and state (as torch's ``step()`` takes its tensors); the
device time per step, from many steps inside one jitted ``lax.scan`` (no host
dispatch); and a real training step's shape, with the loss and its gradient
made inside the jitted step from the params (the loss
:math:`\sum \tfrac12 \theta^2`, a cheap one) and the loss returned.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import adam_optax as ao
from adam_optax.benchmarks import timing
from adam_optax.benchmarks.trees import TreeSpec, arrays
from adam_optax.flat import CHUNK_SIZE, flat_train_step, flatten_params, update_and_apply

LEARNING_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class Measurement:
  """What the benchmark measures of one optimizer on one tree.

  Attributes:
    method: the optimizer's name.
    bytes_per_step: bytes a step must read and write (params, grads, state).
    wall_ms: median wall time of one dispatched step.
    device_ms: median device time per step (steps inside one ``lax.scan``).
    real_ms: median wall time of a step that also makes the gradients.
    peak_bytes: peak memory of the step (see ``memory_source`` in the report).
    compile_s: seconds to compile the dispatched step (``None``: not compiled).
    real_compile_s: seconds to compile the real training step.
  """

  method: str
  bytes_per_step: int
  wall_ms: float
  device_ms: float
  real_ms: float
  peak_bytes: int
  compile_s: float | None
  real_compile_s: float | None


def _nbytes(tree: Any) -> int:
  return sum(np.dtype(x.dtype).itemsize * math.prod(x.shape) for x in jax.tree.leaves(tree))


def methods(spec: TreeSpec) -> dict[str, tuple[optax.GradientTransformation, bool, int | None]]:
  """Name -> (transformation, flat?, chunk size) for the JAX methods on ``spec``.

  optax.adam has no ``nu_dtype``: with bfloat16 params its second moment stays
  bfloat16 (so it moves fewer bytes; the roofline is per method). The last
  method is the fast path with the opt-in one-pass loop on CPU.
  """
  moments = {"mu_dtype": spec.moment_dtype, "nu_dtype": spec.moment_dtype}
  return {
    "optax.adam": (optax.adam(LEARNING_RATE, mu_dtype=spec.moment_dtype), False, None),
    "ao.adam": (ao.adam(LEARNING_RATE, **moments), False, None),
    "ao fast path": (ao.adam(LEARNING_RATE, **moments), True, None),
    "ao fast path, one pass": (ao.adam(LEARNING_RATE, **moments), True, CHUNK_SIZE),
  }


def _loss(tree: Any) -> jax.Array:
  return sum(0.5 * jnp.vdot(x, x).astype(jnp.float32) for x in jax.tree.leaves(tree))


def measure(
  name: str,
  method: tuple[optax.GradientTransformation, bool, int | None],
  spec: TreeSpec,
  repeats: int,
  scan_steps: int,
) -> Measurement:
  """Times a method of :func:`methods` on ``spec``'s tree.

  Flat methods keep params, grads and state as :class:`FlatParams` and step
  with :func:`adam_optax.flat.update_and_apply` (and, for the real step,
  :func:`adam_optax.flat.flat_train_step`) with the method's chunk size.
  """
  tx, flat, chunk_size = method
  as_params: Callable[[Any], Any] = flatten_params if flat else (lambda p: p)

  def fresh() -> tuple[Any, Any]:
    """New params and state (the previous ones were donated)."""
    params = as_params(jax.device_put(arrays(spec, 0.5)))
    return params, tx.init(params)

  def step(p: Any, g: Any, s: Any) -> tuple[Any, Any]:
    if flat:
      return update_and_apply(tx, g, s, p, chunk_size=chunk_size)
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  def scanned(p: Any, g: Any, s: Any) -> tuple[Any, Any]:
    return lax.scan(lambda c, _: (step(c[0], g, c[1]), None), (p, s), length=scan_steps)[0]

  def real(p: Any, s: Any) -> tuple[Any, Any, Any]:
    loss, g = jax.value_and_grad(_loss)(p)
    return (*step(p, g, s), loss)

  grads = as_params(jax.device_put(arrays(spec, 0.01)))
  params, state = fresh()
  bytes_per_step = 3 * _nbytes(params) + 2 * _nbytes(state)
  dispatched, compile_s = timing.compile_seconds(
    jax.jit(step, donate_argnums=(0, 2)), params, grads, state
  )
  peak = timing.step_memory_bytes(dispatched)
  wall = timing.median_seconds(lambda c: dispatched(c[0], grads, c[1]), (params, state), repeats)
  many = jax.jit(scanned, donate_argnums=(0, 2))
  device = timing.median_seconds(
    lambda c: many(c[0], grads, c[1]), fresh(), max(3, repeats // 4), warmup=1
  )
  if flat:
    trained = flat_train_step(_loss, tx, chunk_size=chunk_size)
  else:
    trained = jax.jit(real, donate_argnums=(0, 1))
  trained, real_compile_s = timing.compile_seconds(trained, *fresh())
  real_s = timing.median_seconds(lambda c: trained(*c[:2]), fresh(), repeats)
  milliseconds = (wall * 1e3, device / scan_steps * 1e3, real_s * 1e3)
  return Measurement(name, bytes_per_step, *milliseconds, peak, compile_s, real_compile_s)
