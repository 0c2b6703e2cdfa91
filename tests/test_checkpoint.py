"""Optimizer states through orbax-checkpoint: exact, resumable, and never mixed up."""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import restore_checks
from fresh_python import run_python
from matrix import NAMES, STORAGES, WITH_STORAGE, ours
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
  "another_params_dtype": (  # params are not converted: another dtype is another model
    lambda p: ao.adam(1e-2, nu_dtype=jnp.float32).init(p),
    lambda: _params(bias_dtype=jnp.float32),
    "the leaf at params.b is bfloat16[4] in the checkpoint but float32[4]",
  ),
  "amsgrad_into_adam": (  # the other way round: the running maximum would be dropped
    lambda p: ao.adam(1e-2, nu_dtype=jnp.float32).init(p),
    _params,
    "would drop opt_state.2.nu_max, which the target has no place for (pass lossy=True",
  ),
  "float32_into_bfloat16": (  # narrower storage: every first moment rounded
    lambda p: ao.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32).init(p),
    _params,
    "would round the leaf at opt_state.0.mu.w from float32[3, 4] into bfloat16[3, 4], "
    "each value by up to 2^-8 of it (half an ulp of bfloat16, in range) (pass lossy=True",
  ),
}
SAVED_BY = {"amsgrad_into_adam": lambda: ao.amsgrad(1e-2, nu_dtype=jnp.float32)}


@pytest.mark.filterwarnings("ignore:b2=0.999 cannot move a moment stored in bfloat16")
@pytest.mark.parametrize(
  ("make_state", "make_params", "message"), MISMATCHES.values(), ids=MISMATCHES.keys()
)
def test_a_mismatched_target_is_refused_by_name_and_nothing_is_touched(
  make_state: Any,
  make_params: Any,
  message: str,
  tmp_path: pathlib.Path,
  request: pytest.FixtureRequest,
) -> None:
  tx = SAVED_BY.get(request.node.callspec.id, lambda: ao.adam(1e-2, nu_dtype=jnp.float32))()
  params = _params()
  saved = train(tx, params, tx.init(params), _grads(2))
  save_checkpoint(tmp_path / "ckpt", {"params": saved[0], "opt_state": saved[1]})
  on_disk = _snapshot(tmp_path)

  params = make_params()
  target = {"params": params, "opt_state": make_state(params)}
  before = jax.tree.map(np.array, target)
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    restore_checkpoint(tmp_path / "ckpt", target)
  assert "\n" not in str(error.value)
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


def test_an_amsgrad_checkpoint_restores_into_adam_when_asked_to_drop(
  tmp_path: pathlib.Path,
) -> None:
  amsgrad, adam = ao.amsgrad(1e-2), ao.adam(1e-2)
  params = _params(bias_dtype=jnp.float32)
  state = train(amsgrad, params, amsgrad.init(params), _grads(2, jnp.float32))[1]
  save_checkpoint(tmp_path / "ckpt", state)
  restored = restore_checkpoint(tmp_path / "ckpt", adam.init(params), lossy=True)
  assert_trees_equal(restored, ao.convert_state(state, adam.init(params), lossy=True))


def test_a_truncated_file_is_one_line_naming_the_array_and_nothing_is_touched(
  tmp_path: pathlib.Path,
) -> None:
  tx = ao.adam(1e-2)
  params = {"w": jnp.arange(5000.0), "b": jnp.ones(3)}
  save_checkpoint(tmp_path / "ckpt", {"params": params, "opt_state": tx.init(params)})
  # The largest file holds the params' data: cut it in half, as a full disk would.
  data = max(
    (f for f in (tmp_path / "ckpt").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size
  )
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
  on_disk = _snapshot(tmp_path)
  target = {"params": jax.tree.map(jnp.zeros_like, params), "opt_state": tx.init(params)}
  with pytest.raises(ValueError, match=r"could not be read .* the array params.w") as error:
    restore_checkpoint(tmp_path / "ckpt", target)
  assert "\n" not in str(error.value)
  assert "nothing was restored" in str(error.value)
  assert _snapshot(tmp_path) == on_disk
  assert float(jnp.sum(target["params"]["w"])) == 0.0


@pytest.mark.filterwarnings("ignore:b2=0.999 cannot move a moment stored in bfloat16")
def test_eval_shape_targets_restore_on_any_device_count(tmp_path: pathlib.Path) -> None:
  # One device here (CPU or not) -> 8 CPU devices in a fresh process, and back.
  for kind, make_tx in restore_checks.OPTIMIZERS.items():
    saved = restore_checks.trained(make_tx(), restore_checks.params())
    save_checkpoint(tmp_path / "one" / kind, saved)
    np.savez(tmp_path / "one" / f"{kind}.npz", **restore_checks.stored_bytes(saved))
  run = run_python(["tests/restore_checks.py", str(tmp_path)], host_devices=8)
  assert run.returncode == 0, run.stderr[-4000:]
  found = json.loads(run.stdout.splitlines()[-1])
  assert found["devices"] == 8
  for kind, make_tx in restore_checks.OPTIMIZERS.items():
    # 1 -> 8: bit for bit, where each target put its leaves.
    assert found[f"{kind}/unsharded"] == [True, ["cpu:0"]], found
    assert found[f"{kind}/on_mesh"] == [True, ["replicated"]], found
    # The params' rows over the mesh, and the moments' (codes and scales) with them.
    assert found[f"{kind}/sharded"] == [True, ["d"]], found
    assert found[f"{kind}/sharded_mu_quantized"] is isinstance(STORAGES[kind], ao.Quantized)
    # 8 -> 1, into the target: jax.eval_shape of a plain init, no sharding.
    tx, params = make_tx(), restore_checks.params()
    abstract = jax.eval_shape(lambda: {"params": params, "opt_state": tx.init(params)})  # noqa: B023
    restored = restore_checkpoint(tmp_path / "eight" / kind, abstract)
    assert restore_checks.same_bytes(restored, tmp_path / "eight" / f"{kind}.npz")
    assert {leaf.device for leaf in jax.tree.leaves(restored)} == {jax.devices()[0]}
  # 8 devices, 8-bit -> 1 device, float32: across topologies and formats at once.
  tx, params = restore_checks.OPTIMIZERS["float32"](), restore_checks.params()
  target = jax.eval_shape(lambda: {"params": params, "opt_state": tx.init(params)})
  eight_bit = restore_checks.OPTIMIZERS["8bit"]()
  as_saved = restore_checkpoint(
    tmp_path / "eight" / "8bit",
    jax.eval_shape(lambda: {"params": params, "opt_state": eight_bit.init(params)}),
  )
  restored = restore_checkpoint(tmp_path / "eight" / "8bit", target)
  assert_trees_equal(restored, ao.convert_state(as_saved, target))
  # 1 device, float32 -> 8 devices, 8-bit: narrower, so only with lossy=True.
  refused = found["float32->8bit/refused"]
  assert refused.startswith(f"The checkpoint at {tmp_path / 'one' / 'float32'} does not fit")
  assert (
    "would round the leaf at opt_state.0.mu.w from float32[64, 128] into Quantized(8)" in refused
  )
  assert "(pass lossy=True to convert it)" in refused
  assert "\n" not in refused
  assert found["float32->8bit/lossy"] == [True, True, ["d"]], found
