"""A smoke test that also runs on the minimum versions pyproject.toml declares.

``.ci/run`` runs this file in a second virtual environment with exactly the
declared lower bounds of jax, jaxlib, optax, chex, numpy and of the
``checkpoint`` extra (orbax-checkpoint) installed (see ``.ci/min-versions``),
without the other test dependencies: it imports nothing but those, pytest, the
package and tests/matrix.py (which imports nothing more), and needs no
conftest fixture. It steps every optimizer, every
storage format (float32, bfloat16, 8-bit, 4-bit), the diagnostics reader, a
checkpoint and the fast path. In the main suite it runs on the current
versions like any other test.
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
# Quantized leaves of both layouts: rows of whole blocks, and equal blocks with padding.
STORAGE = {
  "float32": jnp.float32,
  "bfloat16": jnp.bfloat16,
  "8bit": ao.Quantized(8, min_size=64),
  "4bit": ao.Quantized(4, min_size=64),
}
# Of the 0.2 that STEPS steps of lr 1e-2 move a param, the rounding of the moments
# moves it by at most (measured: 0.0012 in bfloat16, 0.0094 at 8 bits, 0.081 at 4).
TOLERANCE = {"float32": 0.0, "bfloat16": 0.005, "8bit": 0.02, "4bit": 0.12}


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.5, 1.0, 4)}


def _loss(params):
  return jnp.sum(jnp.sin(params["w"] @ params["b"])) + jnp.sum(params["b"] ** 2)


def _big_params():
  """A leaf of whole rows (2 x 256) and one of 300 elements (padded blocks)."""
  return {"w": jnp.linspace(-1.0, 1.0, 512).reshape(2, 256), "v": jnp.linspace(0.5, 1.0, 300)}


def _big_loss(params):
  """Gradients of unlike scales within each block, never near 0 (so Adam's step is well defined)."""
  scales = jnp.logspace(-2, 0, 256)
  return jnp.sum(jnp.exp(params["w"]) * scales) + jnp.sum((1.0 + params["v"]) * params["v"] ** 2)


def _train(tx, params, loss=_loss):
  """STEPS jitted steps of ``tx`` on ``loss``; the params and state after them."""

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(STEPS):
    params, state = step(params, state)
  return params, state


@pytest.mark.parametrize("diagnostics", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_optimizer_steps_like_optax(name, diagnostics):
  ours, theirs = OPTIMIZERS[name]
  got, _ = _train(ours(1e-2, diagnostics=diagnostics), _params())
  want, _ = _train(theirs(1e-2), _params())
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:b2=0.999 cannot move")  # bfloat16's v, as documented
@pytest.mark.parametrize("storage", STORAGE, ids=STORAGE)
def test_every_storage_format_steps_like_float32(storage):
  fmt = STORAGE[storage]
  got, state = _train(ao.adam(1e-2, mu_dtype=fmt, nu_dtype=fmt), _big_params(), _big_loss)
  want, _ = _train(ao.adam(1e-2), _big_params(), _big_loss)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, atol=TOLERANCE[storage])
  nu = ao.dequantize(optax.tree_utils.tree_get(state, "nu"))
  assert all(bool(jnp.all(x > 0)) for x in jax.tree.leaves(nu))


def test_fast_path_stores_what_the_tree_path_stores():
  fmt = ao.Quantized(8, min_size=64)
  tx = ao.adam(1e-2, mu_dtype=fmt, nu_dtype=fmt)
  step = flat_train_step(_big_loss, tx)
  flat = flatten_params(_big_params())
  state = tx.init(flat)
  for _ in range(STEPS):
    flat, state, _ = step(flat, state)
  _, tree_state = _train(tx, _big_params(), _big_loss)
  flat_mu = ao.dequantize(optax.tree_utils.tree_get(state, "mu")).tree()
  tree_mu = ao.dequantize(optax.tree_utils.tree_get(tree_state, "mu"))
  for a, b in zip(jax.tree.leaves(flat_mu), jax.tree.leaves(tree_mu), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_flat_train_step_steps_like_the_tree():
  tx = ao.adam(1e-2)
  step = flat_train_step(_loss, tx)
  flat = flatten_params(_params())
  state = tx.init(flat)
  for _ in range(STEPS):
    flat, state, _ = step(flat, state)
  want, _ = _train(tx, _params())
  for a, b in zip(jax.tree.leaves(flat.tree()), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_getting_started_states_the_declared_minimum_versions():
  tomllib = pytest.importorskip("tomllib")
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  dependencies = project["dependencies"]
  bounds = dict(re.fullmatch(r"([\w.-]+)>=([\w.]+)", d).groups() for d in dependencies)
  assert set(bounds) == {"jax", "optax", "chex", "numpy", "lazy_loader"}
  (checkpoint,) = project["optional-dependencies"]["checkpoint"]
  bounds["orbax"] = re.fullmatch(r"orbax-checkpoint>=([\w.]+)", checkpoint).group(1)
  page = " ".join((ROOT / "docs" / "getting_started.md").read_text().split())
  stated = (
    "JAX {jax}, optax {optax}, chex {chex}, NumPy {numpy} and lazy_loader {lazy_loader} or newer"
  ).format(**bounds)
  assert stated in page
  assert "orbax-checkpoint {orbax} or newer".format(**bounds) in page


def test_diagnostics_read_from_the_state():
  tx = ao.adam(1e-2, diagnostics=True)
  params = _params()
  _, state = jax.jit(tx.update)(jax.grad(_loss)(params), tx.init(params), params)
  readings = jax.jit(ao.diagnostics)(state)
  assert float(readings["step_max"]) == pytest.approx(1e-2, rel=1e-4)  # alpha sign(g) at t = 1


@pytest.mark.parametrize("storage", ["8bit", "4bit"])
def test_low_bit_checkpoint_round_trip_and_reading_without_a_target(tmp_path, storage):
  ocp = pytest.importorskip("orbax.checkpoint")
  from adam_optax.checkpoint import restore_checkpoint, save_checkpoint

  fmt = STORAGE[storage]
  tx = ao.amsgrad(1e-2, mu_dtype=fmt, nu_dtype=fmt, diagnostics=True)
  _, state = _train(tx, _big_params(), _big_loss)
  save_checkpoint(tmp_path / "ckpt", state)
  restored = restore_checkpoint(tmp_path / "ckpt", tx.init(_big_params()))
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  untargeted = ocp.StandardCheckpointer().restore(tmp_path / "ckpt")
  expected, got = jax.jit(ao.diagnostics)(state), jax.jit(ao.diagnostics)(untargeted)
  for key, value in expected.items():
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)
