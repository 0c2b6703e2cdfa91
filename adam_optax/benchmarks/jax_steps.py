r"""The JAX steps the benchmark times: optax.adam, ao.adam and the fast path.

Each is timed three ways: one dispatched call of a jitted, donating step that
takes params, grads and state (as torch's ``step()`` takes its tensors); the
device time per step, from many steps inside one jitted ``lax.scan`` (no host
dispatch); and a real training step's shape, with the loss and its gradient
made inside the jitted step from the params (the loss
:math:`\sum \tfrac12 \theta^2`, a cheap one) and the loss returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import adam_optax as ao
from adam_optax.benchmarks.rounds import Contender, Program
from adam_optax.benchmarks.trees import TreeSpec, arrays
from adam_optax.flat import flat_train_step, flatten_params, update_and_apply

LEARNING_RATE = 1e-3
# The diagnostics rows, and the row each one's overhead is measured against.
OVERHEAD_REFERENCE = {
  "ao.adam + diagnostics": "ao.adam",
  "ao fast path + diagnostics": "ao fast path",
}
# Above this many leaves the fast path's diagnostics row is left out: its training step
# compiles in about 3 minutes on 2,000 leaves (the view's slices), and the row would
# only repeat the fast path's (diagnostics add no work per leaf to the step).
DIAGNOSED_LEAVES_MAX = 500


class Method(NamedTuple):
  """A JAX method the benchmark times.

  Attributes:
    transformation: the optimizer.
    flat: whether params, grads and state are kept flat (:mod:`adam_optax.flat`).
  """

  transformation: optax.GradientTransformation
  flat: bool


def _nbytes(tree: Any) -> int:
  return sum(np.dtype(x.dtype).itemsize * math.prod(x.shape) for x in jax.tree.leaves(tree))


def methods(spec: TreeSpec) -> dict[str, Method]:
  """Name -> :class:`Method` for the JAX methods on ``spec``.

  optax.adam has no ``nu_dtype``: with bfloat16 params its second moment stays
  bfloat16 (so it moves fewer bytes; the roofline is per method). The rows
  with ``diagnostics=True`` (:data:`OVERHEAD_REFERENCE`) follow their
  references. The methods of :func:`left_out` are not included.
  """
  moments = {"mu_dtype": spec.moment_dtype, "nu_dtype": spec.moment_dtype}
  adam = ao.adam(LEARNING_RATE, **moments)
  with_diagnostics = ao.adam(LEARNING_RATE, **moments, diagnostics=True)
  every = {
    "optax.adam": Method(optax.adam(LEARNING_RATE, mu_dtype=spec.moment_dtype), flat=False),
    "ao.adam": Method(adam, flat=False),
    "ao.adam + diagnostics": Method(with_diagnostics, flat=False),
    "ao fast path": Method(adam, flat=True),
    "ao fast path + diagnostics": Method(with_diagnostics, flat=True),
  }
  return {name: method for name, method in every.items() if name not in left_out(spec)}


def left_out(spec: TreeSpec) -> dict[str, str]:
  """The methods not run on ``spec``, with the reason (see :data:`DIAGNOSED_LEAVES_MAX`)."""
  if len(spec.shapes) <= DIAGNOSED_LEAVES_MAX:
    return {}
  return {
    "ao fast path + diagnostics": f"more than {DIAGNOSED_LEAVES_MAX} leaves: the fast path's "
    "training step compiles in minutes per row (the view's slices)",
  }


def _loss(tree: Any) -> jax.Array:
  return sum(0.5 * jnp.vdot(x, x).astype(jnp.float32) for x in jax.tree.leaves(tree))


def prepare(name: str, method: Method, spec: TreeSpec, scan_steps: int) -> Contender:
  """A method of :func:`methods` on ``spec``'s tree, its three programs ready to compile.

  Flat methods keep params, grads and state as :class:`FlatParams` and step
  with :func:`adam_optax.flat.update_and_apply` (and, for the real step,
  :func:`adam_optax.flat.flat_train_step`). Nothing is compiled here: the
  benchmark compiles each program within the tree's budget (:mod:`.compiles`).
  """
  tx, flat = method
  as_params: Callable[[Any], Any] = flatten_params if flat else (lambda p: p)

  def fresh() -> tuple[Any, Any]:
    """New params and state (the previous ones were donated)."""
    params = as_params(jax.device_put(arrays(spec, 0.5)))
    return params, tx.init(params)

  def step(p: Any, g: Any, s: Any) -> tuple[Any, Any]:
    return update_and_apply(tx, g, s, p)

  def scanned(p: Any, g: Any, s: Any) -> tuple[Any, Any]:
    return lax.scan(lambda c, _: (step(c[0], g, c[1]), None), (p, s), length=scan_steps)[0]

  def real(p: Any, s: Any) -> tuple[Any, Any, Any]:
    loss, g = jax.value_and_grad(_loss)(p)
    return (*step(p, g, s), loss)

  grads = as_params(jax.device_put(arrays(spec, 0.01)))
  # Compiled for shapes alone, so that no second copy of the tree stays alive.
  params, state = jax.tree.map(_abstract, fresh())
  with_grads = lambda compiled, c: compiled(c[0], grads, c[1])  # noqa: E731
  return Contender(
    method=name,
    bytes_per_step=3 * _nbytes(params) + 2 * _nbytes(state),
    fresh=fresh,
    programs={
      "wall": Program(
        jitted=jax.jit(step, donate_argnums=(0, 2)), args=(params, grads, state), call=with_grads
      ),
      "device": Program(
        jitted=jax.jit(scanned, donate_argnums=(0, 2)),
        args=(params, grads, state),
        call=with_grads,
      ),
      "real": Program(
        jitted=flat_train_step(_loss, tx) if flat else jax.jit(real, donate_argnums=(0, 1)),
        args=(params, state),
        call=lambda compiled, c: compiled(*c[:2]),
      ),
    },
  )


def _abstract(x: jax.Array) -> jax.ShapeDtypeStruct:
  """The shape, dtype and sharding of ``x``: what a program is compiled for."""
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
