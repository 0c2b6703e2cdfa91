r"""Low-bit storage for a moment: block-wise 8-bit and 4-bit codes with one scale per block.

``ao.Quantized(bits)`` is accepted wherever a storage dtype is (``mu_dtype=``,
``nu_dtype=``). A leaf of at least ``min_size`` elements is stored as a
:class:`QuantizedArray`: its values in row-major order, cut into blocks, each
block coded against its own scale (:mod:`adam_optax._codes` holds the
codebooks). The storage policy (:mod:`adam_optax._precision`) calls
:func:`zeros`, :func:`decode`, :func:`encode`; every step decodes to float32,
updates, and encodes, so the step uses the unrounded float32 moments and only
the stored state is rounded.

**The stored layout** is told by the arrays' shapes and dtypes alone, so that
a state whose static metadata is gone (``nnx.state(optimizer)``, a checkpoint
restored without a target: a ``{"codes": ..., "scales": ...}`` mapping) is
read exactly by :func:`dequantize` and :func:`adam_optax.diagnostics`, jitted
or not. ``per_row = 8 // bits`` blocks of ``block`` elements make a row of
``block`` bytes of codes (``uint8``; at 4 bits the row's first block in the
low nibbles, its second in the high ones):

* ``codes: uint8[*lead, rows, block]``, ``scales: [*lead, rows, per_row]``
  when some trailing dimensions of the leaf hold whole rows (their size is a
  multiple of ``per_row * block``, 256 elements by default): the smallest such
  group is cut into rows, and the leading dimensions (*lead*) are kept, with
  their sharding. A mapping decodes to shape ``(*lead, rows * per_row *
  block)``, the leaf with its trailing dimensions flattened.
* ``codes: uint8[rows, block']``, ``scales: [rows * per_row + padding]``
  otherwise: the leaf's :math:`n` elements fill :math:`\lceil n / (\text{per\_row}
  \cdot \text{block}) \rceil` rows of blocks of equal size ``block' <= block``,
  and the last block ends with ``padding`` zeros (fewer than the number of
  blocks). The scales are followed by ``padding`` zeros, so :math:`n` is in the
  shapes: a mapping decodes to shape ``(n,)``.
* Scales are ``bfloat16`` for a signed map (a first moment) and ``float32``
  for the unsigned one (a second moment, a running maximum).

**Sharding.** Which elements share a scale never depends on the devices, so
sharded results equal single-device results. A leaf sharded over its lead
dimensions keeps its sharding, and so does one sharded over its first
trailing dimension when each shard holds whole rows (a ``(64, 2048)`` weight
split by columns over 8 devices: 256 columns a shard). Otherwise (a
``(768, 3072)`` weight by columns: 384 a shard, a row and a half) ``init``
warns once, naming the leaf and its spec, and each step gathers that leaf's
trailing dimensions; ``block_size=128`` (8 bits) or ``64`` (4 bits) would keep it.

A fast-path buffer (:class:`adam_optax.flat.FlatParams`) is stored per leaf
of its tree, exactly as the tree is (see :func:`zeros`), in a few arrays: its
leaves come largest first, and neighbours stored alike make one *run* (leaves
of whole rows, or equal leaves of padded blocks), so ``codes`` and ``scales``
are tuples with one array per run, each shaped as a stack of ``count`` of its
leaves (``uint8[count, rows, block]`` with scales ``[count, rows, per_row]``,
or ``[count, blocks + padding]``), and the leaves under ``min_size`` and the
buffer's padding end it as ``rest: float32[elements]``. A model whose large
leaves all hold whole rows has one run: three arrays per moment. The shapes
tell the runs, so such a state restored without a target is read exactly too.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import chex
import jax
import jax.numpy as jnp

from adam_optax import _block_layout, _codes, _stored_blocks
from adam_optax._quantized_array import (
  QuantizedArray,
  as_quantized,
  is_quantized,
  is_stored,
  unwrapped,
)

__all__ = [
  "Quantized",
  "QuantizedArray",
  "as_quantized",
  "decode",
  "dequantize",
  "encode",
  "is_quantized",
  "is_stored",
  "relative_error",
  "rounding",
  "unwrapped",
  "zeros",
]

_DEFAULT_BLOCK = {8: 256, 4: 128}  # torchao's AdamW8bit and AdamW4bit


@dataclasses.dataclass(frozen=True)
class Quantized:
  r"""A storage format for a moment: ``bits``-bit codes in blocks, one scale per block.

  A value :math:`x` of a block :math:`B` is stored as a code :math:`q` with
  :math:`x \approx s_B\, c(q)`: the scale :math:`s_B` is the block's absolute
  maximum (of :math:`\sqrt v` for a second moment) and :math:`c` a computed
  codebook of :math:`m` (signed, with 0) or of :math:`\sqrt v` (no 0), minifloats at
  8 bits and square maps :math:`((k + z)/N)^2` at 4 (see :mod:`adam_optax._codes`),
  so a stored non-zero :math:`v` never decodes to 0.
  State bytes per parameter: :math:`b/8 + 2/\text{block}` for :math:`m` (bfloat16 scales),
  :math:`b/8 + 4/\text{block}` for :math:`v` (float32 scales): 2.02 for both
  moments at 8 bits, 1.05 at 4 bits, against 8 in float32.

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> tx = ao.adam(1e-3, mu_dtype=ao.Quantized(8), nu_dtype=ao.Quantized(8))
    >>> state = tx.init({"w": jnp.zeros((256, 64))})
    >>> state[0].mu["w"].codes.nbytes, state[0].mu["w"].shape
    (16384, (256, 64))

  Args:
    bits: 8, or 4 (codes packed two to a byte).
    block_size: elements per scale; ``None``: 256 at 8 bits, 128 at 4 (even at 4 bits).
    min_size: leaves with fewer elements stay float32 (their scales would cost
      more than they save; 4096 as in bitsandbytes and torchao).

  Raises:
    ValueError: naming the argument, for ``bits`` not 4 or 8, ``block_size < 1``
      (or odd at 4 bits), or a negative ``min_size``.

  References:
    Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022,
    section 2; Li et al., "Memory Efficient Optimizers with 4-bit States",
    NeurIPS 2023, sections 3-4.
  """

  bits: int
  _: dataclasses.KW_ONLY
  block_size: int | None = None
  min_size: int = 4096

  def __post_init__(self) -> None:
    if not _is_int(self.bits) or self.bits not in (4, 8):
      raise ValueError(f"bits={self.bits!r} is out of range: expected 4 or 8.")
    if self.block_size is not None and (not _is_int(self.block_size) or self.block_size < 1):
      raise ValueError(
        f"block_size={self.block_size!r} is out of range: expected an integer >= 1 (or None)."
      )
    if self.bits == 4 and self.block_size is not None and self.block_size % 2:
      raise ValueError(
        f"block_size={self.block_size!r} is out of range: 4-bit codes are packed "
        "two to a byte, so the block size must be even."
      )
    if not _is_int(self.min_size) or self.min_size < 0:
      raise ValueError(f"min_size={self.min_size!r} is out of range: expected an integer >= 0.")

  @property
  def block(self) -> int:
    """The block size in use (``block_size`` or the default for ``bits``)."""
    return _DEFAULT_BLOCK[self.bits] if self.block_size is None else self.block_size


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def zeros(
  param: chex.Array, fmt: Quantized, *, signed: bool, segments: tuple[int, ...] | None = None
) -> QuantizedArray | jax.Array:
  r"""The stored zeros of a moment of ``param`` in the format ``fmt``.

  A :class:`QuantizedArray` for leaves of at least ``fmt.min_size`` elements,
  float32 zeros for smaller ones. Made from ``zeros_like(param)``, so eagerly and
  under ``jit`` the codes follow the param's sharding (see
  :func:`adam_optax._block_layout.resharded_spec` for when they cannot).

  Args:
    param: the parameter leaf (its shape, not its values, is used).
    fmt: the storage format.
    signed: ``True`` for a first moment, ``False`` for a non-negative one
      (a second moment, a running maximum).
    segments: for a fast-path buffer, the sizes of the leaves it holds, in
      order, largest first: each is stored as the tree path stores that leaf
      (blocks and ``min_size`` per leaf, so both paths hold the same codes and
      scales).

  Returns:
    :math:`m_0 = 0` (or :math:`v_0 = 0`) in storage.

  Raises:
    ValueError: for the first moment of a complex parameter (its values are
      complex; only real moments are quantized), naming ``mu_dtype``; for
      ``segments`` not largest first.

  References:
    Dettmers et al., ICLR 2022, section 2.1 (tensors below 4096 elements stay 32-bit).
  """
  dtype = jnp.result_type(param)
  if jnp.issubdtype(dtype, jnp.complexfloating) and signed:
    raise ValueError(
      f"mu_dtype={fmt!r} cannot store the first moment of a {dtype.name} "
      "parameter: quantized moments are real. Use a complex mu_dtype (or None) "
      "for complex parameters; nu_dtype may stay quantized."
    )
  values = _block_layout.zeros_like(param, jnp.float32)
  shape = tuple(jnp.shape(param))
  if segments is not None:
    runs = _stored_blocks.buffer_runs(
      segments, shape[-1], bits=fmt.bits, block=fmt.block, min_size=fmt.min_size
    )
    if all(run.layout is None for run in runs):
      return values
    codes, scales, rest = _stored_blocks.encode_buffer(values, runs, signed)
    return QuantizedArray(codes, scales, rest, shape, fmt.bits, signed, runs=runs)
  if math.prod(shape) < fmt.min_size:
    return values
  layout = _block_layout.plan(shape, fmt.bits, fmt.block)
  codes, scales = _stored_blocks.encode_leaf(values, shape, layout, signed)
  return QuantizedArray(codes, scales, None, shape, fmt.bits, signed, layout=layout)


def encode(
  values: chex.Array,
  like: QuantizedArray | chex.Array,
  scale_from: chex.Array | None = None,
  codes_from: chex.Array | None = None,
) -> QuantizedArray | jax.Array:
  r"""Stores float32 ``values`` in the format of ``like`` (back to storage).

  For a :class:`QuantizedArray` ``like``: blocks, scales :math:`s_B` and
  codes :math:`q = c^{-1}(x / s_B)` rounded to the nearest code, with
  ``like``'s bits, layout and map. For a plain array, a cast to its dtype.

  A step needs each block's scale before it can code any of the block's
  values, so a compiler that fuses the step reads its inputs in two passes.
  Given ``scale_from``, the same values computed again from inputs behind an
  ``optimization_barrier`` (:func:`adam_optax._precision.copies_apart`), the
  first pass reads only the inputs that make the moment (gradient and old
  codes) and the second does everything else. Without it XLA:GPU folds the
  parameter update into the first pass, a reduction, where it runs at a fifth
  of the bandwidth (on an H200, 7.6 ms against 1.8 for an 8-bit step of 268M
  parameters; docs/low_memory_states.md). 4-bit codes are taken from
  ``codes_from``, a third copy, if given.

  Args:
    values: the moment, float32, shaped like the decoded ``like``.
    like: the stored moment of the previous step (or of ``init``).
    scale_from: ``values`` computed again; the scales are taken from it.
    codes_from: ``values`` computed a third time; a 4-bit format's codes are
      taken from it (other formats' from ``values``).

  Returns:
    The new stored moment, of ``like``'s pytree type and static format.

  References:
    Dettmers et al., ICLR 2022, section 2.1 (block-wise quantization).
  """
  if not is_quantized(like):
    return jnp.asarray(values).astype(like.dtype)
  if like.bits == 4 and codes_from is not None:
    values = codes_from
  if like.runs is not None:
    codes, scales, rest = _stored_blocks.encode_buffer(values, like.runs, like.signed, scale_from)
    return dataclasses.replace(like, codes=codes, scales=scales, rest=rest)
  codes, scales = _stored_blocks.encode_leaf(
    values, like.logical_shape, like.layout, like.signed, scale_from
  )
  return dataclasses.replace(like, codes=codes, scales=scales)


def rounding(stored: QuantizedArray) -> _codes.Rounding:
  r"""How far a decoded value lies from the value stored, low and high, relatively.

  A value :math:`x` is read back as :math:`\tilde x` with :math:`(1 - \text{low})\, x \le
  \tilde x \le (1 + \text{high})\, x`: for the first moment's map :math:`(1/17, 1/17)` at 8
  bits and :math:`(3/5, 1)` at 4; for the second moment's, which codes :math:`\sqrt v`,
  :math:`(1 - (32/33)^2, (34/33)^2 - 1)`, 5.97% and 6.15%, at 8 bits and :math:`(5/9,
  55/9)` at 4 (see :mod:`adam_optax._codes`), each plus a few float32 roundings. Except
  at the map's end, which only ever shortens a step: a first moment's smallest magnitudes
  (under the cut to its smallest non-zero code) are read as 0, a second moment under its
  smallest code is raised to it. :func:`adam_optax.diagnostics` widens its bounds by how
  much these can lengthen a step read back.

  References:
    Dettmers et al., ICLR 2022, section 2.1.
  """
  return _codes.rounding(stored.signed, stored.bits)


def relative_error(stored: QuantizedArray) -> float:
  r"""The largest relative error of a decoded value either way, inside its codebook's range.

  The range is from the map's smallest non-zero code to the block's scale. The first
  moment's map errs there by its :math:`\delta` either way, its :func:`rounding`'s low
  bound: 5.9% at 8 bits, 60% at 4 (just under the range a magnitude may be read as the
  smallest code, at 4 bits up to twice its value: :func:`rounding`'s high bound). The
  second moment's errs by the larger of its bounds: 6.15% at 8 bits, 611% at 4 (upwards,
  near the floor: a shorter step). Below the range a first moment is read as 0 or the
  smallest code, a second moment as its smallest code (see :mod:`adam_optax._codes`).

  References:
    Dettmers et al., ICLR 2022, section 2.1.
  """
  low, high = rounding(stored)
  return low if stored.signed else max(low, high)


def decode(stored: QuantizedArray | chex.Array) -> chex.Array:
  r"""The float32 values :math:`s_B\, c(q)` of a stored moment (identity for a plain array).

  Args:
    stored: a :class:`QuantizedArray` (batched or not) or an array.

  Returns:
    An array of ``stored.shape``: float32 for a :class:`QuantizedArray`,
    ``stored`` itself otherwise.

  References:
    Dettmers et al., ICLR 2022, section 2.1 (block-wise dequantization).
  """
  if not is_quantized(stored):
    return stored
  if stored.runs is not None:
    return _stored_blocks.decode_buffer(
      stored.codes, stored.scales, stored.rest, stored.runs, stored.signed
    )
  return _stored_blocks.decode_leaf(
    stored.codes, stored.scales, stored.logical_shape, stored.layout, stored.signed
  )


def dequantize(tree: chex.ArrayTree) -> chex.ArrayTree:
  r"""Decodes every stored low-bit moment in ``tree`` to float32; other leaves stay.

  The way to read a quantized moment back, e.g.
  ``ao.dequantize(optax.tree_utils.tree_get(state, "mu"))``. It reads the
  moments of ``nnx.state(optimizer)`` and of a checkpoint restored without a
  target too (``{"codes": ..., "scales": ...}`` mappings): their values are the
  same, in the leaf's shape with its trailing dimensions flattened, e.g.
  ``(n,)`` (see this module's docstring; ``reshape`` them to the param's shape).

  Examples:
    >>> import jax.numpy as jnp, optax, adam_optax as ao
    >>> tx = ao.adam(0.1, nu_dtype=ao.Quantized(8, min_size=0))
    >>> _, state = tx.update(jnp.full(300, 2.0), tx.init(jnp.zeros(300)))
    >>> nu = ao.dequantize(optax.tree_utils.tree_get(state, "nu"))
    >>> nu.shape, float(nu[0])  # (1 - b2) * 2 ** 2, the block's maximum: exact
    ((300,), 0.004)

  Args:
    tree: any pytree, e.g. an optimizer state or one of its moments.

  Returns:
    ``tree`` with each stored moment replaced by its float32 values.

  References:
    Dettmers et al., ICLR 2022, section 2.1.
  """
  return jax.tree.map(
    lambda x: decode(as_quantized(x)) if is_stored(x) else x, tree, is_leaf=is_stored
  )
