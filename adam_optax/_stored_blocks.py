"""Codes and scales of a leaf, or of a fast-path buffer, in its block layout.

:func:`encode_leaf` cuts a leaf into the blocks of its
:class:`~adam_optax._block_layout.BlockLayout` and hands them to the codebooks
of :mod:`adam_optax._codes`, which see ``(..., blocks, block)`` float32 arrays
and nothing else; :func:`decode_leaf` is its inverse. A fast-path buffer
(:class:`adam_optax.flat.FlatParams`) is a run of leaves: :func:`buffer_runs`
gives each the layout the tree path gives it (and keeps leaves under
``min_size`` in float32), so that both paths store the same codes and scales,
and stores neighbours alike as one run, so that a step encodes a few arrays,
not one per leaf: codes and scales per run, shaped as a stack of its leaves so
that :func:`read_runs` finds the runs from the shapes alone, and one float32
rest.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from adam_optax import _block_layout, _codes
from adam_optax._block_layout import BlockLayout
from adam_optax._flat_buffers import gathered


@dataclasses.dataclass(frozen=True)
class Run:
  """Neighbouring leaves of a fast-path buffer stored as one; static.

  Attributes:
    layout: the layout of one of its ``count`` leaves, or ``None`` for
      elements kept in float32 (leaves under ``min_size``, the buffer's padding).
    size: elements of one leaf (all of them when ``count`` is 1).
    count: equal leaves of padded blocks, stacked (1 otherwise).
  """

  layout: BlockLayout | None
  size: int
  count: int = 1


#: A fast-path buffer's runs, in buffer order.
Runs = tuple[Run, ...]


def encode_leaf(
  values: chex.Array,
  shape: tuple[int, ...],
  layout: BlockLayout,
  signed: bool,
  scale_from: chex.Array | None = None,
) -> tuple[chex.Array, chex.Array]:
  """Codes and scales of float32 ``values`` (batch dimensions, then ``shape``).

  The scales are taken from ``scale_from`` if given: the same values computed
  again (see :func:`adam_optax.quantized.encode`).
  """

  def blocks_of(x: chex.Array) -> chex.Array:
    # The codes are piecewise constant in the values: their derivative is 0
    # almost everywhere, so no gradient flows through the stored state (the
    # step's own float32 moments carry it within a step).
    return _block_layout.to_blocks(jax.lax.stop_gradient(x).astype(jnp.float32), shape, layout)

  blocks = blocks_of(values)
  again = None if scale_from is None else blocks_of(scale_from)
  encoder = _codes.encode_signed if signed else _codes.encode_unsigned
  codes, scales = encoder(blocks, layout.bits, again)
  outer = blocks.ndim - 2
  rows = (*codes.shape[:outer], layout.rows, layout.per_row * layout.block)
  codes = _codes.pack(_block_layout.reshape(codes, rows, outer), layout.bits)
  if layout.balanced:  # the padding's length, in the shape: zeros after the scales
    return codes, jnp.pad(scales, [(0, 0)] * outer + [(0, layout.padding)])
  rows = (*scales.shape[:outer], layout.rows, layout.per_row)
  return codes, _block_layout.reshape(scales, rows, outer)


def decode_leaf(
  codes: chex.Array, scales: chex.Array, shape: tuple[int, ...], layout: BlockLayout, signed: bool
) -> chex.Array:
  """The inverse of :func:`encode_leaf` (up to the codebook's rounding)."""
  outer = codes.ndim - 2
  codes = _codes.unpack(codes, layout.bits)
  codes = _block_layout.reshape(codes, (*codes.shape[:outer], layout.blocks, layout.block), outer)
  if layout.balanced:
    scales = scales[..., : layout.blocks]
  else:
    scales = _block_layout.reshape(scales, (*scales.shape[:outer], layout.blocks), outer)
  decode = _codes.decode_signed if signed else _codes.decode_unsigned
  return _block_layout.from_blocks(decode(codes, scales, layout.bits), shape, layout)


def encode_buffer(
  values: chex.Array, runs: Runs, signed: bool, scale_from: chex.Array | None = None
) -> tuple[tuple[chex.Array, ...], tuple[chex.Array, ...], chex.Array | None]:
  """Codes and scales of each coded run of a fast-path buffer, and its float32 rest.

  A run's codes and scales are those of a stack of ``count`` leaves of its
  layout (``(*batch, count, *layout.codes_shape)``), so that :func:`read_runs`
  finds the runs from the arrays' shapes alone; the rest is the float32 run
  that ends the buffer, if any (:func:`buffer_runs`). ``scale_from`` as for
  :func:`encode_leaf`.
  """
  batch = values.shape[:-1]
  values = gathered(values)  # its leaves cross its shards
  again = None if scale_from is None else gathered(scale_from)
  codes, scales, rest, start = [], [], None, 0
  for run in runs:
    span = slice(start, start + run.count * run.size)
    start = span.stop
    part = values[..., span]
    if run.layout is None:
      rest = part.astype(jnp.float32)
      continue
    part = part.reshape(*batch, run.count, run.size)
    part_again = None if again is None else again[..., span].reshape(part.shape)
    run_codes, run_scales = encode_leaf(part, (run.size,), run.layout, signed, part_again)
    codes.append(run_codes)
    scales.append(run_scales)
  return tuple(codes), tuple(scales), rest


def decode_buffer(
  codes: tuple[chex.Array, ...],
  scales: tuple[chex.Array, ...],
  rest: chex.Array | None,
  runs: Runs,
  signed: bool,
) -> chex.Array:
  """The float32 buffer of :func:`encode_buffer`'s arrays."""
  batch, coded, parts = codes[0].shape[:-3], iter(zip(codes, scales, strict=True)), []
  for run in runs:
    if run.layout is None:
      parts.append(rest)
      continue
    run_codes, run_scales = next(coded)
    values = decode_leaf(run_codes, run_scales, (run.size,), run.layout, signed)
    parts.append(values.reshape(*batch, run.count * run.size))
  return jnp.concatenate(parts, axis=-1)


def read_runs(
  codes_shapes: tuple[tuple[int, ...], ...],
  scales_shapes: tuple[tuple[int, ...], ...],
  rest_shape: tuple[int, ...] | None,
) -> Runs:
  """The runs of a buffer stored by :func:`encode_buffer`, from its arrays' shapes alone.

  Raises:
    ValueError: when the shapes are not those of a buffer's runs.
  """
  runs, batch = [], {tuple(shape[:-3]) for shape in codes_shapes}
  for codes, scales in zip(codes_shapes, scales_shapes, strict=True):
    kept = 2 if len(scales) == len(codes) else 1  # rows of blocks, or equal padded blocks
    if len(codes) < 3 or len(scales) != len(codes) + kept - 2:
      raise ValueError(
        f"codes of shape {tuple(codes)} and scales of shape {tuple(scales)} are not a run "
        "of a fast-path buffer stored by ao.Quantized."
      )
    layout = _block_layout.read(codes[-2:], scales[len(scales) - kept :])
    runs.append(Run(layout, layout.size, codes[-3]))
  if rest_shape is not None:
    batch.add(tuple(rest_shape[:-1]))
    runs.append(Run(None, rest_shape[-1]))
  if len(batch) > 1:
    raise ValueError(f"the runs of a fast-path buffer disagree on their batch dimensions: {batch}.")
  return tuple(runs)


def buffer_runs(
  segments: tuple[int, ...], length: int, *, bits: int, block: int, min_size: int
) -> Runs:
  """How a buffer of ``length`` holding leaves of ``segments`` elements (in order) is stored.

  Each leaf gets the layout the tree path gives it, so that both paths store
  the same codes and scales, and neighbours are stored as one: leaves of whole
  rows concatenated (their blocks never cross a leaf), equal leaves of padded
  blocks stacked, float32 ones concatenated. A buffer laid out largest first
  (:meth:`adam_optax.flat.Layout.members`) so has a few runs, and the
  float32 one (leaves under ``min_size``, then the padding) last: a model
  whose large leaves all hold whole rows has two.

  Raises:
    ValueError: when a leaf of at least ``min_size`` follows a smaller one.
  """
  runs: list[Run] = []
  padding = length - sum(segments)
  for size, coded in [(n, n >= min_size) for n in segments] + [(padding, False)]:
    layout = _block_layout.plan((size,), bits, block) if coded else None
    previous = runs[-1] if runs else None
    if not size:
      continue
    if coded and any(run.layout is None for run in runs):
      raise ValueError(
        f"a fast-path buffer holds a leaf of {size} elements after one under min_size="
        f"{min_size}: its leaves must come largest first (ao.flatten_params lays them out so)."
      )
    if previous is not None and previous.layout is None and layout is None:
      runs[-1] = Run(None, previous.size + size)
    elif previous is not None and previous.layout is not None and layout is not None:
      if not previous.layout.balanced and not layout.balanced:
        runs[-1] = Run(
          _block_layout.plan((previous.size + size,), bits, block), previous.size + size
        )
      elif layout.balanced and previous.layout == layout:
        runs[-1] = Run(layout, size, previous.count + 1)
      else:
        runs.append(Run(layout, size))
    else:
      runs.append(Run(layout, size))
  return tuple(runs)
