r"""The codebooks of :class:`adam_optax.Quantized`: computed codes, no table search.

Both maps are minifloats *relative to the block*: a value :math:`x \in [0, 1]`
(a magnitude over the block's scale) has the code of the nearest of

.. math::

  c(k) = 2^{e}\,\bigl(1 + j/2^{M}\bigr), \qquad k - K = e\, 2^{M} + j,
  \quad 0 \le j < 2^{M}, \qquad k = 0, \dots, K,

the float32 numbers of :math:`M` mantissa bits counted down from the top code
:math:`c(K) = 1`: :math:`2^M` codes per octave, evenly spaced within it. The
code is the float32 bit pattern of :math:`x`, shifted: adding half a code to
the bits and shifting right rounds to the nearest code (nearest in value: the
bits are linear in :math:`x` within an octave), with integer operations only.
Encoding a block so costs about what a float32 Adam step costs, where a
codebook search (``searchsorted`` over 256 values) costs some 60 times more on
a CPU. Values arrive in blocks, ``(..., blocks, size)`` float32; codes are
``uint8``, 4-bit codes packed two to a byte.

Rounding to the nearest code errs most just past the first midpoint of an
octave, :math:`x = 2^e (1 + 2^{-M-1})`, so inside the map's range
:math:`[c(k_0), 1]` (its smallest non-zero code up) a decoded value is within

.. math::

  \delta_M = \frac{1}{2^{M+1} + 1}

of :math:`x` relatively (:func:`relative_error` adds the few float32 roundings
of scaling and decoding).

* **Signed** (a first moment :math:`m`): the scale is the block's absolute
  maximum, stored in bfloat16 (:math:`\beta_1 = 0.9` moves :math:`m` far more
  than bfloat16 rounds). A code is a sign and a magnitude :math:`k \le K =
  2^{b-1} - 1`, where :math:`k = 0` is exactly 0 (:math:`k_0 = 1`): at 8 bits
  :math:`M = 3`, an e4m3-like grid over 16 octaves (:math:`\delta_3 = 1/17`,
  5.9%); at 4 bits :math:`M = 0`, powers of two over 7 octaves
  (:math:`\delta_0 = 1/3`).
* **Unsigned** (a second moment :math:`v`, a running maximum): the map codes
  :math:`r = \sqrt v`, whose dynamic range in octaves is half of :math:`v`'s,
  over the block's largest :math:`r`, stored in float32 (it is the block's
  largest element exactly, and :math:`\beta_2 = 0.999` moves it less than
  bfloat16 resolves). :math:`K = 2^b - 1` and there is no zero (:math:`k_0 =
  0`): code 0 is :math:`c(0) > 0` (at 8 bits :math:`M = 4`, 16 octaves of
  :math:`r`; at 4 bits :math:`M = 0`, 15 octaves), and smaller values are
  rounded up to it. So a non-zero :math:`v` never decodes to 0 (the
  zero-point problem: a :math:`v` read as 0 makes a step :math:`m/\epsilon`),
  and never to less than it is by more than the rounding: the floor only ever
  shortens a step. :math:`v = r^2` is within :math:`(1 + \delta_M)^2 - 1`
  (6.2% at 8 bits, 78% at 4).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

_ONE_BITS = 0x3F800000  # the float32 bit pattern of 1.0
# Scaling (a reciprocal and a product, a square root for v) and decoding (a
# product, a square for v) each round once in float32: a few units of 2^-24.
_FLOAT_SLACK = 2.0**-20

# Mantissa bits M by (signed, bits), chosen on the least-squares problem of
# adam_optax.benchmarks.lowbit (docs/low_memory_states.md has the comparison).
MANTISSA = {(True, 8): 3, (True, 4): 0, (False, 8): 4, (False, 4): 0}


def _top(signed: bool, bits: int) -> int:
  """:math:`K`, the largest (magnitude) code."""
  return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def relative_error(signed: bool, bits: int) -> float:
  r"""The largest relative error of a decoded value inside its map's range.

  :math:`\delta_M = 1/(2^{M+1} + 1)` for the signed map, :math:`(1 + \delta_M)^2 - 1`
  for the unsigned one (it codes :math:`\sqrt v`), plus float32 rounding.
  The range is :math:`[c(k_0), 1]` times the block's scale.
  """
  delta = 1.0 / (2 ** (MANTISSA[signed, bits] + 1) + 1)
  return (delta if signed else (1.0 + delta) ** 2 - 1.0) + _FLOAT_SLACK


def _code(x: chex.Array, top: int, mantissa: int) -> chex.Array:
  """The nearest code ``k`` in ``[0, top]`` of ``x`` in ``[0, 1]`` (int32)."""
  shift = 23 - mantissa
  offset = jax.lax.bitcast_convert_type(x, jnp.int32) - _ONE_BITS + (1 << (shift - 1))
  return jnp.clip((offset >> shift) + top, 0, top)


def _value(k: chex.Array, top: int, mantissa: int) -> chex.Array:
  """The value :math:`c(k)` of code ``k`` (the float32 bits ``k - top`` codes below 1)."""
  bits = ((k.astype(jnp.int32) - top) << (23 - mantissa)) + _ONE_BITS
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _inverse(scale: chex.Array) -> chex.Array:
  """``1 / scale`` as float32, with 1 for all-zero blocks (their values are 0 whatever the scale).

  Values are multiplied by it, which is cheaper than dividing each by the scale.
  """
  scale = scale.astype(jnp.float32)
  return jnp.where(scale > 0, 1.0 / scale, 1.0)[..., None]


def encode_signed(blocks: chex.Array, bits: int) -> tuple[chex.Array, chex.Array]:
  """Codes (``uint8``: sign and magnitude, two's complement) and bfloat16 scales.

  The scale is rounded to bfloat16 first and the block coded against the
  rounded scale, so decoding sees the scale encoding saw. Magnitude code 0
  is 0: magnitudes below :math:`c(1)` minus half a code are stored as 0.
  """
  top, mantissa = _top(True, bits), MANTISSA[True, bits]
  scale = jnp.max(jnp.abs(blocks), axis=-1).astype(jnp.bfloat16)
  k = _code(jnp.abs(blocks) * _inverse(scale), top, mantissa)  # over 1 (rounded scale): clipped
  q = jnp.where(blocks < 0, -k, k)
  return q.astype(jnp.int8).view(jnp.uint8), scale


def decode_signed(codes: chex.Array, scale: chex.Array, bits: int) -> chex.Array:
  """The float32 blocks of codes of :func:`encode_signed` (unpacked)."""
  q = codes.view(jnp.int8).astype(jnp.int32)
  if bits == 4:  # sign-extend the nibble
    q = jnp.where(q > 7, q - 16, q)
  k = jnp.abs(q)
  magnitude = jnp.where(k > 0, _value(k, _top(True, bits), MANTISSA[True, bits]), 0.0)
  return jnp.where(q < 0, -magnitude, magnitude) * scale.astype(jnp.float32)[..., None]


def encode_unsigned(blocks: chex.Array, bits: int) -> tuple[chex.Array, chex.Array]:
  """Codes and float32 scales of the zero-free square-root map (values >= 0)."""
  root = jnp.sqrt(blocks)
  scale = jnp.max(root, axis=-1)
  k = _code(root * _inverse(scale), _top(False, bits), MANTISSA[False, bits])
  return k.astype(jnp.uint8), scale


def decode_unsigned(codes: chex.Array, scale: chex.Array, bits: int) -> chex.Array:
  """The float32 blocks of codes of :func:`encode_unsigned` (unpacked)."""
  root = _value(codes, _top(False, bits), MANTISSA[False, bits]) * scale[..., None]
  return root * root


def pack(codes: chex.Array, bits: int) -> chex.Array:
  """4-bit codes two to a byte: the first half of a block low, the second high."""
  if bits == 8:
    return codes
  half = codes.shape[-1] // 2
  return (codes[..., :half] & 0xF) | (codes[..., half:] << 4)


def unpack(packed: chex.Array, bits: int) -> chex.Array:
  """The inverse of :func:`pack`."""
  if bits == 8:
    return packed
  return jnp.concatenate([packed & 0xF, packed >> 4], axis=-1)
