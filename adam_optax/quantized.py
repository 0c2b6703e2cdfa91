r"""Low-bit storage for a moment: block-wise 8-bit and 4-bit codes with one scale per block.

``ao.Quantized(bits)`` is accepted wherever a storage dtype is (``mu_dtype=``,
``nu_dtype=``). A leaf of at least ``min_size`` elements is stored as a
:class:`QuantizedArray`: its flattened values cut into blocks of
``block_size``, each block coded against its own scale (:mod:`adam_optax._codes`
holds the codebooks). The storage policy (:mod:`adam_optax._precision`) calls
only :func:`zeros`, :func:`decode`, :func:`encode` and :func:`is_quantized`:
every step decodes to float32, updates, and encodes, so the step uses the
unrounded float32 moments and only the stored state is rounded.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import chex
import jax
import jax.numpy as jnp

from adam_optax import _codes

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


@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """One stored leaf in a :class:`Quantized` format; a pytree of two arrays.

  ``codes`` and ``scales`` may have leading batch dimensions (a state made by
  ``jax.vmap(tx.init)``); ``shape`` is the logical shape of one unbatched leaf.

  Attributes:
    codes: ``uint8[..., blocks, block_size * bits // 8]``.
    scales: ``[..., blocks]``, bfloat16 (signed) or float32 (unsigned).
    logical_shape: static; the shape of one unbatched leaf.
    bits: static; 8 or 4.
    block_size: static; elements per block.
    signed: static; the signed map (a first moment) or the unsigned one.
  """

  codes: chex.Array
  scales: chex.Array
  logical_shape: tuple[int, ...]
  bits: int
  block_size: int
  signed: bool

  @property
  def shape(self) -> tuple[int, ...]:
    """The shape :func:`decode` returns: batch dimensions, then the leaf's."""
    return tuple(self.codes.shape[:-2]) + self.logical_shape

  @property
  def dtype(self) -> jnp.dtype:
    """The dtype :func:`decode` returns."""
    return jnp.dtype(jnp.float32)

  @property
  def nbytes(self) -> int:
    """The bytes stored: codes and scales."""
    return int(self.codes.nbytes + self.scales.nbytes)


jax.tree_util.register_dataclass(
  QuantizedArray,
  data_fields=["codes", "scales"],
  meta_fields=["logical_shape", "bits", "block_size", "signed"],
)


def is_quantized(x: Any) -> bool:
  """Whether ``x`` is a :class:`QuantizedArray` (usable as ``is_leaf=``)."""
  return isinstance(x, QuantizedArray)


def _explicit_spec(values: chex.Array) -> tuple[Any, ...] | None:
  """The partition spec in ``values``' type (``AxisType.Explicit`` meshes), or ``None``."""
  spec = getattr(jax.typeof(values).sharding, "spec", None)
  if spec is None or all(axis is None for axis in spec):
    return None
  return tuple(spec) + (None,) * (values.ndim - len(spec))


def _on_mesh_of(values: chex.Array, *spec: Any) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(
    jax.typeof(values).sharding.mesh, jax.sharding.PartitionSpec(*spec)
  )


def _blocks(values: chex.Array, shape: tuple[int, ...], block_size: int) -> chex.Array:
  """``values`` (batch dimensions, then ``shape``) as ``(..., blocks, block_size)``, zero-padded.

  On an explicitly sharded leaf, the blocks keep the sharding of the leaf's
  first dimension when each shard holds whole blocks (the shards' row-major
  slices are then whole blocks); otherwise a block would cross two devices,
  and the leaf is gathered (replicated) first.
  """
  lead = values.shape[: values.ndim - len(shape)]
  size = math.prod(shape)
  spec, flat_sharding, block_sharding = _explicit_spec(values), None, None
  if spec is not None:
    first, rest = spec[len(lead)], spec[len(lead) + 1 :]
    mesh = jax.typeof(values).sharding.mesh
    names = () if first is None else (first,) if isinstance(first, str) else tuple(first)
    shards = math.prod(mesh.shape[name] for name in names)
    if any(spec[: len(lead)]) or any(rest) or (size // max(shards, 1)) % block_size:
      values = jax.sharding.reshard(values, _on_mesh_of(values))
    else:
      flat_sharding = _on_mesh_of(values, *spec[: len(lead)], first)
      block_sharding = _on_mesh_of(values, *spec[: len(lead)], first, None)
  flat = values.reshape((*lead, size), out_sharding=flat_sharding)
  padding = -size % block_size
  if padding:
    flat = jnp.pad(flat, [(0, 0)] * len(lead) + [(0, padding)])
  return flat.reshape((*lead, -1, block_size), out_sharding=block_sharding)


def _unblocks(blocks: chex.Array, shape: tuple[int, ...]) -> chex.Array:
  """The inverse of :func:`_blocks` (on sharded blocks, sharded on the first dimension)."""
  lead = blocks.shape[:-2]
  spec = _explicit_spec(blocks)
  flat_sharding = None if spec is None else _on_mesh_of(blocks, *spec[:-1])
  leaf_sharding = (
    None if spec is None else _on_mesh_of(blocks, *spec[:-1], *(None,) * (len(shape) - 1))
  )
  flat = blocks.reshape((*lead, -1), out_sharding=flat_sharding)[..., : math.prod(shape)]
  return flat.reshape((*lead, *shape), out_sharding=leaf_sharding)


def _quantize(
  values: chex.Array, shape: tuple[int, ...], bits: int, block_size: int, signed: bool
) -> QuantizedArray:
  # The codes are piecewise constant in the values: their derivative is 0
  # almost everywhere, so no gradient flows through the stored state (the
  # step's own float32 moments carry it within a step).
  blocks = _blocks(jax.lax.stop_gradient(values).astype(jnp.float32), shape, block_size)
  codes, scales = (_codes.encode_signed if signed else _codes.encode_unsigned)(blocks, bits)
  return QuantizedArray(_codes.pack(codes, bits), scales, shape, bits, block_size, signed)


def zeros(param: chex.Array, fmt: Quantized, *, signed: bool) -> QuantizedArray | jax.Array:
  r"""The stored zeros of a moment of ``param`` in the format ``fmt``.

  A :class:`QuantizedArray` for leaves of at least ``fmt.min_size`` elements,
  float32 zeros for smaller ones. Made from ``zeros_like(param)``, so eagerly and
  under ``jit`` the codes follow the param's sharding as XLA propagates it.

  Args:
    param: the parameter leaf (its shape, not its values, is used).
    fmt: the storage format.
    signed: ``True`` for a first moment, ``False`` for a non-negative one
      (a second moment, a running maximum).

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
  if jnp.size(param) < fmt.min_size:
    return values
  return _quantize(values, tuple(jnp.shape(param)), fmt.bits, fmt.block, signed)


def encode(values: chex.Array, like: QuantizedArray | chex.Array) -> QuantizedArray | jax.Array:
  r"""Stores float32 ``values`` in the format of ``like`` (back to storage).

  For a :class:`QuantizedArray` ``like``: blocks, scales :math:`s_B` and
  codes :math:`q = c^{-1}(x / s_B)` rounded to the nearest code, with
  ``like``'s bits, block size and map. For a plain array, a cast to its dtype.

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
  return _quantize(values, like.logical_shape, like.bits, like.block_size, like.signed)


def relative_error(stored: QuantizedArray) -> float:
  r"""The largest relative error of a decoded value inside its codebook's range.

  Rounding to the nearest code errs by at most :math:`\delta` relatively:
  :math:`\delta_M = 1/(2^{M+1} + 1)` for the 8-bit minifloats (5.9% for the first
  moment's map), :math:`3/5` and :math:`5/3` for the 4-bit square maps of
  :math:`m` and :math:`\sqrt v` (near their floor; 15% and 6.4% at the top code).
  The second moment's map codes :math:`\sqrt v`, so :math:`v` errs by at most
  :math:`(1 + \delta)^2 - 1`: 6.2% at 8 bits, 611% at 4 (upwards, which only
  shortens a step; downwards, 56%). A few float32 roundings are added. The range is
  from the map's smallest non-zero code to the block's scale; below it, a first
  moment may decode to 0 and a second moment is rounded up to the floor (see
  :mod:`adam_optax._codes`). Used by :func:`adam_optax.diagnostics` as its
  rounding allowance.

  References:
    Dettmers et al., ICLR 2022, section 2.1.
  """
  return _codes.relative_error(stored.signed, stored.bits)


def unwrapped(stored: Any) -> Any:
  """``stored`` with its arrays taken out of containers (``nnx.state`` wraps them in variables)."""
  if not is_quantized(stored):
    return stored
  codes, scales = (jnp.asarray(jax.tree.leaves(x)[0]) for x in (stored.codes, stored.scales))
  return dataclasses.replace(stored, codes=codes, scales=scales)


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
  codes = _codes.unpack(stored.codes, stored.bits)
  blocks = (_codes.decode_signed if stored.signed else _codes.decode_unsigned)(
    codes, stored.scales, stored.bits
  )
  return _unblocks(blocks, stored.logical_shape)


def dequantize(tree: chex.ArrayTree) -> chex.ArrayTree:
  r"""Decodes every :class:`QuantizedArray` in ``tree`` to float32; other leaves stay.

  The way to read a quantized moment back, e.g.
  ``ao.dequantize(optax.tree_utils.tree_get(state, "mu"))``.

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
    ``tree`` with each :class:`QuantizedArray` replaced by its float32 values.

  References:
    Dettmers et al., ICLR 2022, section 2.1.
  """
  return jax.tree.map(decode, tree, is_leaf=is_quantized)
