"""A smoke test that also runs on the minimum versions pyproject.toml declares.

``.ci/run`` runs this file in a second virtual environment with exactly the
declared lower bounds of jax, jaxlib, optax, chex and numpy installed (see
``.ci/min-versions``), without the other test dependencies: it imports
nothing but those, pytest, the package and tests/matrix.py (which imports
nothing more), and needs no conftest fixture. In the main suite it runs on
the current versions like any other test.
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from matrix import NAMES, OPTIMIZERS

import adam_optax as ao
from adam_optax.flat import flat_train_step, flatten_params

pytestmark = pytest.mark.min_versions

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 20


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.5, 1.0, 4)}


def _loss(params):
  return jnp.sum(jnp.sin(params["w"] @ params["b"])) + jnp.sum(params["b"] ** 2)


def _train(tx, params):
  """STEPS jitted steps of ``tx`` on ``_loss``; the params after them."""

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(STEPS):
    params, state = step(params, state)
  return params


@pytest.mark.parametrize("diagnostics", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_optimizer_steps_like_optax(name, diagnostics):
  ours, theirs = OPTIMIZERS[name]
  got = _train(ours(1e-2, diagnostics=diagnostics), _params())
  want = _train(theirs(1e-2), _params())
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_flat_train_step_steps_like_the_tree():
  tx = ao.adam(1e-2)
  step = flat_train_step(_loss, tx)
  flat = flatten_params(_params())
  state = tx.init(flat)
  for _ in range(STEPS):
    flat, state, _ = step(flat, state)
  want = _train(tx, _params())
  for a, b in zip(jax.tree.leaves(flat.tree()), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_getting_started_states_the_declared_minimum_versions():
  tomllib = pytest.importorskip("tomllib")
  dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
  bounds = dict(re.fullmatch(r"([\w.-]+)>=([\w.]+)", d).groups() for d in dependencies)
  assert set(bounds) == {"jax", "optax", "chex", "numpy"}
  page = " ".join((ROOT / "docs" / "getting_started.md").read_text().split())
  stated = "JAX {jax}, optax {optax}, chex {chex} and NumPy {numpy} or newer".format(**bounds)
  assert stated in page


def test_diagnostics_read_from_the_state():
  tx = ao.adam(1e-2, diagnostics=True)
  params = _params()
  _, state = jax.jit(tx.update)(jax.grad(_loss)(params), tx.init(params), params)
  readings = jax.jit(ao.diagnostics)(state)
  assert float(readings["step_max"]) == pytest.approx(1e-2, rel=1e-4)  # alpha sign(g) at t = 1
