"""Where the elements of a low-bit moment go: rows of blocks, and the leaf's sharding kept.

:func:`plan` picks a leaf's :class:`BlockLayout` (the two layouts, *rows* and
*balanced*, are described in :mod:`adam_optax.quantized`), :func:`read` gets it
back from the stored arrays' shapes, and :func:`to_blocks`/:func:`from_blocks`
cut a leaf into ``(..., *lead, blocks, block)`` and back, keeping an explicit
sharding wherever the blocks stay on their device (:func:`kept_axis`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """How one leaf (without batch dimensions) is stored; static.

  Attributes:
    lead: the leaf's leading dimensions kept in the codes' shape.
    rows: rows of codes per lead index.
    block: elements per block (bytes per row of codes).
    per_row: blocks per row, ``8 // bits``.
    balanced: the balanced layout (flat scales, padding recorded).
    padding: zero elements at the end of the last block (balanced only).
  """

  lead: tuple[int, ...]
  rows: int
  block: int
  per_row: int
  balanced: bool = False
  padding: int = 0

  @property
  def bits(self) -> int:
    """Bits per code."""
    return 8 // self.per_row

  @property
  def blocks(self) -> int:
    """Blocks per lead index."""
    return self.rows * self.per_row

  @property
  def size(self) -> int:
    """Elements per lead index (the trailing dimensions' size)."""
    return self.blocks * self.block - self.padding

  @property
  def codes_shape(self) -> tuple[int, ...]:
    """The shape of the stored codes (without batch dimensions)."""
    return (*self.lead, self.rows, self.block)

  @property
  def scales_shape(self) -> tuple[int, ...]:
    """The shape of the stored scales (without batch dimensions)."""
    if self.balanced:
      return (self.blocks + self.padding,)
    return (*self.lead, self.rows, self.per_row)


def plan(shape: tuple[int, ...], bits: int, block: int) -> BlockLayout:
  """The layout of a leaf of ``shape`` in blocks of ``block`` at ``bits`` bits."""
  per_row = 8 // bits
  row = per_row * block
  for j in reversed(range(len(shape))):  # the smallest trailing group first
    size = math.prod(shape[j:])
    if size % row == 0:
      return BlockLayout(tuple(shape[:j]), size // row, block, per_row)
  n = math.prod(shape)
  rows = -(-n // row)
  short = -(-n // (rows * per_row))
  return BlockLayout((), rows, short, per_row, balanced=True, padding=rows * per_row * short - n)


def read(codes_shape: tuple[int, ...], scales_shape: tuple[int, ...]) -> BlockLayout:
  """The layout of stored codes and scales, from their shapes (leading dimensions as lead).

  Raises:
    ValueError: when the shapes are not those of a layout of this module.
  """
  if len(codes_shape) >= 2 and len(scales_shape) == len(codes_shape):
    *lead, rows, block = codes_shape
    per_row = scales_shape[-1]
    layout = BlockLayout(tuple(lead), rows, block, per_row)
  elif len(codes_shape) >= 2 and len(scales_shape) == len(codes_shape) - 1:
    rows, block = codes_shape[-2:]
    per_row = 1 if scales_shape[-1] < 2 * rows else 2
    padding = scales_shape[-1] - per_row * rows
    layout = BlockLayout((), rows, block, per_row, balanced=True, padding=padding)
  else:
    layout = None
  if (
    layout is None
    or layout.per_row not in (1, 2)
    or not 0 <= layout.padding < max(layout.blocks, 1)
    or layout.scales_shape != tuple(scales_shape[len(scales_shape) - len(layout.scales_shape) :])
  ):
    raise ValueError(
      f"codes of shape {tuple(codes_shape)} and scales of shape {tuple(scales_shape)} "
      "are not a low-bit moment stored by ao.Quantized."
    )
  return layout


def explicit_spec(x: Any) -> tuple[Any, ...] | None:
  """``x``'s partition spec on a mesh of explicit axes (one entry per dimension), or ``None``."""
  typeof = getattr(jax, "typeof", None)
  spec = getattr(getattr(typeof(x), "sharding", None), "spec", None) if typeof else None
  if spec is None or all(axis is None for axis in spec):
    return None
  return tuple(spec) + (None,) * (jnp.ndim(x) - len(spec))


def zeros_like(x: Any, dtype: Any) -> jax.Array:
  """``jnp.zeros_like(x, dtype)`` with ``x``'s sharding, also while tracing.

  A traced ``x`` on a mesh of explicit axes hands its type's sharding on
  itself: under jax 0.11, ``jnp.zeros_like`` of a tracer gave an unsharded
  result (seen in ``jax.eval_shape(tx.init, params)`` on 8 devices).
  """
  if isinstance(x, jax.core.Tracer) and explicit_spec(x) is not None:
    return jnp.zeros_like(x, dtype=dtype, out_sharding=jax.typeof(x).sharding)
  return jnp.zeros_like(x, dtype=dtype)


def _shards(mesh: Any, axis: Any) -> int:
  names = () if axis is None else (axis,) if isinstance(axis, str) else tuple(axis)
  return math.prod(mesh.shape[name] for name in names)


def kept_axis(spec: tuple[Any, ...], mesh: Any, layout: BlockLayout, batch: int) -> Any:
  """The mesh axis the rows keep, or ``False`` when the trailing dimensions must be gathered.

  ``spec`` is the leaf's (with ``batch`` leading batch dimensions). Batch and
  lead dimensions keep theirs; of the trailing ones only the first may be
  sharded, and only so that each shard holds whole rows.
  """
  trailing = spec[batch + len(layout.lead) :]
  if not any(trailing):
    return None
  first, later = trailing[0], trailing[1:]
  row = layout.per_row * layout.block
  if any(later) or layout.padding or (layout.size // _shards(mesh, first)) % row:
    return False
  return first


def _spec_and_mesh(x: Any) -> tuple[tuple[Any, ...] | None, Any]:
  """``x``'s partition spec and mesh: explicit axes from its type, else a concrete sharding."""
  spec = explicit_spec(x)
  if spec is not None:
    return spec, jax.typeof(x).sharding.mesh
  sharding = getattr(x, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding) and any(sharding.spec):
    spec = tuple(sharding.spec) + (None,) * (jnp.ndim(x) - len(sharding.spec))
    return spec, sharding.mesh
  return None, None


def resharded_spec(param: Any, layout: BlockLayout | None, ndim: int) -> tuple[Any, ...] | None:
  """``param``'s partition spec when its low-bit moment cannot keep it, else ``None``.

  ``layout`` is the moment's (``None`` for a fast-path buffer) and ``ndim``
  the number of dimensions of one unbatched leaf.

  A leaf keeps its sharding when only its batch and lead dimensions are
  sharded, or also the first trailing one, with each shard holding whole rows
  (the module docstring). Otherwise a block would cross two devices, and every
  step gathers the trailing dimensions first. A fast-path buffer's pieces
  cross its shards: a sharded buffer is always gathered.
  """
  spec, mesh = _spec_and_mesh(param)
  if spec is None:
    return None
  if layout is None:
    return spec
  return spec if kept_axis(spec, mesh, layout, jnp.ndim(param) - ndim) is False else None


def reshape(x: chex.Array, shape: tuple[int, ...], keep: int) -> chex.Array:
  """``x.reshape(shape)``, its first ``keep`` dimensions unchanged, keeping an explicit sharding.

  The first reshaped dimension takes the sharding of ``x``'s dimension ``keep``;
  the dimensions after it are not sharded (callers gather them first).
  """
  spec = explicit_spec(x)
  if spec is None:
    return x.reshape(shape)
  rest = (spec[keep],) + (None,) * (len(shape) - keep - 1) if len(shape) > keep else ()
  sharding = jax.sharding.NamedSharding(
    jax.typeof(x).sharding.mesh, jax.sharding.PartitionSpec(*spec[:keep], *rest)
  )
  return x.reshape(shape, out_sharding=sharding)


def _gather_trailing(x: chex.Array, spec: tuple[Any, ...], keep: int) -> chex.Array:
  sharding = jax.sharding.NamedSharding(
    jax.typeof(x).sharding.mesh,
    jax.sharding.PartitionSpec(*spec[:keep], *(None,) * (x.ndim - keep)),
  )
  return jax.sharding.reshard(x, sharding)


def to_blocks(values: chex.Array, shape: tuple[int, ...], layout: BlockLayout) -> chex.Array:
  """``values`` (batch dimensions, then ``shape``) as ``(..., *lead, blocks, block)``."""
  batch = values.ndim - len(shape)
  outer = batch + len(layout.lead)
  spec = explicit_spec(values)
  if spec is not None and kept_axis(spec, jax.typeof(values).sharding.mesh, layout, batch) is False:
    values = _gather_trailing(values, spec, outer)
  flat = reshape(values, (*values.shape[:outer], math.prod(values.shape[outer:])), outer)
  if layout.padding:
    flat = jnp.pad(flat, [(0, 0)] * outer + [(0, layout.padding)])
  return reshape(flat, (*flat.shape[:outer], layout.blocks, layout.block), outer)


def from_blocks(blocks: chex.Array, shape: tuple[int, ...], layout: BlockLayout) -> chex.Array:
  """The inverse of :func:`to_blocks`."""
  outer = blocks.ndim - 2
  flat = reshape(blocks, (*blocks.shape[:outer], layout.blocks * layout.block), outer)
  if layout.padding:
    flat = flat[..., : layout.size]
  batch = outer - len(layout.lead)
  return reshape(flat, (*blocks.shape[:batch], *shape), outer)
