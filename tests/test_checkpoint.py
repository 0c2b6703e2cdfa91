"""Optimizer states through orbax-checkpoint: exact, resumable, and never mixed up."""

from __future__ import annotations

import hashlib
import pathlib
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from matrix import NAMES, WITH_STORAGE, ours
from training import assert_trees_equal, train

import adam_optax as ao
from adam_optax.checkpoint import restore_checkpoint, save_checkpoint


def _params(width: int = 4, bias_dtype: jnp.dtype = jnp.bfloat16) -> dict[str, jax.Array]:
  kw, kb = jax.random.split(jax.random.key(0))
  return {
    "w": jax.random.normal(kw, (3, width)),
    "b": jax.random.normal(kb, (width,)).astype(bias_dtype),
  }


def _grads(steps: int, bias_dtype: jnp.dtype = jnp.bfloat16) -> dict[str, jax.Array]:
  kw, kb = jax.random.split(jax.random.key(1))
  return {
    "w": jax.random.normal(kw, (steps, 3, 4)),
    "b": jax.random.normal(kb, (steps, 4)).astype(bias_dtype),
  }


def _snapshot(directory: pathlib.Path) -> dict[str, str]:
  """Every file under ``directory`` with a hash of its bytes."""
  return {
    str(f.relative_to(directory)): hashlib.sha256(f.read_bytes()).hexdigest()
    for f in sorted(directory.rglob("*"))
    if f.is_file()
  }


def _diagnosed(name: str) -> Callable[[], optax.GradientTransformation]:
  """The optimizer with diagnostics on; where it takes one, a float32 second moment."""
  storage = {"nu_dtype": jnp.float32} if name in WITH_STORAGE else {}
  return lambda: ours(name, 1e-2, **storage, diagnostics=True)


ROUND_TRIPS = {  # (optimizer, dtype of the bias)
  # Every optimizer of the matrix, with bfloat16 biases beside a float32 second
  # moment where it takes nu_dtype: dtypes must survive the round trip.
  **{
    name: (_diagnosed(name), jnp.bfloat16 if name in WITH_STORAGE else jnp.float32)
    for name in NAMES
  },
  # NamedTuple states nested three deep, a dict of hyper-parameters, flags.
  # (float32 only: optax.inject_hyperparams gives bfloat16 leaves of a mixed
  # tree float32 updates, which optax.apply_if_finite refuses.)
  "wrapped_adamw": (
    lambda: optax.apply_if_finite(optax.inject_hyperparams(ao.adamw)(learning_rate=1e-2), 3),
    jnp.float32,
  ),
}


@pytest.mark.parametrize(("make_tx", "bias_dtype"), ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_round_trip_is_exact_and_the_state_stays_usable(
  make_tx: Any, bias_dtype: jnp.dtype, tmp_path: pathlib.Path
) -> None:
  tx = make_tx()
  params = _params(bias_dtype=bias_dtype)
  params, state = train(tx, params, tx.init(params), _grads(3, bias_dtype))
  save_checkpoint(tmp_path / "ckpt", {"params": params, "opt_state": state})

  fresh = _params(bias_dtype=bias_dtype)
  restored = restore_checkpoint(tmp_path / "ckpt", {"params": fresh, "opt_state": tx.init(fresh)})
  assert_trees_equal(restored, {"params": params, "opt_state": state})
  g = jax.tree.map(lambda x: x[0], _grads(1, bias_dtype))
  assert_trees_equal(
    tx.update(g, restored["opt_state"], restored["params"]), tx.update(g, state, params)
  )


def test_resumed_training_is_bit_identical_to_uninterrupted(tmp_path: pathlib.Path) -> None:
  tx = ao.adam(1e-2, nu_dtype=jnp.float32)
  grads = _grads(10)
  first, second = (jax.tree.map(lambda x, s=s: x[s], grads) for s in (slice(0, 6), slice(6, 10)))
  params = _params()
  uninterrupted = train(tx, params, tx.init(params), grads)

  halfway = train(tx, params, tx.init(params), first)
  save_checkpoint(tmp_path / "step_6", {"params": halfway[0], "opt_state": halfway[1]})
  # A new process would build its target from scratch, as here.
  target = {"params": _params(), "opt_state": tx.init(_params())}
  restored = restore_checkpoint(tmp_path / "step_6", target)
  resumed = train(tx, restored["params"], restored["opt_state"], second)
  assert_trees_equal(resumed, uninterrupted)


MISMATCHES = {
  "another_optimizer": (
    lambda p: ao.amsgrad(1e-2, nu_dtype=jnp.float32).init(p),
    _params,
    "target has a leaf at opt_state.2.nu_max.b",
  ),
  "another_model_shape": (
    lambda p: ao.adam(1e-2, nu_dtype=jnp.float32).init(p),
    lambda: _params(width=5),
    "the leaf at opt_state.0.mu.b is bfloat16[4] in the checkpoint but bfloat16[5]",
  ),
  "another_dtype": (
    lambda p: ao.adam(1e-2).init(p),  # nu stored in bfloat16, saved in float32
    _params,
    "the leaf at opt_state.0.nu.b is float32[4] in the checkpoint but bfloat16[4]",
  ),
}


@pytest.mark.filterwarnings("ignore:b2=0.999 cannot move a moment stored in bfloat16")
@pytest.mark.parametrize(
  ("make_state", "make_params", "message"), MISMATCHES.values(), ids=MISMATCHES.keys()
)
def test_a_mismatched_target_is_refused_by_name_and_nothing_is_touched(
  make_state: Any, make_params: Any, message: str, tmp_path: pathlib.Path
) -> None:
  tx = ao.adam(1e-2, nu_dtype=jnp.float32)
  params = _params()
  saved = train(tx, params, tx.init(params), _grads(2))
  save_checkpoint(tmp_path / "ckpt", {"params": saved[0], "opt_state": saved[1]})
  on_disk = _snapshot(tmp_path)

  params = make_params()
  target = {"params": params, "opt_state": make_state(params)}
  before = jax.tree.map(np.array, target)
  with pytest.raises(ValueError, match=re.escape(message)):
    restore_checkpoint(tmp_path / "ckpt", target)
  assert _snapshot(tmp_path) == on_disk
  assert_trees_equal(jax.tree.map(np.asarray, target), before)


def test_saving_over_a_checkpoint_refuses_and_keeps_it(tmp_path: pathlib.Path) -> None:
  params = _params()
  save_checkpoint(tmp_path / "ckpt", {"params": params})
  on_disk = _snapshot(tmp_path)
  with pytest.raises(ValueError, match="already exists"):
    save_checkpoint(tmp_path / "ckpt", {"params": jax.tree.map(jnp.zeros_like, params)})
  assert _snapshot(tmp_path) == on_disk


def test_a_directory_that_is_not_a_complete_checkpoint_is_refused(tmp_path: pathlib.Path) -> None:
  target = {"params": _params()}
  save_checkpoint(tmp_path / "ckpt", target)
  # What a save killed before its commit leaves: orbax's temporary directory.
  (tmp_path / "ckpt").rename(tmp_path / "ckpt.orbax-checkpoint-tmp")
  for directory in ("ckpt", "ckpt.orbax-checkpoint-tmp"):
    with pytest.raises(ValueError, match="not a complete checkpoint"):
      restore_checkpoint(tmp_path / directory, target)
