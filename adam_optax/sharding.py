"""ZeRO-1: the optimizer state split over the data-parallel devices.

In plain data parallelism every device holds the params, the gradients and
both moments of Adam: three copies of the model per device. ZeRO stage 1
keeps the params replicated but gives each device only its slice of the
moments. Nothing here moves data: :func:`zero1_shardings` only says where each
leaf of the state lives, as :class:`jax.sharding.NamedSharding` values handed
to :func:`jax.jit` (``out_shardings``) or :func:`jax.lax.with_sharding_constraint`;
XLA then updates each slice where it lives and all-gathers the param updates.
Adam is elementwise, so every slice computes exactly what one device would.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def _spec_on(leaf: Any, mesh: Mesh) -> list[Any]:
  """The leaf's own partition spec on ``mesh``, one entry per dimension."""
  sharding = getattr(leaf, "sharding", None)
  own = (
    list(sharding.spec)
    if isinstance(sharding, NamedSharding) and sharding.mesh.axis_names == mesh.axis_names
    else []
  )
  return own + [None] * (len(leaf.shape) - len(own))


def _uses(entry: Any, axis_name: str) -> bool:
  return entry == axis_name or (isinstance(entry, tuple) and axis_name in entry)


def zero1_shardings(state: chex.ArrayTree, mesh: Mesh, axis_name: str = "data") -> chex.ArrayTree:
  r"""Shardings that split every array of an optimizer state over ``axis_name``.

  For each leaf, the first dimension that is not sharded yet and whose size
  :math:`n` is a multiple of the axis size :math:`D` is split over
  ``axis_name``; each device then stores :math:`n/D` of it, so the moments of
  Adam cost :math:`2P/D` per device instead of :math:`2P` for :math:`P`
  params. Leaves with no such dimension (the step count, small biases) keep
  their sharding, replicated by default. A leaf already sharded on ``mesh``
  (over a model axis, say) keeps that and gains ``axis_name`` on another
  dimension.

  Examples:
    >>> import jax, jax.numpy as jnp, adam_optax as ao
    >>> from adam_optax.sharding import zero1_shardings
    >>> mesh = jax.make_mesh((1,), ("data",))
    >>> tx = ao.adam(1e-3)
    >>> state = jax.eval_shape(tx.init, {"w": jnp.zeros((4, 3))})
    >>> shardings = zero1_shardings(state, mesh)
    >>> shardings[0].mu["w"].spec, shardings[0].count.spec
    (P('data', None), P())

  Args:
    state: the optimizer state, or its ``jax.eval_shape``; leaves need a
      ``shape`` (and may carry a ``sharding``).
    mesh: the device mesh.
    axis_name: the data-parallel axis of ``mesh``.

  Returns:
    A tree like ``state`` of :class:`jax.sharding.NamedSharding`.

  References:
    Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
    Parameter Models", SC 2020, section 5.1 (:math:`P_{os}`).
  """
  size = mesh.shape[axis_name]

  def leaf_sharding(leaf: Any) -> NamedSharding:
    spec = _spec_on(leaf, mesh)
    if not any(_uses(entry, axis_name) for entry in spec):
      for dim, (entry, n) in enumerate(zip(spec, leaf.shape, strict=True)):
        if entry is None and n > 0 and n % size == 0:
          spec[dim] = axis_name
          break
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree.map(leaf_sharding, state)
