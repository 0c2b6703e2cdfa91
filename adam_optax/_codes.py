r"""The codebooks of :class:`adam_optax.Quantized`: computed codes, no table search.

A map stores a magnitude :math:`x \in [0, 1]` (a value over its block's scale)
as the code :math:`k \in \{k_0, \dots, K\}` of the nearest of its values
:math:`c(k)`, :math:`c(K) = 1`. Codes are computed with a few arithmetic or
integer operations, where a codebook search (``searchsorted`` over 256 values)
costs some 60 times more on a CPU. Values arrive in blocks, ``(..., blocks,
size)`` float32; codes are ``uint8``, 4-bit codes packed two to a byte.

* **8 bits: minifloats.** The float32 numbers of :math:`M` mantissa bits,
  counted down from 1:

  .. math::

    c(k) = 2^{e}\,\bigl(1 + j/2^{M}\bigr), \qquad k - K = e\, 2^{M} + j,
    \quad 0 \le j < 2^{M},

  :math:`2^M` codes per octave, evenly spaced within it. The code is the
  float32 bit pattern of :math:`x`, shifted: adding half a code to the bits and
  shifting right rounds to the nearest code (the bits are linear in :math:`x`
  within an octave). Rounding errs most just past the first midpoint of an
  octave, :math:`x = 2^e (1 + 2^{-M-1})`: by :math:`\delta_M = 1/(2^{M+1} + 1)`.
* **4 bits: square maps.** :math:`c(k) = ((k + z)/N)^2`, :math:`N = K + z`: fine
  steps near the block's largest value, where a 4-bit step is felt most, and a
  range of :math:`2 \log_2 N` octaves. The code is :math:`j = \lfloor N \sqrt
  x \rfloor`, plus one past the cut: the midpoint of :math:`j^2` and
  :math:`(j+1)^2`, or, for :math:`\sqrt v`, :math:`1.5\, j^2` where that is lower,
  so that :math:`\sqrt v` is never read low by more than a third (a step at most
  1.5 times float32's, as with powers of two). Rounding errs most at the cut
  between :math:`(1/N)^2` and :math:`(2/N)^2`: by :math:`\delta = 3/5` either way
  for :math:`m`, by up to :math:`\delta = 5/3` upwards for :math:`\sqrt v` (near
  the top, by 15% for :math:`N = 7` and 6.4% for :math:`N = 16`).

* **Signed** (a first moment :math:`m`): the scale is the block's absolute
  maximum, stored in bfloat16 (:math:`\beta_1 = 0.9` moves :math:`m` far more
  than bfloat16 rounds). A code is a sign and a magnitude :math:`k \le K =
  2^{b-1} - 1`, where :math:`k = 0` is exactly 0 (:math:`k_0 = 1`, :math:`z =
  0`): at 8 bits :math:`M = 3`, an e4m3-like grid over 16 octaves
  (:math:`\delta_3 = 1/17`, 5.9%); at 4 bits :math:`(k/7)^2`, 5.6 octaves.
* **Unsigned** (a second moment :math:`v`, a running maximum): the map codes
  :math:`r = \sqrt v`, whose dynamic range in octaves is half of :math:`v`'s,
  over the block's largest :math:`r`, stored in float32 (it is the block's
  largest element exactly, and :math:`\beta_2 = 0.999` moves it less than
  bfloat16 resolves). :math:`K = 2^b - 1` and there is no zero (:math:`k_0 =
  0`, :math:`z = 1`): code 0 is :math:`c(0) > 0` (at 8 bits :math:`M = 4`, 16
  octaves of :math:`r`; at 4 bits :math:`((k+1)/16)^2`, 8 octaves), and smaller
  values are rounded up to it. So a non-zero :math:`v` never decodes to 0 (the
  zero-point problem: a :math:`v` read as 0 makes a step :math:`m/\epsilon`),
  and never to less than :math:`(1 - \delta_4)^2 v` (8 bits) or :math:`(2/3)^2 v`
  (4 bits): the floor only ever shortens a step.

**How far a value is read from itself.** :func:`rounding` bounds it one way and
the other: a value :math:`x` of a block is decoded as :math:`\tilde x` with
:math:`(1 - \text{low})\, x \le \tilde x \le (1 + \text{high})\, x`, except at
each map's end, where the error only ever shortens a step: the signed map reads
its smallest magnitudes as 0, and the unsigned map raises values under its
smallest code to it. Inside the range :math:`[c(k_0), 1]` (the smallest non-zero
code up) the signed map errs by :math:`\delta` either way; under it, a magnitude
past the cut between 0 and :math:`c(1)` is read as :math:`c(1)`, which at 4 bits
is up to twice its value (a magnitude just over :math:`c(1)/2`), so there it is
read high by up to 1. The unsigned map codes :math:`r = \sqrt v`: :math:`v` is
read within :math:`(1 - \delta)^2` and :math:`(1 + \delta)^2` of itself, where
:math:`\delta` is :math:`\sqrt v`'s error down and up. Per map (low, high), to
which :func:`rounding` adds the few float32 roundings of scaling and decoding:

* :math:`m`, 8 bits: :math:`(1/17, 1/17)`, 5.9% either way;
* :math:`m`, 4 bits: :math:`(3/5, 1)`;
* :math:`v`, 8 bits: :math:`(1 - (32/33)^2, (34/33)^2 - 1)`, 5.97% and 6.15%;
* :math:`v`, 4 bits: :math:`(1 - (2/3)^2, (8/3)^2 - 1) = (5/9, 55/9)`: never read
  low by more than 56%, and up to 7.1 times high near the floor (a shorter step).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

_ONE_BITS = 0x3F800000  # the float32 bit pattern of 1.0
# Scaling (a reciprocal and a product, a square root for v) and decoding (a
# product, a square for v) each round once in float32: a few units of 2^-24.
_FLOAT_SLACK = 2.0**-20

# The 8-bit maps' mantissa bits M, of m's map and of sqrt(v)'s, chosen on the
# least-squares problem of adam_optax.benchmarks.lowbit; the 4-bit maps are square
# maps, chosen on torchao's low-bit test model (docs/low_memory_states.md).
MANTISSA = {True: 3, False: 4}
# The square maps' rounding of x (m's map) or of r = sqrt(v), (low, high): m's is read low by
# 3/5 at the cut between (1/N)^2 and (2/N)^2, and high by 1 just past the cut between 0 and
# (1/N)^2, half of it; r's is read low by 1/3 under the cut 1.5 (1/N)^2 and high by 5/3 past it.
_SQUARE = {True: (3 / 5, 1.0), False: (1 / 3, 5 / 3)}


class Rounding(NamedTuple):
  r"""How far a value read back from storage lies from the value stored, relatively.

  A stored :math:`x` is read as :math:`\tilde x` with :math:`(1 - \text{low})\, x \le
  \tilde x \le (1 + \text{high})\, x` (for a codebook: except at its end, see
  :mod:`adam_optax._codes`).

  Attributes:
    low: the most :math:`x` can be read low, relatively.
    high: the most :math:`x` can be read high, relatively.
  """

  low: float
  high: float


def _top(signed: bool, bits: int) -> int:
  """:math:`K`, the largest (magnitude) code."""
  return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def rounding(signed: bool, bits: int) -> Rounding:
  r"""How far a map reads a value back low and high, relatively, except at the map's end.

  The signed map (:math:`m` itself): :math:`(\delta_M, \delta_M)` at 8 bits,
  :math:`\delta_M = 1/(2^{M+1} + 1)`, and :math:`(3/5, 1)` at 4. The unsigned map codes
  :math:`r = \sqrt v`: :math:`r`'s :math:`(\delta_M, \delta_M)` at 8 bits or :math:`(1/3,
  5/3)` at 4 make :math:`v`'s :math:`(1 - (1 - \delta_\text{low})^2, (1 +
  \delta_\text{high})^2 - 1)`. A few float32 roundings are added. At the ends, which only
  shorten a step, the signed map reads its smallest magnitudes as 0 and the unsigned map
  raises values under its smallest code to it.
  """
  if bits == 8:
    delta = 1.0 / (2 ** (MANTISSA[signed] + 1) + 1)
    low, high = delta, delta
  else:
    low, high = _SQUARE[signed]
  if not signed:  # v = r^2
    low, high = 1.0 - (1.0 - low) ** 2, (1.0 + high) ** 2 - 1.0
  return Rounding(low + _FLOAT_SLACK, high + _FLOAT_SLACK)


def _code(x: chex.Array, signed: bool, bits: int) -> chex.Array:
  """The nearest code ``k`` in ``[0, K]`` of ``x`` in ``[0, 1]`` (int32); above 1: ``K``."""
  top = _top(signed, bits)
  if bits == 8:  # minifloat: round the float32 bits at M mantissa bits
    shift = 23 - MANTISSA[signed]
    offset = jax.lax.bitcast_convert_type(x, jnp.int32) - _ONE_BITS + (1 << (shift - 1))
    return jnp.clip((offset >> shift) + top, 0, top)
  # square map: c(k) = ((k + z) / N)^2; N^2 x lies between j^2 and (j + 1)^2.
  zero_free = 0 if signed else 1
  squared = x * float((top + zero_free) ** 2)
  j = jnp.floor(jnp.sqrt(squared))
  cut = j * (j + 1) + 0.5  # the midpoint of j^2 and (j + 1)^2
  if not signed:  # but sqrt(v) is never read low by more than a third
    cut = jnp.minimum(cut, 1.5 * j * j)
  return jnp.clip((j + (squared > cut)).astype(jnp.int32) - zero_free, 0, top)


def _value(k: chex.Array, signed: bool, bits: int) -> chex.Array:
  """The value :math:`c(k)` of code ``k``, float32."""
  top = _top(signed, bits)
  k = k.astype(jnp.int32)
  if bits == 8:  # minifloat: the float32 bits k - K codes below 1
    return jax.lax.bitcast_convert_type(
      ((k - top) << (23 - MANTISSA[signed])) + _ONE_BITS, jnp.float32
    )
  zero_free = 0 if signed else 1
  return jnp.square(k + zero_free).astype(jnp.float32) / float((top + zero_free) ** 2)


def _block_max(x: chex.Array) -> chex.Array:
  """The largest element of each block of non-negative ``x`` (its last axis), exactly.

  On the CPU by :func:`_max_by_slices`; elsewhere XLA fuses a plain max with what feeds it.
  """
  return jax.lax.platform_dependent(x, cpu=_max_by_slices, default=lambda x: jnp.max(x, axis=-1))


def _max_by_slices(x: chex.Array) -> chex.Array:
  """:func:`_block_max` as XLA:CPU fuses it with the decoding that feeds it.

  XLA:CPU gives a plain max over a block to a library kernel (YNNPACK), which takes
  the float maxima before it too but not the decoding, whose result is then written
  out in full and read back: 4 bytes a parameter per moment, on fresh pages every
  step. On the float32 bit patterns (int32, ordered as non-negative floats are), the
  maxima of up to 8 column slices and then a max over the rest stay in XLA's own loop.
  """
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  ways = next(w for w in (8, 4, 2, 1) if bits.shape[-1] % w == 0)
  width = bits.shape[-1] // ways
  slices = [bits[..., i * width : (i + 1) * width] for i in range(ways)]
  largest = jnp.max(functools.reduce(jnp.maximum, slices), axis=-1)
  return jax.lax.bitcast_convert_type(largest, jnp.float32)


def _inverse(scale: chex.Array) -> chex.Array:
  """``1 / scale`` as float32, with 1 for all-zero blocks (their values are 0 whatever the scale).

  Values are multiplied by it, which is cheaper than dividing each by the scale.
  """
  scale = scale.astype(jnp.float32)
  return jnp.where(scale > 0, 1.0 / scale, 1.0)[..., None]


def encode_signed(
  blocks: chex.Array, bits: int, scale_from: chex.Array | None = None
) -> tuple[chex.Array, chex.Array]:
  """Codes (``uint8``: sign and magnitude, two's complement) and bfloat16 scales.

  The scale is rounded to bfloat16 first and the block coded against the
  rounded scale, so decoding sees the scale encoding saw. Magnitude code 0
  is 0: magnitudes below :math:`c(1)` minus half a code are stored as 0.
  ``scale_from`` (the same blocks, computed again: see
  :func:`adam_optax.quantized.encode`) is what the scales are taken from.
  """
  largest = _block_max(jnp.abs(blocks if scale_from is None else scale_from))
  # Rounded by reduce_precision, not by a cast back and forth, which XLA:GPU may
  # skip (excess precision): the codes would then be of another scale than the
  # stored one, errors up to 2^-8 past the codebook's (seen on an H200).
  scale = jax.lax.reduce_precision(largest, exponent_bits=8, mantissa_bits=7)
  k = _code(jnp.abs(blocks) * _inverse(scale), True, bits)  # over 1 (rounded scale): clipped
  q = jnp.where(blocks < 0, -k, k)
  return q.astype(jnp.int8).view(jnp.uint8), scale.astype(jnp.bfloat16)  # exact


def decode_signed(codes: chex.Array, scale: chex.Array, bits: int) -> chex.Array:
  """The float32 blocks of codes of :func:`encode_signed` (unpacked)."""
  q = codes.view(jnp.int8).astype(jnp.int32)
  if bits == 4:  # sign-extend the nibble
    q = jnp.where(q > 7, q - 16, q)
  k = jnp.abs(q)
  magnitude = jnp.where(k > 0, _value(k, True, bits), 0.0)
  return jnp.where(q < 0, -magnitude, magnitude) * scale.astype(jnp.float32)[..., None]


def encode_unsigned(
  blocks: chex.Array, bits: int, scale_from: chex.Array | None = None
) -> tuple[chex.Array, chex.Array]:
  """Codes and float32 scales of the zero-free square-root map (values >= 0).

  ``scale_from`` as for :func:`encode_signed`.
  """
  # The largest root, as sqrt is monotone.
  scale = jnp.sqrt(_block_max(blocks if scale_from is None else scale_from))
  k = _code(jnp.sqrt(blocks) * _inverse(scale), False, bits)
  return k.astype(jnp.uint8), scale


def decode_unsigned(codes: chex.Array, scale: chex.Array, bits: int) -> chex.Array:
  """The float32 blocks of codes of :func:`encode_unsigned` (unpacked)."""
  root = _value(codes, False, bits) * scale[..., None]
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
  # Low and high nibbles shifted out of the bytes broadcast over a new axis,
  # elementwise: not concatenated on the last axis, which XLA:CPU writes out
  # whole instead of fusing it with the decoding, nor stacked, which XLA:GPU
  # writes out as the decoded moment (float32, 4 bytes a parameter).
  shifts = jnp.array([0, 4], jnp.uint8)[:, None]  # the low nibble, then the high
  halves = (packed[..., None, :] >> shifts) & 0xF
  return halves.reshape(*packed.shape[:-1], 2 * packed.shape[-1])
