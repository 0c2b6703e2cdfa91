"""ao optimizers in Flax: NNX's ``nnx.Optimizer`` and Linen's ``TrainState``.

Real models trained on the handwritten digits that scikit-learn bundles
(1,797 8x8 images, no download), on a fixed train/test split: the
``digits`` fixture and the figure-2 MLP of ``adam_optax.experiments``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.training import train_state

import adam_optax as ao
from adam_optax.experiments.data import Dataset
from adam_optax.experiments.models import MLP


@nnx.jit
def nnx_train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
  def loss_fn(model: MLP) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def accuracy(logits: jax.Array, labels: jax.Array) -> float:
  return float(jnp.mean(jnp.argmax(logits, axis=-1) == labels))


def test_nnx_mlp_reaches_95_percent_test_accuracy(digits: Dataset) -> None:
  x_train, y_train, x_test, y_test = digits[:4]
  model = MLP(64, 10, hidden=128, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, ao.adam(1e-2), wrt=nnx.Param)
  losses = [nnx_train_step(model, optimizer, x_train, y_train) for _ in range(150)]
  assert float(losses[-1]) < 0.1 * float(losses[0])
  assert accuracy(model(x_test), y_test) >= 0.95  # measured: 0.964
  assert int(optimizer.step[...]) == 150
  moments = optimizer.opt_state[0]
  assert isinstance(moments, ao.MomentsState)
  assert int(moments.count[...]) == 150


def test_nnx_optimizer_with_ao_adam_equals_optax_adam(digits: Dataset) -> None:
  x_train, y_train, _, _ = digits[:4]
  trained = {}
  for name, tx in [("ao", ao.adam(1e-2)), ("optax", optax.adam(1e-2))]:
    model = MLP(64, 10, hidden=128, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for _ in range(10):
      nnx_train_step(model, optimizer, x_train, y_train)
    trained[name] = (nnx.state(model, nnx.Param), optax.tree_utils.tree_get(optimizer, "nu"))
  for got, want in zip(
    jax.tree.leaves(trained["ao"]), jax.tree.leaves(trained["optax"]), strict=True
  ):
    np.testing.assert_array_equal(got, want)


def test_linen_train_state_logistic_regression_reaches_90_percent(digits: Dataset) -> None:
  x_train, y_train, x_test, y_test = digits[:4]
  x_train, x_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)  # Dense maps the last axis
  model = nn.Dense(10)  # multinomial logistic regression
  params = model.init(jax.random.key(0), x_train[:1])["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=ao.adam(5e-2))

  def train_step(state: train_state.TrainState, _: Any) -> tuple[train_state.TrainState, jax.Array]:
    def loss_fn(params: Any) -> jax.Array:
      logits = state.apply_fn({"params": params}, x_train)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y_train).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  state, losses = jax.jit(lambda s: jax.lax.scan(train_step, s, length=300))(state)
  assert float(losses[-1]) < 0.1 * float(losses[0])
  assert accuracy(model.apply({"params": state.params}, x_test), y_test) >= 0.90  # measured: 0.953
  assert int(state.step) == 300
  assert isinstance(state.opt_state[0], ao.MomentsState)
  assert int(state.opt_state[0].count) == 300
