"""The pieces compose: the optimizers are their chains, and the chains compose with optax.

Also the types: every state class is an immutable pytree annotated with chex
types, ``Moments`` keeps its ``order`` static, and the package ships ``py.typed``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import oracles
import pytest
from absl.testing import parameterized

import adam_optax as ao

LR = 1e-2


PARAMS = {"w": jnp.array([[0.5, -1.0], [2.0, 0.1]]), "b": (jnp.array(0.3), [jnp.ones(2)])}


def _sine_gradients(params: chex.ArrayTree, t: int) -> chex.ArrayTree:
  return jax.tree.map(lambda p: jnp.sin(3.0 * p + t), params)


def _run(
  tx: optax.GradientTransformation,
  params: chex.ArrayTree,
  steps: int = 5,
  gradients: Callable[[chex.ArrayTree, int], chex.ArrayTree] = _sine_gradients,
  *,
  jit: bool = True,
) -> tuple[list[chex.ArrayTree], optax.OptState]:
  """Steps on ``gradients(params, t)``: the params after each step, the final state."""
  update = jax.jit(tx.update) if jit else tx.update
  state, trajectory = tx.init(params), []
  for t in range(steps):
    updates, state = update(gradients(params, t), state, params)
    params = optax.apply_updates(params, updates)
    trajectory.append(params)
  return trajectory, state


# Each optimizer is exactly its chain of pieces.
CHAINS: dict[str, tuple[optax.GradientTransformation, optax.GradientTransformation]] = {
  "adam": (
    ao.adam(LR, 0.8, 0.99, 1e-6),
    optax.chain(
      ao.scale_by_moments(b1=0.8, b2=0.99),
      ao.bias_correct(),
      ao.normalize(eps=1e-6),
      ao.scale_by_lr(LR),
    ),
  ),
  "nadam": (
    ao.nadam(LR),
    optax.chain(
      ao.scale_by_moments(), ao.bias_correct(nesterov=True), ao.normalize(), ao.scale_by_lr(LR)
    ),
  ),
  "amsgrad": (
    ao.amsgrad(LR),
    optax.chain(
      ao.scale_by_moments(), ao.bias_correct(), ao.running_max(), ao.normalize(), ao.scale_by_lr(LR)
    ),
  ),
  "adamax": (
    ao.adamax(LR),
    optax.chain(
      ao.scale_by_infinity_moments(), ao.bias_correct(), ao.normalize(eps=0.0), ao.scale_by_lr(LR)
    ),
  ),
  "adamw": (
    ao.adamw(LR, weight_decay=0.1),
    optax.chain(
      ao.scale_by_moments(),
      ao.bias_correct(),
      ao.normalize(),
      optax.add_decayed_weights(0.1),
      ao.scale_by_lr(LR),
    ),
  ),
}


class ChainTest(chex.TestCase):
  """The optimizers equal their chains to the bit, eagerly and under jit."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*((name, name) for name in CHAINS))
  def test_optimizer_is_its_chain(self, name: str) -> None:
    runs = [
      _run(optax.GradientTransformation(tx.init, self.variant(tx.update)), PARAMS, jit=False)
      for tx in CHAINS[name]
    ]
    chex.assert_trees_all_equal(*runs)
    chex.assert_trees_all_equal_structs(*(state for _, state in runs))


@pytest.mark.usefixtures("x64")
def test_without_bias_correction_is_algorithm_1_without_lines_9_and_10(
  rng: np.random.Generator,
) -> None:
  """Leaving ``bias_correct`` out of the chain is Adam with m_t, v_t used as they are."""
  theta0 = rng.uniform(2, 4, 7) * rng.choice([-1, 1], 7)
  grads = rng.normal(size=(100, 7)) * 10.0 ** rng.uniform(-2, 1, 7)
  tx = optax.chain(ao.scale_by_moments(), ao.normalize(), ao.scale_by_lr(1e-3))
  trajectory, _ = _run(tx, jnp.asarray(theta0), len(grads), lambda _, t: jnp.asarray(grads[t]))
  ours = jnp.stack(trajectory)
  expected = oracles.adam(theta0, grads, bias_correction=False).params
  assert ours.dtype == jnp.float64
  assert oracles.relative_error(ours, expected) <= 1e-10
  with_correction = oracles.adam(theta0, grads).params
  assert oracles.relative_error(ours, with_correction) > 1e-4


# ao.adam inside optax.chain ------------------------------------------------------
# (the other optax wrappers are tested in test_wrappers.py)


def test_clip_by_global_norm_in_front_matches_optax() -> None:
  """Clipping in front of ao.adam: the moments see the clipped gradients, as in optax."""
  assert optax.tree.norm(_sine_gradients(PARAMS, 0)) > 0.5  # clipping is active
  ours, _ = _run(optax.chain(optax.clip_by_global_norm(0.5), ao.adam(LR)), PARAMS)
  theirs, _ = _run(optax.chain(optax.clip_by_global_norm(0.5), optax.adam(LR)), PARAMS)
  chex.assert_trees_all_equal(ours, theirs)
  assert not np.array_equal(ours[-1]["w"], PARAMS["w"])


def test_vmap_over_independent_problems() -> None:
  """A batch of problems under jax.vmap equals solving each on its own."""
  batch = jnp.arange(12.0).reshape(4, 3) / 7.0 - 0.5
  tx = ao.adam(LR)

  def solve(params: jax.Array) -> tuple[jax.Array, optax.OptState]:
    state = tx.init(params)
    for t in range(5):
      updates, state = tx.update(jnp.cos(5.0 * params + t), state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  batched = jax.jit(jax.vmap(solve))(batch)
  one_by_one = [jax.jit(solve)(params) for params in batch]
  chex.assert_trees_all_equal(batched, jax.tree.map(lambda *xs: jnp.stack(xs), *one_by_one))
  assert batched[1][0].count.shape == (4,)


# The types -----------------------------------------------------------------------

CHEX_TYPES = {"chex.Array", "chex.ArrayTree", "chex.Numeric"}


def _moments(order: float = 2.0) -> ao.Moments:
  return ao.Moments(
    mu={"w": jnp.ones(2)},
    nu={"w": jnp.ones(2)},
    count=jnp.asarray(3, jnp.int32),
    b1=0.9,
    b2=0.999,
    grad={"w": jnp.zeros(2)},
    order=order,
  )


@pytest.mark.parametrize(
  "state",
  [
    ao.adam(LR).init(jnp.ones(2))[0],
    ao.amsgrad(LR).init(jnp.ones(2))[2],
    _moments(),
  ],
  ids=["MomentsState", "RunningMaxState", "Moments"],
)
def test_states_are_immutable_pytrees_with_chex_annotations(state: Any) -> None:
  fields = (
    [f.name for f in dataclasses.fields(state) if f.name != "order"]
    if dataclasses.is_dataclass(state)
    else list(state._fields)
  )
  with pytest.raises((AttributeError, dataclasses.FrozenInstanceError)):
    setattr(state, fields[0], None)
  # With postponed evaluation the annotations are strings (NamedTuple wraps them in ForwardRef).
  annotations = {
    name: getattr(hint, "__forward_arg__", hint)
    for name, hint in type(state).__annotations__.items()
    if name in fields
  }
  assert set(annotations.values()) <= CHEX_TYPES, annotations
  leaves = jax.tree.leaves(state)
  assert leaves
  assert all(isinstance(leaf, (jax.Array, float)) for leaf in leaves)


@pytest.mark.parametrize("order", [2.0, math.inf])
def test_moments_round_trip_keeps_order_static(order: float) -> None:
  moments = _moments(order)
  leaves, treedef = jax.tree.flatten(moments)
  assert len(leaves) == 6  # mu, nu, count, b1, b2, grad: order is in the treedef
  rebuilt = jax.tree.unflatten(treedef, leaves)
  assert rebuilt.order == order
  chex.assert_trees_all_equal(rebuilt, moments)
  assert jax.tree.structure(_moments(2.0)) != jax.tree.structure(_moments(math.inf))
  through_jit = jax.jit(lambda m: dataclasses.replace(m, mu=jax.tree.map(jnp.negative, m.mu)))
  assert through_jit(moments).order == order


def test_package_ships_py_typed() -> None:
  assert importlib.resources.files("adam_optax").joinpath("py.typed").is_file()
