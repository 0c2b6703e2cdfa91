"""The codebooks (adam_optax._codes): the formula in the docstring, and its bound over every code.

Encoding is monotone in the value, so the float32 values that take one code form a cell
between two cuts, and a decoded value's relative error over a cell is largest at the
cell's ends. Finding every cut exactly (bisection on the float32 bit patterns) and checking
both sides of each therefore checks the bound at every float32 value of the map's range.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adam_optax import _codes

MAPS = [(signed, bits) for signed in (True, False) for bits in (8, 4)]
IDS = [f"{'signed' if s else 'unsigned'}-{b}bit" for s, b in MAPS]
# Block maxima: a power of two, values that bfloat16 rounds down and up, tiny and huge.
MAXIMA = [1.0, 0.7391, 1.0039, 3.3e-5, 2.5e4]


@functools.cache
def _round_trip(signed: bool, bits: int) -> Callable[[jax.Array, jax.Array], tuple]:
  """``(top, values) -> (codes, decoded)`` of values in a block whose largest element is ``top``."""
  encode = _codes.encode_signed if signed else _codes.encode_unsigned
  decode = _codes.decode_signed if signed else _codes.decode_unsigned

  def round_trip(top: jax.Array, values: jax.Array) -> tuple[jax.Array, jax.Array]:
    block = jnp.concatenate([top[None], values])[None]
    codes, scale = encode(block, bits)
    magnitude = jnp.abs(codes.view(jnp.int8).astype(jnp.int32)) if signed else codes
    return magnitude[0, 1:].astype(jnp.int32), decode(codes, scale, bits)[0, 1:]

  return jax.jit(round_trip)


def _float_bits(x: np.ndarray) -> np.ndarray:
  return np.asarray(x, np.float32).view(np.int32).astype(np.int64)


def _floats(bits: np.ndarray) -> np.ndarray:
  return bits.astype(np.int32).view(np.float32)


def _codes_and_values(signed: bool, bits: int, top: float) -> tuple[np.ndarray, np.ndarray]:
  """Every code a block of largest element ``top`` can hold, and its decoded value."""
  round_trip = _round_trip(signed, bits)
  # Decode every code: encode a value on each code's own decoded value, found by
  # sweeping the whole range densely and keeping one value per code.
  sweep = np.geomspace(top * 1e-12, top, 200_000).astype(np.float32)
  codes, decoded = (np.asarray(a) for a in round_trip(jnp.float32(top), jnp.asarray(sweep)))
  first = np.unique(codes, return_index=True)[1]
  codes, decoded = codes[first], decoded[first]
  return codes[decoded > 0], decoded[decoded > 0]  # the signed map's 0 is no cell of the range


def _cuts(signed: bool, bits: int, top: float, codes: np.ndarray, values: np.ndarray) -> np.ndarray:
  """The smallest float32 value taking each code above the first (bisection on bit patterns)."""
  round_trip = _round_trip(signed, bits)
  low = _float_bits(values[:-1])  # takes a code below the cut
  high = np.minimum(_float_bits(values[1:]), _float_bits(top))  # takes the code above
  for _ in range(32):
    middle = (low + high) // 2
    above = np.asarray(round_trip(jnp.float32(top), jnp.asarray(_floats(middle)))[0]) > codes[:-1]
    high, low = np.where(above, middle, high), np.where(above, low, middle)
  return _floats(high)


@pytest.mark.parametrize(("signed", "bits"), MAPS, ids=IDS)
@pytest.mark.parametrize("top", MAXIMA)
def test_relative_error_bound_holds_on_both_sides_of_every_cut(
  signed: bool, bits: int, top: float
) -> None:
  top = float(np.float32(top))
  round_trip = _round_trip(signed, bits)
  codes, values = _codes_and_values(signed, bits, top)
  # Every code of the map is reached, in order, and each code's value decodes to itself.
  lowest = 1 if signed else 0
  np.testing.assert_array_equal(codes, np.arange(lowest, _codes._top(signed, bits) + 1))
  again = np.asarray(round_trip(jnp.float32(top), jnp.asarray(values))[0])
  np.testing.assert_array_equal(again, codes)
  cuts = _cuts(signed, bits, top, codes, values)
  below = _floats(_float_bits(cuts) - 1)
  # The ends of every cell in the range [smallest code's value, top], and top itself.
  ends = np.concatenate([below, cuts, [top]])
  ends = ends[ends >= values[0]]
  decoded = np.asarray(round_trip(jnp.float32(top), jnp.asarray(ends))[1])
  error = np.abs(decoded.astype(np.float64) - ends) / ends
  bound = _codes.relative_error(signed, bits)
  assert error.max() <= bound, (error.max(), bound)
  # The bound is the map's, not a loose one: some cell end comes within float32 rounding.
  assert error.max() >= (bound - _codes._FLOAT_SLACK) * (1 - 2**-20), (error.max(), bound)
  if not signed:  # sqrt(v) is never read low by more than delta_4 = 1/33 (8 bits) or 1/3 (4)
    low = 1 / 33 if bits == 8 else 1 / 3
    assert np.all(decoded >= ends * (1 - low) ** 2 * (1 - 2**-20))
    assert np.any(decoded <= ends * (1 - low) ** 2 * (1 + 2**-20))  # and that is reached


@pytest.mark.parametrize(("signed", "bits"), MAPS, ids=IDS)
def test_decoded_codes_follow_the_docstring_formula(signed: bool, bits: int) -> None:
  # For a block whose largest element is 1, code k decodes to c(k) (of sqrt(v) when unsigned):
  # at 8 bits c(k) = 2^e (1 + j / 2^M) with k - K = e 2^M + j, 0 <= j < 2^M; at 4 bits
  # c(k) = ((k + z) / N)^2 with z = 0, N = 7 (signed) or z = 1, N = 16 (unsigned).
  codes, values = _codes_and_values(signed, bits, 1.0)
  top = _codes._top(signed, bits)
  if bits == 8:
    mantissa = _codes.MANTISSA[signed]
    e, j = np.divmod(codes - top, 2**mantissa)
    expected = 2.0**e * (1 + j / 2**mantissa)
  else:
    zero_free = 0 if signed else 1
    expected = ((codes + zero_free) / (top + zero_free)) ** 2
  np.testing.assert_allclose(values if signed else np.sqrt(values), expected, rtol=2**-23)


@pytest.mark.parametrize(("signed", "bits"), MAPS, ids=IDS)
def test_the_signed_map_keeps_signs_and_zeros_and_the_unsigned_map_has_no_zero(
  signed: bool, bits: int
) -> None:
  round_trip = _round_trip(signed, bits)
  tiny = np.array([0.0, 1e-30, np.finfo(np.float32).tiny, 1e-20], np.float32)
  if signed:
    values = np.concatenate([tiny, -tiny, [-0.5, 0.25]]).astype(np.float32)
    decoded = np.asarray(round_trip(jnp.float32(1.0), jnp.asarray(values))[1])
    assert np.all(decoded[values == 0] == 0)
    assert np.all(np.sign(decoded) * np.sign(values) >= 0)
    assert decoded[-2] < 0 < decoded[-1]
  else:
    decoded = np.asarray(round_trip(jnp.float32(1e30), jnp.asarray(tiny))[1])
    assert np.all(decoded > 0)  # even 0 decodes to the floor, which only shortens a step


@pytest.mark.parametrize("block", [256, 128, 100, 7])
def test_the_cpu_block_max_is_the_max(block: int) -> None:
  # _block_max takes the CPU formulation on the CPU and a plain max elsewhere: the two
  # must give the same bits (zeros, subnormals, infinities and ties included).
  rng = np.random.default_rng(block)
  x = (10.0 ** rng.uniform(-45, 38, (64, block))).astype(np.float32)
  x[rng.random(x.shape) < 0.2] = 0.0
  x[3] = 0.0
  x[5, 1] = np.inf
  x[7] = x[7, 0]
  got = np.asarray(jax.jit(_codes._max_by_slices)(jnp.asarray(x)))
  np.testing.assert_array_equal(got.view(np.int32), x.max(-1).view(np.int32))
  np.testing.assert_array_equal(np.asarray(jax.jit(_codes._block_max)(jnp.asarray(x))), got)


@pytest.mark.parametrize(("signed", "bits"), MAPS, ids=IDS)
def test_encoding_lowers_for_the_gpu_with_a_plain_max(signed: bool, bits: int) -> None:
  encode = _codes.encode_signed if signed else _codes.encode_unsigned
  blocks = jax.ShapeDtypeStruct((64, 256), jnp.float32)
  traced = jax.jit(encode, static_argnums=1).trace(blocks, bits)
  text = traced.lower(lowering_platforms=("cuda",)).as_text()
  assert "stablehlo.reduce" in text
  assert "stablehlo.slice" not in text  # the CPU's slices are not in the GPU's program
