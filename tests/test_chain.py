"""The pieces compose: the optimizers are their chains of Algorithm 1's pieces.

Also the types: every state class is an immutable pytree annotated with chex
types, ``Moments`` (the value between the pieces) refuses to be flattened, and
the package ships ``py.typed``. How the chains compose with optax's wrappers
is tested in test_wrappers.py; pieces in the wrong place in test_errors.py.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import oracles
import pytest

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


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_optimizer_is_its_chain(name: str, jit: bool) -> None:
  runs = [_run(tx, PARAMS, jit=jit) for tx in CHAINS[name]]
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


# The types -----------------------------------------------------------------------

CHEX_TYPES = {"chex.Array", "chex.ArrayTree", "chex.Numeric"}


@pytest.mark.parametrize(
  "state",
  [
    ao.adam(LR).init(jnp.ones(2))[0],
    ao.amsgrad(LR).init(jnp.ones(2))[2],
    ao.adam(LR, diagnostics=True).init(jnp.ones(2))[2],
    ao.adam(LR, diagnostics=True).init(jnp.ones(2))[3],
    ao.average_params().init(jnp.ones(2)),
  ],
  ids=[
    "MomentsState",
    "RunningMaxState",
    "NormalizeState",
    "ScaleByLrState",
    "AveragedParamsState",
  ],
)
def test_states_are_immutable_pytrees_with_chex_annotations(state: Any) -> None:
  fields = list(state._fields)
  with pytest.raises(AttributeError):
    setattr(state, fields[0], None)
  # With postponed evaluation the annotations are strings (NamedTuple wraps them in ForwardRef).
  hints = type(state).__annotations__
  annotations = {name: getattr(hint, "__forward_arg__", hint) for name, hint in hints.items()}
  assert set(annotations) == set(fields)
  assert set(annotations.values()) <= CHEX_TYPES, annotations
  leaves = jax.tree.leaves(state)
  assert leaves
  assert all(isinstance(leaf, jax.Array) for leaf in leaves)


def test_moments_are_frozen_chex_annotated_and_refuse_to_be_flattened() -> None:
  """Flattening ``Moments`` (as every optax transformation does) raises, naming the pieces."""
  tx = optax.chain(ao.scale_by_moments(), ao.bias_correct())
  moments, _ = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
  assert isinstance(moments, ao.Moments)
  assert moments.corrected_mu
  assert moments.corrected_nu
  with pytest.raises(dataclasses.FrozenInstanceError):
    moments.mu = None  # type: ignore[misc]
  array_fields = {"mu", "nu", "count", "b1", "b2", "grad"}
  hints = {f.name: f.type for f in dataclasses.fields(ao.Moments) if f.name in array_fields}
  assert set(hints.values()) <= CHEX_TYPES
  for flatten in (jax.tree.leaves, jax.tree_util.tree_flatten_with_path, jax.jit(lambda m: m)):
    with pytest.raises(TypeError, match=r"ao\.scale_by_moments.*ao\.normalize"):
      flatten(moments)


def test_package_ships_py_typed() -> None:
  assert importlib.resources.files("adam_optax").joinpath("py.typed").is_file()
