r"""Where the elements of a low-bit moment go: rows of blocks, and the leaf's sharding kept.

A leaf is read in row-major order and cut into blocks of consecutive
elements, one scale per block; ``per_row = 8 // bits`` blocks make one row of
codes, ``block`` bytes (at 4 bits the row's first block in the low nibbles,
its second in the high ones). A row is :math:`G = \text{per\_row} \cdot
\text{block}` elements: 256 by default at both widths. Two layouts, told
apart by the shapes of the stored arrays alone (so a state that lost its
static metadata, in ``nnx.state`` or a checkpoint restored without a target,
is still read exactly):

* **Rows** (``balanced=False``), when some trailing dimensions
  :math:`(d_j, \dots, d_{r-1})` of the leaf hold a whole number of rows: the
  smallest such group is cut into rows, and the dimensions before it, the
  *lead*, are kept: codes ``uint8[*lead, rows, block]``, scales
  ``[*lead, rows, per_row]``. No block crosses a lead index, so a leaf sharded
  over its lead dimensions keeps its sharding, and one sharded over the first
  trailing dimension keeps it when each shard holds whole rows.
* **Balanced** (``balanced=True``), when no such group exists (the leaf's size
  is not a multiple of :math:`G`): its :math:`n` elements make
  :math:`\lceil n/G \rceil` rows of blocks of :math:`\lceil n / \text{blocks}
  \rceil` elements (at most ``block``), the last ``padding`` elements of the
  last block zeros: codes ``uint8[rows, block']``, scales
  ``[rows * per_row + padding]``, the blocks' scales followed by ``padding``
  zeros, so that the number of padding elements is in the shape (it is less
  than the number of blocks, which tells ``per_row`` apart too).
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
