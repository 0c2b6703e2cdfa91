"""Agreement with float64 references: NumPy transcriptions and torch.optim.Adam.

Under 64-bit JAX the optimizers run in float64; over a few hundred steps of a
random gradient stream (magnitudes 1e-3..1e2, a tenth of it exact zeros) they
must agree with the transcriptions in ``oracles.py`` and with
``torch.optim.Adam`` to 1e-10 relative (docs/index.md). The params start away from
zero (|theta_0| in [2, 4], steps of at most ~1e-2), so the elementwise
relative error of the params is well defined; the first moment crosses zero
and is compared relative to its largest magnitude. Run with ``-s`` to see the
measured errors.
"""

from __future__ import annotations

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

STEPS = 300
RTOL = 1e-10
SHAPES = {"w": (4, 3), "b": (3,)}


def _problem(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Float64 params away from zero and a gradient stream per leaf, as NumPy arrays."""
  params, grads = {}, {}
  for name, shape in SHAPES.items():
    params[name] = rng.choice([-1.0, 1.0], shape) * rng.uniform(2.0, 4.0, shape)
    stream = rng.normal(size=(STEPS, *shape)) * 10.0 ** rng.uniform(-3, 2, shape)
    stream[rng.random(stream.shape) < 0.1] = 0.0
    grads[name] = stream
  return params, grads


def _trajectory(
  tx: optax.GradientTransformation, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]
) -> oracles.Trajectory:
  """``tx`` on the gradient stream in one jitted scan: params, m_t and v_t after each step."""

  def step(carry: tuple[Any, Any], g: chex.ArrayTree) -> tuple[Any, Any]:
    p, state = carry
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    mu, nu = (optax.tree_utils.tree_get(state, key) for key in ("mu", "nu"))
    return (p, state), oracles.Trajectory(p, mu, nu)

  @jax.jit
  def run(params: chex.ArrayTree, grads: chex.ArrayTree) -> oracles.Trajectory:
    return jax.lax.scan(step, (params, tx.init(params)), grads)[1]

  trajectory = run(jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, grads))
  chex.assert_tree_all_finite(trajectory)
  assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(trajectory)), "x64 is off"
  return trajectory


def _errors(ours: oracles.Trajectory, reference: Callable[[str], oracles.Trajectory]) -> dict:
  """The largest relative errors over all leaves and steps, per field."""
  errors = {"params": 0.0, "mu": 0.0, "nu": 0.0}
  for name in SHAPES:
    expected = reference(name)
    errors["params"] = max(
      errors["params"], oracles.relative_error(ours.params[name], expected.params)
    )
    errors["mu"] = max(
      errors["mu"], oracles.relative_error(ours.mu[name], expected.mu, elementwise=False)
    )
    errors["nu"] = max(errors["nu"], oracles.relative_error(ours.nu[name], expected.nu))
  return errors


ADAM_SETTINGS = {
  "paper_defaults": {"alpha": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8},
  "fast": {"alpha": 1e-2, "b1": 0.5, "b2": 0.9, "eps": 1e-6},
  "no_momentum": {"alpha": 3e-3, "b1": 0.0, "b2": 0.99, "eps": 1e-3},
  "slow": {"alpha": 1e-3, "b1": 0.99, "b2": 0.9999, "eps": 1e-12},
}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("setting", sorted(ADAM_SETTINGS))
def test_adam_matches_algorithm_1_and_torch(setting: str, rng: np.random.Generator) -> None:
  hp = ADAM_SETTINGS[setting]
  params, grads = _problem(rng)
  ours = _trajectory(ao.adam(hp["alpha"], hp["b1"], hp["b2"], hp["eps"]), params, grads)

  numpy_errors = _errors(ours, lambda name: oracles.adam(params[name], grads[name], **hp))
  torch_error = max(
    oracles.relative_error(ours.params[name], oracles.torch_adam(params[name], grads[name], **hp))
    for name in SHAPES
  )
  print(f"\nadam {setting:15s} vs NumPy {numpy_errors}, vs torch params {torch_error:.2e}")
  assert max(numpy_errors.values()) <= RTOL
  assert torch_error <= RTOL


VARIANTS: dict[str, tuple[Callable[..., optax.GradientTransformation], Callable[..., Any]]] = {
  "nadam": (ao.nadam, oracles.nadam),
  "amsgrad": (ao.amsgrad, oracles.amsgrad),
  "adamax": (ao.adamax, oracles.adamax),
}
_EPS_ROOT = {"alpha": 1e-2, "b1": 0.8, "b2": 0.95, "eps": 1e-6, "eps_root": 1e-8}
VARIANT_SETTINGS = {
  "nadam-defaults": {"alpha": 1e-3},
  "nadam-eps_root": _EPS_ROOT,
  "amsgrad-defaults": {"alpha": 1e-3},
  "amsgrad-eps_root": _EPS_ROOT,
  "adamax-defaults": {"alpha": 2e-3},
  "adamax-fast": {"alpha": 1e-2, "b1": 0.5, "b2": 0.9, "eps": 1e-6},
}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("case", sorted(VARIANT_SETTINGS))
def test_variant_matches_its_transcription(case: str, rng: np.random.Generator) -> None:
  name = case.split("-")[0]
  ours_fn, oracle = VARIANTS[name]
  hp = VARIANT_SETTINGS[case]
  params, grads = _problem(rng)
  ours_kwargs = {("learning_rate" if k == "alpha" else k): v for k, v in hp.items()}
  ours = _trajectory(ours_fn(**ours_kwargs), params, grads)

  errors = _errors(ours, lambda leaf: oracle(params[leaf], grads[leaf], **hp))
  print(f"\n{case:18s} vs NumPy {errors}")
  assert max(errors.values()) <= RTOL


@pytest.mark.usefixtures("x64")
def test_oracle_detects_a_wrong_optimizer(rng: np.random.Generator) -> None:
  """The comparison has teeth: Adam without bias correction is far from Algorithm 1."""
  params, grads = _problem(rng)
  ours = _trajectory(
    optax.chain(ao.scale_by_moments(), ao.normalize(), ao.scale_by_lr(1e-3)), params, grads
  )
  errors = _errors(ours, lambda name: oracles.adam(params[name], grads[name]))
  assert errors["params"] > 1e-4


def test_ulp_distance_counts_the_floats_in_between() -> None:
  """The parity measure: adjacent floats are 1 apart, across zero too."""
  one = np.float32(1.0)
  tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
  a = np.array([one, one, -one, 0.0, -0.0, tiny, np.float32(2.0)], np.float32)
  b = np.array(
    [one, np.nextafter(one, 2 * one), np.nextafter(-one, 0 * one), -0.0, tiny, -tiny, one],
    np.float32,
  )
  np.testing.assert_array_equal(oracles.ulp_distance(a, b), [0, 1, 1, 0, 1, 2, 2**23])


def test_relative_error_measures() -> None:
  expected = np.array([2.0, -4.0, 0.0])
  actual = np.array([2.0 + 2e-12, -4.0, 0.0])
  assert oracles.relative_error(actual, expected) == pytest.approx(1e-12)
  assert oracles.relative_error(actual, expected, elementwise=False) == pytest.approx(5e-13)
  assert oracles.relative_error(np.array([1.0]), np.array([0.0])) == np.inf
