r"""The codebooks of :class:`adam_optax.Quantized`: computed codes, no table search.

Every code is a few elementwise operations (a square root, a multiply, a
round, integer shifts), so encoding a block costs about what a float32 Adam
step costs, where a codebook search (``searchsorted`` over 256 values) costs
some 60 times more on a CPU. Values arrive in blocks, ``(..., blocks, size)``
float32, with one float32 ``scale`` per block; codes are ``uint8``, 4-bit codes
packed two to a byte. The first moment's scales are bfloat16 (its decay
:math:`\beta_1 = 0.9` moves it far more than bfloat16's rounding); the second
moment's are float32, since the block's largest :math:`\sqrt v` is stored
exactly by its scale and :math:`\beta_2 = 0.999` moves it less than bfloat16
can resolve.

* **Signed** (a first moment :math:`m`): the block's absolute maximum
  :math:`s` is the scale and :math:`x = m / s \in [-1, 1]` is coded by the
  square-root ("power 2") map

  .. math::

    q = \operatorname{round}\!\big(L\, \operatorname{sign}(x) \sqrt{|x|}\big),
    \qquad \tilde x = \operatorname{sign}(q)\,(q / L)^2,
    \qquad L = 2^{b-1} - 1,

  finer than a linear map near 0 (its smallest step is :math:`1/L^2`, where the
  moment of a small-gradient coordinate beside a large one lives) and as fine
  near the top. 0 is a code (``q = 0``), so a zero moment stays exactly 0.

* **Unsigned** (a second moment :math:`v`, a running maximum): the map codes
  :math:`r = \sqrt v`, whose dynamic range is half of :math:`v`'s in octaves,
  relative to the block's maximum :math:`s = \max r`, as an unsigned minifloat
  with ``mantissa`` bits and no zero: the top code is :math:`x = r/s = 1`, each
  octave below has :math:`2^{M}` codes, and code 0 is the smallest value
  :math:`2^{-(2^b - 1)/2^M}`, not 0. Values below it are rounded up to it, so a
  non-zero :math:`v` never decodes to 0 (the zero-point problem: a :math:`v`
  read as 0 makes a step :math:`m/\epsilon`) and never to less than it is by
  more than the rounding, which only ever shortens a step. The code is the
  float32 bit pattern of :math:`x`, shifted: IEEE-754 bits are a piecewise
  linear :math:`\log_2`, so rounding the shifted bits rounds to the nearest
  minifloat.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

_ONE_BITS = 0x3F800000  # the float32 bit pattern of 1.0

# Mantissa bits of the unsigned minifloat: at 8 bits 32 codes an octave over 8
# octaves of sqrt(v) (v down to 1.5e-5 of its block's maximum); at 4 bits 2
# codes an octave over 7.5 octaves. Chosen by the least-squares benchmark of
# adam_optax.benchmarks.lowbit (docs/low_memory_states.md).
MANTISSA = {8: 5, 4: 1}


def _levels(bits: int) -> int:
  """:math:`L`, the largest magnitude code of the signed map."""
  return 2 ** (bits - 1) - 1


def _top(bits: int) -> int:
  """The largest code of the unsigned map."""
  return 2**bits - 1


def _safe(scale: chex.Array) -> chex.Array:
  """The scale, with 1 for all-zero blocks (their values are 0 whatever the scale)."""
  return jnp.where(scale > 0, scale, 1.0)


def encode_signed(blocks: chex.Array, bits: int) -> tuple[chex.Array, chex.Array]:
  """Codes (``uint8``, two's complement) and bfloat16 scales of the signed map.

  The scale is rounded to bfloat16 first and the block coded against the
  rounded scale, so decoding sees the scale encoding saw.
  """
  scale = jnp.max(jnp.abs(blocks), axis=-1).astype(jnp.bfloat16)
  x = blocks / _safe(scale.astype(jnp.float32))[..., None]
  levels = _levels(bits)
  # A rounded-down scale puts |x| a little over 1: clip to the top code.
  q = jnp.clip(jnp.round(jnp.sign(x) * jnp.sqrt(jnp.abs(x)) * levels), -levels, levels)
  return q.astype(jnp.int8).view(jnp.uint8), scale


def decode_signed(codes: chex.Array, scale: chex.Array, bits: int) -> chex.Array:
  """The float32 blocks of codes of :func:`encode_signed` (unpacked)."""
  q = codes.view(jnp.int8).astype(jnp.float32)
  if bits == 4:  # sign-extend the nibble
    q = jnp.where(q > 7, q - 16, q)
  y = q / _levels(bits)
  return jnp.sign(y) * (y * y) * scale.astype(jnp.float32)[..., None]


def encode_unsigned(blocks: chex.Array, bits: int) -> tuple[chex.Array, chex.Array]:
  """Codes and scales of the zero-free square-root minifloat (values >= 0)."""
  root = jnp.sqrt(blocks)
  scale = jnp.max(root, axis=-1)
  x = root / _safe(scale)[..., None]
  shift = 23 - MANTISSA[bits]
  # Adding half a code before the shift rounds to the nearest code.
  offset = jax.lax.bitcast_convert_type(x, jnp.int32) - _ONE_BITS + (1 << (shift - 1))
  q = jnp.clip((offset >> shift) + _top(bits), 0, _top(bits))
  return q.astype(jnp.uint8), scale


def decode_unsigned(codes: chex.Array, scale: chex.Array, bits: int) -> chex.Array:
  """The float32 blocks of codes of :func:`encode_unsigned` (unpacked)."""
  shift = 23 - MANTISSA[bits]
  exponent = (codes.astype(jnp.int32) - _top(bits)) << shift
  root = jax.lax.bitcast_convert_type(exponent + _ONE_BITS, jnp.float32) * scale[..., None]
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
