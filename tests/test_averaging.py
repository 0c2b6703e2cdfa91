"""Temporal averaging (section 7.2): NumPy EMA, composability, Flax NNX, errors."""

from __future__ import annotations

import re
import warnings
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import adam_optax as ao
from adam_optax.averaging import AveragedParamsState, average_params, averaged_params
from adam_optax.experiments.data import Dataset
from adam_optax.experiments.models import MLP
from adam_optax.experiments.problems import classification_loss

TARGET = {"w": jnp.linspace(-2.0, 2.0, 12).reshape(3, 4), "b": jnp.arange(4.0)}


def _train(tx: optax.GradientTransformation, steps: int, *, averaging: bool = True):
  """Noisy quadratic: every step's params and averaged params, and the updates."""
  params = jax.tree.map(jnp.zeros_like, TARGET)
  keys = jax.random.split(jax.random.key(0), steps)

  def body(carry, key):
    params, state = carry
    grads = jax.tree.map(lambda p, t: p - t + 0.5 * jax.random.normal(key, p.shape), params, TARGET)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    averaged = averaged_params(state) if averaging else params
    return (params, state), (params, averaged, updates)

  _, history = jax.jit(lambda: jax.lax.scan(body, (params, tx.init(params)), keys))()
  return jax.tree.map(np.asarray, history)


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999])
def test_averaged_params_equal_a_numpy_ema_with_bias_correction(beta: float) -> None:
  steps = 200
  trajectory, averaged, _ = _train(optax.chain(ao.adam(0.05), average_params(beta)), steps)
  for name in TARGET:
    thetas = trajectory[name].astype(np.float64)
    ema, expected = np.zeros_like(thetas[0]), []
    for t, theta in enumerate(thetas, start=1):
      ema = beta * ema + (1 - beta) * theta
      expected.append(ema / (1 - beta**t))
    np.testing.assert_allclose(averaged[name], np.stack(expected), rtol=1e-5, atol=1e-6)
  if beta == 0.0:  # beta = 0 keeps the last iterate, exactly
    np.testing.assert_array_equal(averaged["w"], trajectory["w"])


def test_averaging_changes_no_update_and_smooths_the_noise() -> None:
  steps = 300
  _, _, plain = _train(ao.adam(0.05), steps, averaging=False)
  trajectory, averaged, updates = _train(optax.chain(ao.adam(0.05), average_params(0.99)), steps)
  for x, y in zip(jax.tree.leaves(updates), jax.tree.leaves(plain), strict=True):
    np.testing.assert_array_equal(x, y)
  last_error = np.abs(trajectory["w"][-1] - np.asarray(TARGET["w"])).mean()
  averaged_error = np.abs(averaged["w"][-1] - np.asarray(TARGET["w"])).mean()
  assert averaged_error < last_error / 2  # the average of noisy iterates is closer


def test_reader_finds_the_state_in_wrappers_and_rejects_none_or_several() -> None:
  params = {"w": jnp.ones(3)}
  grads = {"w": jnp.full(3, 0.5)}
  tx = optax.MultiSteps(
    optax.inject_hyperparams(lambda beta: optax.chain(ao.adam(0.1), average_params(beta)))(
      beta=0.5
    ),
    every_k_schedule=1,
  )
  updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_allclose(averaged_params(state)["w"], params["w"] + updates["w"], rtol=1e-6)
  with pytest.raises(ValueError, match="found 0"):
    averaged_params(ao.adam(0.1).init(params))
  both = optax.chain(average_params(), average_params())
  with pytest.raises(ValueError, match="found 2"):
    averaged_params(both.init(params))
  assert isinstance(average_params().init(params), AveragedParamsState)
  assert float(averaged_params(average_params().init(params))["w"][0]) == 0.0  # before step 1


def test_bad_input_raises() -> None:
  with pytest.raises(ValueError, match=r"beta=1\.0 is out of range"):
    average_params(1.0)
  with pytest.raises(ValueError, match="dtype"):
    average_params(dtype=jnp.int32)
  tx = average_params()
  state = tx.init(jnp.zeros(2))
  with pytest.raises(ValueError, match="needs the params"):
    tx.update(jnp.ones(2), state)
  moments = optax.chain(ao.scale_by_moments(), average_params())
  with pytest.raises(TypeError, match=r"ao\.average_params expected param-shaped"):
    moments.update(jnp.ones(2), moments.init(jnp.zeros(2)), jnp.zeros(2))


def test_bfloat16_params_with_float32_average() -> None:
  params = jnp.ones(4, jnp.bfloat16)
  tx = optax.chain(ao.adam(0.01, nu_dtype=jnp.float32), average_params(0.999, dtype=jnp.float32))
  updates, state = jax.jit(tx.update)(jnp.ones(4, jnp.bfloat16), tx.init(params), params)
  averaged = averaged_params(state)
  assert averaged.dtype == jnp.float32
  # Within bfloat16's precision: under jit XLA may keep params + updates in float32.
  np.testing.assert_allclose(averaged, (params + updates).astype(jnp.float32), rtol=8e-3)


def _average_of_constant_params(tx: optax.GradientTransformation, params: jax.Array) -> jax.Array:
  """The bias-corrected average after 1,000 steps that leave ``params`` where they are.

  The average of a constant is that constant at every step, whatever beta.
  """

  def body(state: AveragedParamsState, _: None) -> tuple[AveragedParamsState, None]:
    return tx.update(jnp.zeros_like(params), state, params)[1], None

  state, _ = jax.jit(lambda s: jax.lax.scan(body, s, length=1000))(tx.init(params))
  return averaged_params(state)


def test_bfloat16_average_warns_once_and_indeed_cannot_move() -> None:
  """bfloat16 has eps = 2^-7: 0.999 x rounds back to x, so the average sticks."""
  params = jnp.ones(3, jnp.bfloat16)
  tx = average_params(0.999)
  with pytest.warns(UserWarning, match=re.escape("(dtype=jnp.float32)")) as records:
    tx.init(params)
  assert len(records) == 1
  assert "beta=0.999 cannot move the average stored in bfloat16" in str(records[0].message)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    stuck = _average_of_constant_params(tx, params)
  # The stored average climbs towards 1 until 0.001 (1 - x) is below half a
  # bfloat16 step, near 0.25, and stays there: read back it is 0.39, not 1.
  assert stuck.dtype == jnp.bfloat16
  np.testing.assert_array_less(stuck.astype(jnp.float32), 0.5)


def test_float32_average_of_bfloat16_params_does_not_warn_and_moves() -> None:
  params = jnp.ones(3, jnp.bfloat16)
  tx = average_params(0.999, dtype=jnp.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx.init(params)
  np.testing.assert_allclose(_average_of_constant_params(tx, params), 1.0, rtol=1e-4)


@pytest.mark.parametrize(
  ("kwargs", "params_dtype"),
  [({}, jnp.float32), ({}, jnp.float16), ({"beta": 0.99}, jnp.bfloat16)],
)
def test_no_warning_where_the_average_can_move(kwargs: dict[str, float], params_dtype: Any) -> None:
  """1 - beta is at least half a step of the storage dtype (float16's eps is 2^-10)."""
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    average_params(**kwargs).init(jnp.ones(3, params_dtype))


def test_traced_beta_is_not_checked() -> None:
  params = jnp.ones(3, jnp.bfloat16)
  injected = optax.inject_hyperparams(average_params)(beta=0.999)
  jitted = jax.jit(lambda beta: average_params(beta).init(params))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert averaged_params(injected.init(params)).dtype == jnp.bfloat16
    assert jitted(0.999).average.dtype == jnp.bfloat16


def test_flax_nnx_model_evaluates_with_averaged_params(digits: Dataset) -> None:
  model = MLP(64, 10, hidden=128, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.chain(ao.adam(0.05), average_params(0.9)), wrt=nnx.Param)

  @nnx.jit
  def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(lambda m: classification_loss(m, x, y))(model)
    optimizer.update(model, grads)
    return loss

  for _ in range(15):
    train_step(model, optimizer, digits.x_train, digits.y_train)
  averaged = averaged_params(nnx.as_pure(optimizer.opt_state))
  # Found by field name in nnx.state too, where the NamedTuples are mappings of variables.
  from_state = averaged_params(nnx.state(optimizer))
  chex.assert_trees_all_equal(jax.tree.leaves(from_state), jax.tree.leaves(averaged))
  eval_model = nnx.clone(model)
  nnx.update(eval_model, from_state)
  kernel = nnx.as_pure(nnx.state(eval_model, nnx.Param))["hidden1"]["kernel"]
  np.testing.assert_array_equal(kernel, averaged["hidden1"]["kernel"])
  assert not np.array_equal(kernel, model.hidden1.kernel[...])  # the training model is untouched
  test_loss = nnx.jit(classification_loss)(eval_model, digits.x_test, digits.y_test)
  assert np.isfinite(float(test_loss))
