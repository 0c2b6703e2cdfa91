"""Precision: storage dtypes, arithmetic in at least float32, complex params, saturation.

The dtype policy (docs/index.md, "Precise"): ``mu_dtype``/``nu_dtype`` set the
storage dtype of the moments (by default the params' dtype, the real one for
the second moment of complex params); arithmetic is at least float32, so low-
precision params train stably and a float16 step with zero gradients is zero,
not optax's NaN (optax#1754); ``init`` warns when a storage dtype cannot hold
one step of a moving average; the updates take the dtype optax gives them
(mixed precision); the step count saturates at the int32 maximum.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import oracles
import pytest
from matrix import FLOAT_DTYPES, NAMES, WITH_STORAGE, both, ours

import adam_optax as ao
from adam_optax import _precision

INT32_MAX = 2**31 - 1


def _steps(
  tx: optax.GradientTransformation, params: chex.ArrayTree, grads: chex.ArrayTree
) -> tuple[chex.ArrayTree, Any, chex.ArrayTree]:
  """``tx`` over a stream of gradients (leading axis) in one jitted scan.

  Returns the final params, the final state and the updates of every step.
  """

  def step(carry: tuple[Any, Any], g: chex.ArrayTree) -> tuple[Any, Any]:
    p, state = carry
    updates, state = tx.update(g, state, p)
    return (optax.apply_updates(p, updates), state), updates

  @jax.jit
  def run(params: chex.ArrayTree, grads: chex.ArrayTree) -> tuple[Any, Any, Any]:
    (p, state), updates = jax.lax.scan(step, (params, tx.init(params)), grads)
    return p, state, updates

  return run(params, grads)


def _quiet(function: Callable[..., Any], *args: Any) -> Any:
  """Calls ``function`` with the storage warnings silenced (tested on their own below)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    return function(*args)


# Storage dtypes -------------------------------------------------------------------

STORAGE_CASES = [
  # params, mu_dtype, nu_dtype -> stored mu, stored nu
  (jnp.float32, None, None, jnp.float32, jnp.float32),
  (jnp.bfloat16, None, None, jnp.bfloat16, jnp.bfloat16),
  (jnp.float16, None, jnp.float32, jnp.float16, jnp.float32),
  (jnp.float32, jnp.bfloat16, None, jnp.bfloat16, jnp.float32),
  (jnp.bfloat16, jnp.float32, jnp.float32, jnp.float32, jnp.float32),
  (jnp.complex64, None, None, jnp.complex64, jnp.float32),
  (jnp.complex64, jnp.complex64, jnp.bfloat16, jnp.complex64, jnp.bfloat16),
]


@pytest.mark.parametrize("name", WITH_STORAGE)
@pytest.mark.parametrize(("params_dtype", "mu_dtype", "nu_dtype", "mu", "nu"), STORAGE_CASES)
def test_moments_are_stored_in_the_requested_dtype(
  name: str, params_dtype: Any, mu_dtype: Any, nu_dtype: Any, mu: Any, nu: Any
) -> None:
  tx = ours(name, 1e-2, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
  params = {"w": jnp.ones((2, 3), params_dtype), "b": jnp.ones((), params_dtype)}
  grads = jax.tree.map(lambda p: jnp.stack([p, -2 * p, 0 * p]), params)
  _, state, updates = _quiet(_steps, tx, params, grads)
  for key, dtype in (("mu", mu), ("nu", nu), ("nu_max", nu)):
    for leaf in jax.tree.leaves(optax.tree_utils.tree_get(state, key)):
      assert leaf.dtype == dtype, key
  dtype = jnp.result_type(params_dtype, mu, nu)  # optax's promotion of g, mu and nu
  assert {leaf.dtype for leaf in jax.tree.leaves(updates)} == {dtype}
  chex.assert_tree_all_finite(updates)


def test_storage_rounds_only_the_state_not_the_step() -> None:
  """The first update is computed in float32 whatever the storage dtype.

  Moments are emitted in compute precision and only the stored copy is
  rounded, so bfloat16 storage first shows in the second step.
  """
  params = jnp.zeros(5)
  grads = jnp.array([[0.1234567, -3.3333, 7.77e-3, 1e-5, 12.5]] * 2)
  _, _, wide = _steps(ao.adam(1e-2), params, grads)
  _, _, narrow = _quiet(
    _steps, ao.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16), params, grads
  )
  np.testing.assert_array_equal(narrow[0], wide[0])
  assert not np.array_equal(narrow[1], wide[1])


@pytest.mark.parametrize("params_dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_low_precision_params_train_stably_with_float32_moments(params_dtype: Any) -> None:
  """200 steps on an ill-conditioned quadratic (curvatures 1e-2..1e2) converge.

  The loss falls a thousandfold and every coordinate ends within 8 ulp (of
  the params' dtype at |target| <= 3) or 1e-3 of the optimum. Low-precision
  params cannot get closer: once a step is below half an ulp of a parameter,
  adding it rounds back to the parameter.
  """
  target = jnp.linspace(-2.0, 3.0, 8)
  curvature = jnp.logspace(-2, 2, 8)
  tx = ao.adam(0.05, mu_dtype=jnp.float32, nu_dtype=jnp.float32)

  def loss(p: jax.Array) -> jax.Array:
    return jnp.sum(curvature.astype(p.dtype) * (p - target.astype(p.dtype)) ** 2)

  def step(carry: tuple[Any, Any], _: None) -> tuple[Any, jax.Array]:
    p, state = carry
    updates, state = tx.update(jax.grad(loss)(p), state, p)
    return (optax.apply_updates(p, updates), state), loss(p.astype(jnp.float32))

  params = jnp.zeros(8, params_dtype)
  (params, state), losses = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), length=200))(
    params
  )
  chex.assert_tree_all_finite((params, state, losses))
  assert params.dtype == params_dtype
  assert state[0].mu.dtype == state[0].nu.dtype == jnp.float32
  assert loss(params.astype(jnp.float32)) < 1e-3 * losses[0]
  ulp = 2 * float(jnp.finfo(params_dtype).eps)  # the spacing of floats in [2, 4)
  np.testing.assert_allclose(params.astype(jnp.float32), target, atol=8 * ulp + 1e-3)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_sixteen_bit_storage_reads_back_within_its_rounding_both_ways(dtype: Any) -> None:
  # Rounding to nearest is scale-invariant over normal numbers: every cell of the
  # octave [1, 2) and of two far ones, at both float32 neighbours of each midpoint
  # (where the error either way is largest), and at the midpoints (ties to even).
  low, high = _precision.read_back_rounding(jnp.zeros(1, dtype))[0]
  grid = np.asarray(jnp.arange(1.0, 2.0, float(jnp.finfo(dtype).eps)), np.float32)
  middles = (grid + np.float32(jnp.finfo(dtype).eps) / 2).astype(np.float32)
  ends = np.concatenate([np.nextafter(middles, 0), middles, np.nextafter(middles, 3)])
  ends = np.concatenate([ends, ends * 2.0**-10, ends * 2.0**10]).astype(np.float32)
  read = np.asarray(jnp.asarray(ends).astype(dtype).astype(jnp.float32), np.float64)
  ratio = read / ends
  assert 1 - ratio.min() <= low
  assert ratio.max() - 1 <= high
  # Both are reached: exactly at a tie rounded down, within a float32 ulp above one.
  assert 1 - ratio.min() >= low * (1 - 2**-11)
  assert ratio.max() - 1 >= high * (1 - 2**-11)


def test_float16_zero_gradient_gives_zero_update_not_nan() -> None:
  """eps = 1e-8 underflows to 0 in float16, so optax.adam computes 0/0 (optax#1754)."""
  params = jnp.ones(4, jnp.float16)
  zeros = jnp.zeros(4, jnp.float16)
  tx = ao.adam(1e-3)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert updates.dtype == jnp.float16
  np.testing.assert_array_equal(updates, 0.0)

  theirs = optax.adam(1e-3)
  their_updates, _ = theirs.update(zeros, theirs.init(params), params)
  if not np.all(np.isnan(their_updates)):
    pytest.skip("optax.adam no longer gives NaN here (optax#1754 fixed)")
  assert np.all(np.isnan(their_updates))


# Warnings when storage cannot hold a step of the average ---------------------------


@pytest.mark.parametrize(
  ("kwargs", "params_dtype", "fix"),
  [
    ({"nu_dtype": jnp.bfloat16}, jnp.float32, "nu_dtype=jnp.float32"),
    ({}, jnp.bfloat16, "nu_dtype=jnp.float32"),
    ({"b2": 0.9999}, jnp.float16, "nu_dtype=jnp.float32"),
    ({"b1": 0.999, "b2": 0.99}, jnp.bfloat16, "mu_dtype=jnp.float32"),
  ],
)
def test_init_warns_once_when_storage_cannot_move(
  kwargs: dict[str, Any], params_dtype: Any, fix: str
) -> None:
  """bfloat16 has eps = 2^-7: 0.999 v rounds back to v, so v never decays."""
  tx = ao.adam(1e-3, **kwargs)
  with pytest.warns(UserWarning, match=re.escape(fix)) as records:
    tx.init(jnp.ones(3, params_dtype))
  assert len(records) == 1


@pytest.mark.parametrize(
  ("kwargs", "params_dtype"),
  [
    ({}, jnp.float32),
    ({"b2": 0.99}, jnp.bfloat16),
    ({}, jnp.float16),
    ({"nu_dtype": jnp.float32}, jnp.bfloat16),
  ],
)
def test_init_does_not_warn_when_storage_can_move(
  kwargs: dict[str, Any], params_dtype: Any
) -> None:
  tx = ao.adam(1e-3, **kwargs)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx.init(jnp.ones(3, params_dtype))


def test_bfloat16_second_moment_with_b2_0999_really_cannot_move() -> None:
  """What the warning is about: once stored, v_t stops decaying."""
  tx = ao.scale_by_moments(nu_dtype=jnp.bfloat16)
  grads = jnp.concatenate([jnp.ones((1, 1)), jnp.zeros((50, 1))])
  _, state, _ = _quiet(
    _steps, optax.chain(tx, ao.normalize(), ao.scale_by_lr(1.0)), jnp.zeros(1), grads
  )
  np.testing.assert_array_equal(state[0].nu, jnp.asarray([1e-3], jnp.bfloat16))


# Complex parameters ---------------------------------------------------------------


def _complex_problem(rng: np.random.Generator, steps: int) -> tuple[np.ndarray, np.ndarray]:
  shape = (6,)
  params = rng.uniform(2, 4, shape) * np.exp(1j * rng.uniform(0, 2 * np.pi, shape))
  grads = rng.normal(size=(steps, *shape)) + 1j * rng.normal(size=(steps, *shape))
  return params, grads * 10.0 ** rng.uniform(-2, 1, shape)


@pytest.mark.usefixtures("x64")
def test_complex_adam_matches_the_complex_transcription(rng: np.random.Generator) -> None:
  r"""For complex params, :math:`v_t` averages :math:`|g_t|^2` and stays real."""
  params, grads = _complex_problem(rng, 200)
  final, state, _ = _steps(ao.adam(1e-2), jnp.asarray(params), jnp.asarray(grads))
  expected = oracles.adam(params, grads, alpha=1e-2)
  assert final.dtype == jnp.complex128
  assert state[0].nu.dtype == jnp.float64
  assert oracles.relative_error(final, expected.params[-1]) <= 1e-10
  assert oracles.relative_error(state[0].nu, expected.nu[-1]) <= 1e-10
  assert oracles.relative_error(state[0].mu, expected.mu[-1], elementwise=False) <= 1e-10


def test_complex_adam_matches_optax(rng: np.random.Generator) -> None:
  """The values of optax.adam (which stores nu as complex with zero imaginary part)."""
  params, grads = _complex_problem(rng, 100)
  params, grads = jnp.asarray(params, jnp.complex64), jnp.asarray(grads, jnp.complex64)
  ours, our_state, _ = _steps(ao.adam(1e-2), params, grads)
  theirs, their_state, _ = _steps(optax.adam(1e-2), params, grads)
  # optax keeps nu complex, so it averages |g|^2 and divides by sqrt(nu) + eps
  # in complex arithmetic, which XLA rounds differently: measured over 100
  # steps, params within 1 ulp, mu exact, nu within 7 ulp (5.6e-7 relative).
  for mine, optax_value in ((ours, theirs), (our_state[0].mu, their_state[0].mu)):
    for part in (jnp.real, jnp.imag):
      assert oracles.ulp_distance(part(mine), part(optax_value)).max() <= 4
  np.testing.assert_allclose(our_state[0].nu, jnp.real(their_state[0].nu), rtol=2e-6)
  np.testing.assert_array_equal(jnp.imag(their_state[0].nu), 0.0)


# The step count -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_step_count_saturates_at_the_int32_maximum(name: str) -> None:
  tx = ours(name, 1e-3)
  params = jnp.array([1.0, -2.0, 3.0])
  state = optax.tree_utils.tree_set(tx.init(params), count=jnp.asarray(INT32_MAX - 1, jnp.int32))
  update = jax.jit(tx.update)
  counts = []
  for scale in (1.0, -2.0, 0.5):
    updates, state = update(scale * params, state, params)
    chex.assert_tree_all_finite(updates)
    counts.append(int(optax.tree_utils.tree_get(state, "count")))
  assert counts == [INT32_MAX] * 3


def test_saturated_count_means_no_bias_correction() -> None:
  """At t = 2^31 - 1, 1 - b^t is 1 in float32: the step is Adam without lines 9-10."""
  params = jnp.array([1.0, -2.0, 3.0])
  at_max = optax.tree_utils.tree_set(
    ao.adam(1e-3).init(params), count=jnp.asarray(INT32_MAX, jnp.int32)
  )
  plain = optax.chain(ao.scale_by_moments(), ao.normalize(), ao.scale_by_lr(1e-3))
  grads = jnp.array([0.5, -1.0, 2.0])
  ours, _ = ao.adam(1e-3).update(grads, at_max, params)
  expected, _ = plain.update(grads, plain.init(params), params)
  np.testing.assert_array_equal(ours, expected)


# Mixed precision ------------------------------------------------------------------


MIXED = [
  pytest.param(p, g, mu, id=f"{jnp.dtype(p).name}-{jnp.dtype(g).name}-{mu and jnp.dtype(mu).name}")
  for p in FLOAT_DTYPES
  for g in FLOAT_DTYPES
  for mu in (None, jnp.float32, jnp.bfloat16)
]


@pytest.mark.parametrize("name", WITH_STORAGE)
@pytest.mark.parametrize(("params_dtype", "grads_dtype", "mu_dtype"), MIXED)
def test_mixed_precision_updates_take_the_dtype_optax_gives_them(
  name: str, params_dtype: Any, grads_dtype: Any, mu_dtype: Any
) -> None:
  """One rule: the updates take ``result_type(g, stored mu, stored nu)``, as optax's do.

  So float32 params (float32 moments) with bfloat16 gradients get float32
  updates, not updates rounded to bfloat16 before they reach the float32
  weights. Where every dtype is float32 the values are optax's to the bit;
  where optax rounds to 16 bits (it computes ``(1 - b1) g`` and ``g^2`` in the
  gradient's dtype and the moments in theirs, we all in float32) they agree to
  a few ulp of the narrowest dtype involved, relative to the step size (a
  direction near 0 comes from cancelling moments, each rounded to that ulp).
  """
  params = jnp.array([1.0, -2.0, 3.0, 0.25], params_dtype)
  grads = jnp.array([[0.5, -2.0, 3.3, 1.5], [0.75, 1.0, -3.0, 0.5], [5.0, 0.5, -1, -1]])
  grads = grads.astype(grads_dtype)
  ours, theirs = both(name, 1e-3, mu_dtype=mu_dtype)

  def run(tx: optax.GradientTransformation) -> jax.Array:
    """Three jitted steps in a Python loop (optax changes some states' dtypes, so no scan)."""
    p, state, updates = params, _quiet(tx.init, params), []
    for g in grads:
      u, state = _quiet(jax.jit(tx.update), g, state, p)
      p = optax.apply_updates(p, u)
      updates.append(u)
    return jnp.stack(updates)

  our_updates, their_updates = run(ours), run(theirs)
  assert our_updates.dtype == their_updates.dtype
  assert our_updates.dtype == jnp.result_type(grads_dtype, mu_dtype or params_dtype, params_dtype)
  involved = {jnp.dtype(d) for d in (mu_dtype or params_dtype, params_dtype, grads_dtype)}
  if involved == {jnp.dtype(jnp.float32)}:
    np.testing.assert_array_equal(our_updates, their_updates)
  else:
    eps = max(float(jnp.finfo(d).eps) for d in involved)
    np.testing.assert_allclose(
      np.asarray(our_updates, np.float32),
      np.asarray(their_updates, np.float32),
      rtol=4 * eps,
      atol=8 * eps * 1e-3,
    )


def test_float16_gradients_do_not_underflow_with_float32_params() -> None:
  """g = 1e-3 in float16: g^2 (1 - b2) = 1e-9 underflows in float16 arithmetic.

  Computed in float32 the first step is -lr sign(g); optax.adam squares the
  float16 gradient in float16, gets v = 0 and a step of about -lr g / eps.
  """
  params = jnp.ones(2)
  grads = jnp.array([1e-3, -1e-3], jnp.float16)
  updates, _ = ao.adam(1e-3).update(grads, ao.adam(1e-3).init(params), params)
  np.testing.assert_allclose(np.asarray(updates, np.float32), [-1e-3, 1e-3], rtol=1e-3)
  theirs, _ = optax.adam(1e-3).update(grads, optax.adam(1e-3).init(params), params)
  if np.all(np.abs(theirs) < 1e-2):
    pytest.skip("optax.adam no longer underflows here")
  assert np.all(np.abs(theirs) > 10.0)
