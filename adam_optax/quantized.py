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

A fast-path buffer (:class:`adam_optax.flat.FlatParams`) is stored per leaf
of its tree, exactly as the tree is (see :func:`zeros`), in flat arrays:
``codes: uint8[bytes]``, ``scales: [scales]`` and, for its leaves under
``min_size``, ``rest: float32[elements]``. Where each leaf lies is static
metadata, so such a state restored without a target must be restored into
one (the readers say so).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import chex
import jax
import jax.numpy as jnp

from adam_optax import _block_layout, _codes, _fields
from adam_optax._block_layout import BlockLayout

_DEFAULT_BLOCK = {8: 256, 4: 128}  # torchao's AdamW8bit and AdamW4bit


@dataclasses.dataclass(frozen=True)
class Quantized:
  r"""A storage format for a moment: ``bits``-bit codes in blocks, one scale per block.

  A value :math:`x` of a block :math:`B` is stored as a code :math:`q` with
  :math:`x \approx s_B\, c(q)`: the scale :math:`s_B` is the block's absolute
  maximum (of :math:`\sqrt v` for a second moment) and :math:`c` a computed
  codebook: a minifloat relative to the block for a first moment, and a
  zero-free minifloat of :math:`\sqrt v` for a second moment (see
  :mod:`adam_optax._codes`), so a stored non-zero :math:`v` never decodes to 0.
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


#: A fast-path buffer's pieces in order: (elements, layout), or ``None`` for
#: elements kept in float32 (leaves under ``min_size``, the buffer's padding).
Pieces = tuple[tuple[int, BlockLayout | None], ...]


@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """One stored leaf (or fast-path buffer) in a :class:`Quantized` format; a pytree of arrays.

  ``codes`` and ``scales`` may have leading batch dimensions (a state made by
  ``jax.vmap(tx.init)``); ``logical_shape`` is the shape of one unbatched
  leaf. The module docstring gives the layout of the arrays.

  Attributes:
    codes: ``uint8`` codes, ``block`` bytes a row.
    scales: one per block, bfloat16 (signed) or float32 (unsigned).
    rest: a fast-path buffer's elements kept in float32, or ``None``.
    logical_shape: static; the shape of one unbatched leaf.
    bits: static; 8 or 4.
    signed: static; the signed map (a first moment) or the unsigned one.
    layout: static; a leaf's :class:`~adam_optax._block_layout.BlockLayout`.
    pieces: static; a fast-path buffer's pieces (then ``layout`` is ``None``).
  """

  codes: chex.Array
  scales: chex.Array
  rest: chex.Array | None
  logical_shape: tuple[int, ...]
  bits: int
  signed: bool
  layout: BlockLayout | None = None
  pieces: Pieces | None = None

  @property
  def shape(self) -> tuple[int, ...]:
    """The shape :func:`decode` returns: batch dimensions, then the leaf's."""
    unbatched = 1 if self.layout is None else len(self.layout.codes_shape)
    return tuple(self.codes.shape[: self.codes.ndim - unbatched]) + self.logical_shape

  @property
  def dtype(self) -> jnp.dtype:
    """The dtype :func:`decode` returns."""
    return jnp.dtype(jnp.float32)

  @property
  def nbytes(self) -> int:
    """The bytes stored: codes, scales and any float32 rest."""
    return sum(int(x.nbytes) for x in (self.codes, self.scales, self.rest) if x is not None)


def _flatten(x: QuantizedArray) -> tuple[list[tuple[Any, Any]], tuple[Any, ...]]:
  names = ("codes", "scales") + (("rest",) if x.rest is not None else ())
  children = [(jax.tree_util.GetAttrKey(name), getattr(x, name)) for name in names]
  return children, (x.logical_shape, x.bits, x.signed, x.layout, x.pieces, x.rest is not None)


def _unflatten(aux: tuple[Any, ...], children: Any) -> QuantizedArray:
  logical_shape, bits, signed, layout, pieces, has_rest = aux
  codes, scales, *rest = children
  rest = rest[0] if has_rest else None
  return QuantizedArray(codes, scales, rest, logical_shape, bits, signed, layout, pieces)


jax.tree_util.register_pytree_with_keys(QuantizedArray, _flatten, _unflatten)


def is_quantized(x: Any) -> bool:
  """Whether ``x`` is a :class:`QuantizedArray` (usable as ``is_leaf=``)."""
  return isinstance(x, QuantizedArray)


def _array(node: Any) -> Any:
  """The one array inside ``node`` (an array, or a variable wrapping one)."""
  leaves = jax.tree.leaves(node)
  return leaves[0] if len(leaves) == 1 else None


def _stored_arrays(node: Any) -> dict[str, Any] | None:
  """The arrays of a stored moment that lost its metadata (a mapping), or ``None``."""
  named = _fields.children(node)
  if named is None or set(named) not in ({"codes", "scales"}, {"codes", "scales", "rest"}):
    return None
  arrays = {name: _array(child) for name, child in named.items()}
  codes, scales = arrays["codes"], arrays["scales"]
  if codes is None or scales is None or jnp.result_type(codes) != jnp.uint8:
    return None
  if jnp.result_type(scales) not in (jnp.bfloat16, jnp.float32):
    return None
  return arrays


def is_stored(x: Any) -> bool:
  """Whether ``x`` is a stored low-bit moment: a :class:`QuantizedArray` or its mapping form.

  The mapping form is what ``nnx.state`` and a checkpoint restored without a
  target make of a :class:`QuantizedArray`: a node whose children are named
  ``codes`` (``uint8``) and ``scales`` (its arrays possibly in variables).
  Usable as ``is_leaf=``.
  """
  return is_quantized(x) or _stored_arrays(x) is not None


def as_quantized(stored: Any) -> QuantizedArray:
  """The :class:`QuantizedArray` of a stored moment, its layout read from its arrays' shapes.

  Args:
    stored: a :class:`QuantizedArray`, or its mapping form (see :func:`is_stored`).

  Returns:
    ``stored`` with plain arrays; for a mapping, a leaf of shape
    ``(*lead, rows * per_row * block)`` or ``(n,)`` (module docstring), any
    leading dimensions taken as the leaf's.

  Raises:
    ValueError: for a fast-path buffer's mapping (where its leaves lie is not
      in the arrays), or arrays that are not a stored moment.
  """
  if is_quantized(stored):
    return unwrapped(stored)
  arrays = _stored_arrays(stored)
  if arrays is None:
    raise ValueError(f"{type(stored).__name__} is not a low-bit moment stored by ao.Quantized.")
  codes, scales = arrays["codes"], arrays["scales"]
  if "rest" in arrays or jnp.ndim(codes) < 2:
    raise ValueError(
      "a low-bit moment of a fast-path buffer (ao.FlatParams) lost its static metadata "
      "(nnx.state, or a checkpoint restored without a target): where each leaf lies in "
      "the buffer is not in its arrays. Restore it into a target, e.g. "
      "adam_optax.checkpoint.restore_checkpoint(path, target)."
    )
  layout = _block_layout.read(jnp.shape(codes), jnp.shape(scales))
  return QuantizedArray(
    codes,
    scales,
    None,
    (*layout.lead, layout.size),
    layout.bits,
    bool(jnp.result_type(scales) == jnp.bfloat16),
    layout=layout,
  )


def unwrapped(stored: QuantizedArray) -> QuantizedArray:
  """``stored`` with its arrays taken out of containers (``nnx.state`` wraps them in variables)."""
  return dataclasses.replace(
    stored,
    codes=jnp.asarray(_array(stored.codes)),
    scales=jnp.asarray(_array(stored.scales)),
    rest=None if stored.rest is None else jnp.asarray(_array(stored.rest)),
  )


def _encode_leaf(
  values: chex.Array, shape: tuple[int, ...], layout: BlockLayout, signed: bool
) -> tuple[chex.Array, chex.Array]:
  """Codes and scales of float32 ``values`` (batch dimensions, then ``shape``)."""
  # The codes are piecewise constant in the values: their derivative is 0
  # almost everywhere, so no gradient flows through the stored state (the
  # step's own float32 moments carry it within a step).
  values = jax.lax.stop_gradient(values).astype(jnp.float32)
  blocks = _block_layout.to_blocks(values, shape, layout)
  codes, scales = (_codes.encode_signed if signed else _codes.encode_unsigned)(blocks, layout.bits)
  outer = blocks.ndim - 2
  rows = (*codes.shape[:outer], layout.rows, layout.per_row * layout.block)
  codes = _codes.pack(_block_layout.reshape(codes, rows, outer), layout.bits)
  if layout.balanced:  # the padding's length, in the shape: zeros after the scales
    return codes, jnp.pad(scales, [(0, 0)] * outer + [(0, layout.padding)])
  rows = (*scales.shape[:outer], layout.rows, layout.per_row)
  return codes, _block_layout.reshape(scales, rows, outer)


def _decode_leaf(
  codes: chex.Array, scales: chex.Array, shape: tuple[int, ...], layout: BlockLayout, signed: bool
) -> chex.Array:
  """The inverse of :func:`_encode_leaf` (up to the codebook's rounding)."""
  outer = codes.ndim - 2
  codes = _codes.unpack(codes, layout.bits)
  codes = _block_layout.reshape(codes, (*codes.shape[:outer], layout.blocks, layout.block), outer)
  if layout.balanced:
    scales = scales[..., : layout.blocks]
  else:
    scales = _block_layout.reshape(scales, (*scales.shape[:outer], layout.blocks), outer)
  decode = _codes.decode_signed if signed else _codes.decode_unsigned
  return _block_layout.from_blocks(decode(codes, scales, layout.bits), shape, layout)


def _replicated(values: chex.Array) -> chex.Array:
  """``values`` gathered on its explicit mesh (a fast-path buffer's pieces cross its shards)."""
  if _block_layout.explicit_spec(values) is None:
    return values
  mesh = jax.typeof(values).sharding.mesh
  return jax.sharding.reshard(
    values, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  )


def _encode_buffer(
  values: chex.Array, pieces: Pieces, signed: bool
) -> tuple[chex.Array, chex.Array, chex.Array | None]:
  """Codes, scales and float32 rest of a fast-path buffer, piece by piece."""
  values, batch = _replicated(values), values.shape[:-1]
  codes, scales, rest, start = [], [], [], 0
  for size, layout in pieces:
    part, start = values[..., start : start + size], start + size
    if layout is None:
      rest.append(part.astype(jnp.float32))
      continue
    piece_codes, piece_scales = _encode_leaf(part, (size,), layout, signed)
    codes.append(piece_codes.reshape(*batch, -1))
    scales.append(piece_scales.reshape(*batch, -1))
  flat_rest = jnp.concatenate(rest, axis=-1) if rest else None
  return jnp.concatenate(codes, axis=-1), jnp.concatenate(scales, axis=-1), flat_rest


def _decode_buffer(stored: QuantizedArray) -> chex.Array:
  """The float32 buffer of :func:`_encode_buffer`'s arrays."""
  batch = stored.codes.shape[:-1]
  parts, at = [], {"codes": 0, "scales": 0, "rest": 0}

  def take(name: str, shape: tuple[int, ...]) -> chex.Array:
    size = math.prod(shape)
    part = getattr(stored, name)[..., at[name] : at[name] + size]
    at[name] += size
    return part.reshape(*batch, *shape)

  for size, layout in stored.pieces:
    if layout is None:
      parts.append(take("rest", (size,)))
      continue
    codes, scales = take("codes", layout.codes_shape), take("scales", layout.scales_shape)
    parts.append(_decode_leaf(codes, scales, (size,), layout, stored.signed))
  return jnp.concatenate(parts, axis=-1)


def _buffer_pieces(segments: tuple[int, ...], length: int, fmt: Quantized) -> Pieces:
  """The pieces of a buffer of ``length`` holding leaves of ``segments`` elements.

  A leaf is stored as the tree path stores it; consecutive pieces that the
  tree path would store alike are merged, so that a step costs one piece per
  run (one for 2,000 leaves of 4,096 elements).
  """
  padding = length - sum(segments)
  sizes = list(segments) + ([padding] if padding else [])
  quantized = [size >= fmt.min_size for size in segments] + ([False] if padding else [])
  pieces: list[tuple[int, BlockLayout | None]] = []
  for size, coded in zip(sizes, quantized, strict=True):
    layout = _block_layout.plan((size,), fmt.bits, fmt.block) if coded else None
    if pieces and _mergeable(pieces[-1][1], layout):
      size += pieces.pop()[0]
      layout = None if layout is None else _block_layout.plan((size,), fmt.bits, fmt.block)
    pieces.append((size, layout))
  return tuple(pieces)


def _mergeable(previous: BlockLayout | None, layout: BlockLayout | None) -> bool:
  if previous is None or layout is None:
    return previous is None and layout is None
  return not previous.balanced and not layout.balanced


def zeros(
  param: chex.Array, fmt: Quantized, *, signed: bool, segments: tuple[int, ...] | None = None
) -> QuantizedArray | jax.Array:
  r"""The stored zeros of a moment of ``param`` in the format ``fmt``.

  A :class:`QuantizedArray` for leaves of at least ``fmt.min_size`` elements,
  float32 zeros for smaller ones. Made from ``zeros_like(param)``, so eagerly and
  under ``jit`` the codes follow the param's sharding (see
  :func:`resharded_spec` for when they cannot).

  Args:
    param: the parameter leaf (its shape, not its values, is used).
    fmt: the storage format.
    signed: ``True`` for a first moment, ``False`` for a non-negative one
      (a second moment, a running maximum).
    segments: for a fast-path buffer, the sizes of the leaves it holds, in
      order: each is stored as the tree path stores that leaf (blocks and
      ``min_size`` per leaf, so both paths hold the same codes and scales).

  Returns:
    :math:`m_0 = 0` (or :math:`v_0 = 0`) in storage.

  Raises:
    ValueError: for the first moment of a complex parameter (its values are
      complex; only real moments are quantized), naming ``mu_dtype``.

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
  values = jnp.zeros_like(param, dtype=jnp.float32)
  shape = tuple(jnp.shape(param))
  if segments is not None:
    pieces = _buffer_pieces(segments, shape[-1], fmt)
    if all(layout is None for _, layout in pieces):
      return values
    codes, scales, rest = _encode_buffer(values, pieces, signed)
    return QuantizedArray(codes, scales, rest, shape, fmt.bits, signed, pieces=pieces)
  if math.prod(shape) < fmt.min_size:
    return values
  layout = _block_layout.plan(shape, fmt.bits, fmt.block)
  codes, scales = _encode_leaf(values, shape, layout, signed)
  return QuantizedArray(codes, scales, None, shape, fmt.bits, signed, layout=layout)


def encode(values: chex.Array, like: QuantizedArray | chex.Array) -> QuantizedArray | jax.Array:
  r"""Stores float32 ``values`` in the format of ``like`` (back to storage).

  For a :class:`QuantizedArray` ``like``: blocks, scales :math:`s_B` and
  codes :math:`q = c^{-1}(x / s_B)` rounded to the nearest code, with
  ``like``'s bits, layout and map. For a plain array, a cast to its dtype.

  Args:
    values: the moment, float32, shaped like the decoded ``like``.
    like: the stored moment of the previous step (or of ``init``).

  Returns:
    The new stored moment, of ``like``'s pytree type and static format.

  References:
    Dettmers et al., ICLR 2022, section 2.1 (block-wise quantization).
  """
  if not is_quantized(like):
    return jnp.asarray(values).astype(like.dtype)
  if like.pieces is not None:
    codes, scales, rest = _encode_buffer(values, like.pieces, like.signed)
    return dataclasses.replace(like, codes=codes, scales=scales, rest=rest)
  codes, scales = _encode_leaf(values, like.logical_shape, like.layout, like.signed)
  return dataclasses.replace(like, codes=codes, scales=scales)


def relative_error(stored: QuantizedArray) -> float:
  r"""The largest relative error of a decoded value inside its codebook's range.

  Rounding to the nearest code of a map with :math:`M` mantissa bits errs by at
  most :math:`\delta_M = 1/(2^{M+1} + 1)` relatively (5.9% for the first
  moment's map at 8 bits, 1/3 at 4); the second moment's map codes
  :math:`\sqrt v`, so :math:`v` errs by at most :math:`(1 + \delta_M)^2 - 1`
  (6.2% at 8 bits, 78% at 4). A few float32 roundings are added. The range is
  from the map's smallest non-zero code to the block's scale; below it, a
  first moment may decode to 0 and a second moment is rounded up to the floor
  (see :mod:`adam_optax._codes`). Used by :func:`adam_optax.diagnostics` as its
  rounding allowance.

  References:
    Dettmers et al., ICLR 2022, section 2.1.
  """
  return _codes.relative_error(stored.signed, stored.bits)


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
  if stored.pieces is not None:
    return _decode_buffer(stored)
  return _decode_leaf(
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

  Raises:
    ValueError: for a fast-path buffer's moment restored without a target
      (see :func:`as_quantized`).

  References:
    Dettmers et al., ICLR 2022, section 2.1.
  """
  return jax.tree.map(
    lambda x: decode(as_quantized(x)) if is_stored(x) else x, tree, is_leaf=is_stored
  )


def _spec_and_mesh(x: Any) -> tuple[tuple[Any, ...] | None, Any]:
  """``x``'s partition spec and mesh: explicit axes from its type, else a concrete sharding."""
  spec = _block_layout.explicit_spec(x)
  if spec is not None:
    return spec, jax.typeof(x).sharding.mesh
  sharding = getattr(x, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding) and any(sharding.spec):
    spec = tuple(sharding.spec) + (None,) * (jnp.ndim(x) - len(sharding.spec))
    return spec, sharding.mesh
  return None, None


def resharded_spec(param: Any, stored: Any) -> tuple[Any, ...] | None:
  """``param``'s partition spec when ``stored`` (its moment) cannot keep it, else ``None``.

  A leaf keeps its sharding when only its batch and lead dimensions are
  sharded, or also the first trailing one, with each shard holding whole rows
  (the module docstring). Otherwise a block would cross two devices, and every
  step gathers the trailing dimensions first. A fast-path buffer's pieces
  cross its shards: a sharded buffer is always gathered.
  """
  if not is_quantized(stored):
    return None
  spec, mesh = _spec_and_mesh(param)
  if spec is None:
    return None
  if stored.layout is None:
    return spec
  batch = jnp.ndim(param) - len(stored.logical_shape)
  return spec if _block_layout.kept_axis(spec, mesh, stored.layout, batch) is False else None
