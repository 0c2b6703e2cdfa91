"""ao optimizers inside optax's wrappers and JAX's transformations.

Each wrapper is checked against the real optax wrapper around optax's own
optimizer (bit for bit), and for the behaviour it promises (skipped steps
leave no trace, accumulation averages, masks select, hyper-parameters move).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_optax as ao

STEPS = 12
Factory = Callable[[Callable[..., optax.GradientTransformation]], optax.GradientTransformation]


def _params() -> dict[str, jax.Array]:
  kw, kb = jax.random.split(jax.random.key(0))
  return {"w": jax.random.normal(kw, (3, 4)), "b": jax.random.normal(kb, (4,))}


def _grads(steps: int = STEPS, scale: float = 1.0) -> dict[str, jax.Array]:
  """``steps`` gradients per leaf, stacked on a leading axis."""
  kw, kb = jax.random.split(jax.random.key(1))
  return {
    "w": scale * jax.random.normal(kw, (steps, 3, 4)),
    "b": scale * jax.random.normal(kb, (steps, 4)),
  }


def _run(tx: optax.GradientTransformation, grads: Any, params: Any = None) -> tuple[Any, Any]:
  """Applies ``tx`` to each gradient in turn, in one jitted scan."""

  def step(carry: Any, g: Any) -> tuple[Any, None]:
    p, s = carry
    updates, s = tx.update(g, s, p)
    return (optax.apply_updates(p, updates), s), None

  params = _params() if params is None else params
  return jax.jit(lambda p, gs: jax.lax.scan(step, (p, tx.init(p)), gs)[0])(params, grads)


def _assert_trees_equal(actual: Any, expected: Any) -> None:
  """Bit-for-bit equality of every leaf, and of the tree structure."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    assert a.dtype == e.dtype
    np.testing.assert_array_equal(a, e)


def _assert_same_run(ao_run: tuple[Any, Any], optax_run: tuple[Any, Any]) -> None:
  """Same params and same moments, whatever the states' other fields."""
  _assert_trees_equal(ao_run[0], optax_run[0])
  for name in ("mu", "nu"):
    got = optax.tree_utils.tree_get(ao_run[1], name)
    want = optax.tree_utils.tree_get(optax_run[1], name)
    _assert_trees_equal(got, want)


WEIGHTS_ONLY = {"w": True, "b": False}
SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=3, decay_steps=10)

# Each wrapper as a function of the optimizer factory (ao.adam or optax.adam).
WRAPPERS: dict[str, Factory] = {
  "clip_by_global_norm": lambda adam: optax.chain(optax.clip_by_global_norm(1.0), adam(0.1)),
  "warmup_cosine_schedule": lambda adam: adam(SCHEDULE),
  "exponential_decay_schedule": lambda adam: adam(optax.exponential_decay(0.1, 2, 0.5)),
  "piecewise_schedule": lambda adam: adam(optax.piecewise_constant_schedule(0.1, {4: 0.1})),
  "inject_schedule": lambda adam: optax.inject_hyperparams(adam)(learning_rate=SCHEDULE),
  "masked": lambda adam: optax.masked(adam(0.1), WEIGHTS_ONLY),
  "multi_transform_frozen_bias": lambda adam: optax.multi_transform(
    {"train": adam(0.1), "freeze": optax.set_to_zero()}, {"w": "train", "b": "freeze"}
  ),
  "multi_steps": lambda adam: optax.MultiSteps(adam(0.1), every_k_schedule=3),
  "apply_if_finite": lambda adam: optax.apply_if_finite(adam(0.1), max_consecutive_errors=2),
}


@pytest.mark.parametrize("wrapper", WRAPPERS.values(), ids=WRAPPERS.keys())
def test_wrapped_ao_adam_equals_wrapped_optax_adam(wrapper: Factory) -> None:
  grads = _grads(scale=10.0)  # norms well above the clipping threshold
  _assert_same_run(_run(wrapper(ao.adam), grads), _run(wrapper(optax.adam), grads))


@pytest.mark.parametrize(
  "mask", [WEIGHTS_ONLY, lambda p: jax.tree.map(lambda x: x.ndim > 1, p)], ids=["tree", "callable"]
)
def test_adamw_mask_decays_only_the_masked_leaves(mask: Any) -> None:
  grads = _grads()
  run = _run(ao.adamw(0.1, weight_decay=0.5, mask=mask), grads)
  _assert_same_run(run, _run(optax.adamw(0.1, weight_decay=0.5, mask=mask), grads))
  undecayed = _run(ao.adam(0.1), grads)
  np.testing.assert_array_equal(run[0]["b"], undecayed[0]["b"])  # Adam leaves are independent
  assert not np.array_equal(run[0]["w"], undecayed[0]["w"])


def test_masked_passes_the_other_leaves_through_untouched() -> None:
  params = _params()
  g = jax.tree.map(lambda x: x[0], _grads())
  tx = optax.masked(ao.adam(0.1), WEIGHTS_ONLY)
  updates, state = tx.update(g, tx.init(params), params)
  np.testing.assert_array_equal(updates["b"], g["b"])  # optax.masked's contract
  alone, _ = ao.adam(0.1).update(g["w"], ao.adam(0.1).init(params["w"]))
  np.testing.assert_array_equal(updates["w"], alone)
  assert isinstance(state.inner_state[0].mu["b"], optax.MaskedNode)


def test_inject_hyperparams_changes_every_hyperparameter_between_steps() -> None:
  steps = jnp.arange(STEPS, dtype=jnp.float32)
  schedule = {  # a different value of each at every step
    "learning_rate": 0.1 / (1.0 + steps),
    "b1": 0.5 + 0.04 * steps,
    "b2": 0.9 + 0.008 * steps,
    "eps": 10.0 ** (-3.0 - 0.5 * steps),
  }

  def run(adam: Callable[..., optax.GradientTransformation], hyper: dict) -> tuple[Any, Any]:
    tx = optax.inject_hyperparams(adam)(learning_rate=0.1, b1=0.9, b2=0.999, eps=1e-8)

    def step(carry: Any, xs: Any) -> tuple[Any, None]:
      p, s = carry
      g, values = xs
      s = s._replace(hyperparams={**s.hyperparams, **values})
      updates, s = tx.update(g, s, p)
      return (optax.apply_updates(p, updates), s), None

    params = _params()
    return jax.lax.scan(step, (params, tx.init(params)), (_grads(), hyper))[0]

  jitted = jax.jit(run, static_argnums=0)
  ao_run = jitted(ao.adam, schedule)
  _assert_same_run(ao_run, jitted(optax.adam, schedule))
  for name, values in schedule.items():  # each change mattered, and was kept
    constant = {**schedule, name: jnp.full(STEPS, values[0])}
    assert not np.array_equal(jitted(ao.adam, constant)[0]["w"], ao_run[0]["w"])
    np.testing.assert_array_equal(ao_run[1].hyperparams[name], values[-1])


def test_apply_if_finite_skips_nan_and_inf_steps_without_a_trace() -> None:
  params = _params()
  finite = [jax.tree.map(lambda x, i=i: x[i], _grads()) for i in range(2)]
  nan = {**finite[0], "w": finite[0]["w"].at[0, 0].set(jnp.nan)}
  inf = {**finite[0], "b": finite[0]["b"].at[1].set(-jnp.inf)}
  tx = optax.apply_if_finite(ao.adam(0.1), max_consecutive_errors=5)
  step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))

  p, s = step(params, tx.init(params), finite[0])
  for skipped, g in enumerate([nan, inf], start=1):
    p_next, s_next = step(p, s, g)
    _assert_trees_equal(p_next, p)  # params, and every moment and the count:
    _assert_trees_equal(s_next.inner_state, s.inner_state)
    assert int(s_next.notfinite_count) == skipped
    assert int(s_next.total_notfinite) == skipped
    assert not bool(s_next.last_finite)
    p, s = p_next, s_next
  p, s = step(p, s, finite[1])
  assert (int(s.notfinite_count), int(s.total_notfinite), bool(s.last_finite)) == (0, 2, True)
  # As if the bad steps had never been there.
  plain = _run(ao.adam(0.1), jax.tree.map(lambda a, b: jnp.stack([a, b]), *finite))
  _assert_trees_equal(p, plain[0])
  _assert_trees_equal(s.inner_state, plain[1])


def test_multi_steps_applies_adam_to_the_average_of_k_gradients() -> None:
  k, grads = 4, _grads(steps=8)
  tx = optax.MultiSteps(ao.adam(0.1), every_k_schedule=k)
  params = _params()
  p, s, update = params, tx.init(params), jax.jit(tx.update)
  for i in range(k - 1):  # accumulating: nothing moves
    updates, s = update(jax.tree.map(lambda x, i=i: x[i], grads), s, p)
    _assert_trees_equal(updates, jax.tree.map(jnp.zeros_like, params))
  _assert_trees_equal(s.inner_opt_state, ao.adam(0.1).init(params))
  averaged = jax.tree.map(lambda x: x.reshape(2, k, *x.shape[1:]).mean(axis=1), grads)
  manual = _run(ao.adam(0.1), averaged)
  accumulated = _run(tx, grads)
  assert int(optax.tree_utils.tree_get(accumulated[1], "count")) == 2
  # MultiSteps averages incrementally (Welford), the manual mean sums first.
  for got, want in zip(jax.tree.leaves(accumulated[0]), jax.tree.leaves(manual[0]), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_clip_by_global_norm_in_front_clips_what_the_moments_see() -> None:
  params = _params()
  g = jax.tree.map(lambda x: x[0], _grads(scale=100.0))
  tx = optax.chain(optax.clip_by_global_norm(1.0), ao.adam(0.1))
  _, state = tx.update(g, tx.init(params), params)
  mu = optax.tree_utils.tree_get(state, "mu")
  np.testing.assert_allclose(optax.tree.norm(mu) / (1 - 0.9), 1.0, rtol=1e-6)


def _solve(
  target: jax.Array, learning_rate: jax.Array, adam: Callable[..., Any] = ao.adam
) -> jax.Array:
  """One independent problem: Adam with a traced learning rate on a quadratic."""
  tx = adam(learning_rate)
  curvature = jnp.arange(1.0, 1.0 + target.size)
  grad = jax.grad(lambda p: jnp.sum(curvature * (p - target) ** 2))

  def step(carry: Any, _: None) -> tuple[Any, None]:
    p, s = carry
    updates, s = tx.update(grad(p), s, p)
    return (optax.apply_updates(p, updates), s), None

  params = jnp.zeros_like(target)
  return jax.lax.scan(step, (params, tx.init(params)), length=100)[0][0]


def _solve_with_optax(target: jax.Array, learning_rate: jax.Array) -> jax.Array:
  return _solve(target, learning_rate, optax.adam)


def test_vmap_over_independent_problems_equals_solving_each() -> None:
  targets = jax.random.normal(jax.random.key(2), (8, 3))
  rates = jnp.linspace(0.05, 0.2, 8)
  batched = jax.jit(jax.vmap(_solve))(targets, rates)
  one_at_a_time = jnp.stack([jax.jit(_solve)(t, r) for t, r in zip(targets, rates, strict=True)])
  # Batched code may fuse a multiply-add differently: at most one rounding apart.
  np.testing.assert_array_max_ulp(batched, one_at_a_time, maxulp=1)
  np.testing.assert_array_equal(batched, jax.jit(jax.vmap(_solve_with_optax))(targets, rates))
  np.testing.assert_allclose(batched, targets, atol=0.05)  # and each one was solved


def _loss_after_steps(learning_rate: jax.Array, build: str) -> jax.Array:
  """The loss after 10 Adam steps, as a function of the learning rate."""
  if build == "inject":
    tx = optax.inject_hyperparams(ao.adam)(learning_rate=learning_rate)
  else:
    tx = ao.adam(learning_rate)

  def loss(p: jax.Array) -> jax.Array:
    return jnp.sum(jnp.array([1.0, 3.0, 0.5]) * (p - 1.0) ** 2)

  def step(carry: Any, _: None) -> tuple[Any, None]:
    p, s = carry
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return (optax.apply_updates(p, updates), s), None

  params = jnp.array([0.0, -2.0, 3.0])
  params, _ = jax.lax.scan(step, (params, tx.init(params)), length=10)[0]
  return loss(params)


@pytest.mark.parametrize("build", ["traced", "inject"])
def test_meta_gradient_through_steps_matches_finite_differences(build: str) -> None:
  with jax.enable_x64(True):
    rate, h = jnp.float64(0.05), 1e-6
    f = jax.jit(lambda r: _loss_after_steps(r, build))
    meta = jax.grad(f)(rate)
    central = (f(rate + h) - f(rate - h)) / (2 * h)
    assert meta.dtype == jnp.float64
    assert abs(float(meta)) > 1.0  # not vacuously zero
    np.testing.assert_allclose(meta, central, rtol=1e-7)
