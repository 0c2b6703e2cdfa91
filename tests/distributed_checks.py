"""Multi-process checks, run by tests/test_distributed.py: one scenario per command.

``python tests/distributed_checks.py SCENARIO OUT``, where SCENARIO is

* ``train``, in the 2 processes of :func:`adam_optax.distributed.launch` with 4
  CPU devices each: data-parallel training on an 8-device mesh spanning both,
  plain and ZeRO-1, for every optimizer of ``OPTIMIZERS``; checkpoints saved
  halfway (float32 and 8-bit states), Adam's restored into the same layout
  (and training resumed) and into another mesh layout. Process 0 writes
  ``OUT/train.json`` and the gathered arrays to ``OUT/train.npz``.
* ``single``, in one process of one device: the same training on the same
  global batches, compared with ``OUT/train.npz`` in ulp, and the 2-process
  checkpoints restored (into arrays and into :func:`jax.eval_shape` targets)
  and resumed. Prints one JSON object.
* ``die_in_save``, in 2 processes: process 1 is killed once its save is under
  way; process 0 must then end on an error within the heartbeat timeout.
* ``raise_in_training``, in 2 processes: process 0 raises between two steps;
  both must end within the shutdown timeout.
* ``unreachable``, in a lone process of a 2-process run (no coordinator, no
  peer, or a port it cannot listen on): prints when it joins, then fails.

Every scenario joins the run through :func:`adam_optax.distributed.initialize`
with the timeouts of ``TIMEOUTS``; every process builds the same global
batches and feeds only its own rows.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import oracles
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from matrix import ours, storage_kwargs

from adam_optax import distributed
from adam_optax.checkpoint import restore_checkpoint, save_checkpoint
from adam_optax.sharding import zero1_shardings

TIMEOUTS = {"initialization_timeout": 30, "heartbeat_timeout": 5, "shutdown_timeout": 5}
UNREACHABLE_TIMEOUT = 3
STEPS, SAVED_AT = 10, 5
BATCH = 64  # global rows per step, split over the 8 devices
#: The optimizers of tests/matrix.py that the processes train, by the name their results carry.
OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
  "adam": functools.partial(ours, "adam", 1e-2),
  "adamw": functools.partial(ours, "adamw", 1e-2, weight_decay=1e-2),
  "adam_8bit": functools.partial(ours, "adam", 1e-2, **storage_kwargs("8bit")),
}
# The optimizers whose ZeRO-1 state is saved halfway, each in OUT/ckpt_<name>.
SAVED = ("adam", "adam_8bit")
# w1 has 8,192 params: large enough for a quantized moment (min_size 4,096).
SHAPES = {"w1": (128, 64), "b1": (64,), "w2": (64, 8), "b2": (8,)}


def init_params() -> dict[str, jax.Array]:
  keys = jax.random.split(jax.random.key(0), len(SHAPES))
  return {
    name: jax.random.normal(key, shape) / np.sqrt(shape[0])
    for key, (name, shape) in zip(keys, SHAPES.items(), strict=True)
  }


def global_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
  """The same rows in every process, so that each can take its own part."""
  kx, ky = jax.random.split(jax.random.key(100 + step))
  x = jax.random.normal(kx, (BATCH, SHAPES["w1"][0]))
  return np.asarray(x), np.asarray(jax.random.normal(ky, (BATCH, SHAPES["w2"][1])))


def loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((hidden @ params["w2"] + params["b2"] - y) ** 2)


def make_step(tx: optax.GradientTransformation, layout: dict[str, Any] | None = None) -> Callable:
  """One jitted step; a ZeRO-1 ``layout`` pins the gradient and the results."""

  def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> Any:
    grads = jax.grad(loss)(params, x, y)
    if layout is not None:
      grads = jax.sharding.reshard(grads, layout["grads"])  # each device: its slice
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, out_shardings=None if layout is None else layout["out"])


def train(step: Callable, params: Any, state: Any, steps: range, rows: Any) -> Any:
  """Runs ``step`` on the global batches of ``steps``; this process feeds its part of them.

  ``rows`` is the batch's sharding, or ``None`` in a single process.
  """
  count, index = jax.process_count(), jax.process_index()
  mine = slice(index * BATCH // count, (index + 1) * BATCH // count)
  for t in steps:
    x, y = (part[mine] for part in global_batch(t))
    if rows is not None:
      x, y = (jax.make_array_from_process_local_data(rows, a) for a in (x, y))
    params, state = step(params, state, x, y)
  return params, state


def flat(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
  """The tree's leaves gathered into host arrays, keyed by ``prefix`` and their path."""
  gathered = multihost_utils.process_allgather(tree, tiled=True)
  leaves, _ = jax.tree_util.tree_flatten_with_path(gathered)
  return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def part(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """The arrays that ``flat(tree, prefix)`` wrote, keyed by their path again."""
  return {key[len(prefix) :]: value for key, value in arrays.items() if key.startswith(prefix)}


def _distances(a: dict[str, np.ndarray], b: dict[str, np.ndarray], within: str) -> Iterator:
  """Per leaf (whose path starts with ``within``): the float32 arrays, or integer code steps."""
  assert a.keys() == b.keys(), (sorted(a), sorted(b))
  for key in (k for k in a if k.startswith(within)):
    if np.issubdtype(a[key].dtype, np.floating):
      yield a[key], b[key]
    elif a[key].dtype.kind == "V":  # bfloat16 (a quantized first moment's scales), saved raw
      x, y = (v.view(np.uint16).astype(np.int64) for v in (a[key], b[key]))
      yield None, np.abs(x - y)  # positive scales: steps of the bit pattern are ulp
    else:  # the codes of a quantized moment
      yield None, np.abs(a[key].astype(np.int64) - b[key].astype(np.int64))


def max_ulp(a: dict[str, np.ndarray], b: dict[str, np.ndarray], within: str = "") -> int:
  """The largest elementwise distance between two trees: 0 when they are bit-identical.

  In ulp for float32 leaves, in code steps for integer ones (quantized moments).
  """
  return max(
    [
      int(np.max(oracles.ulp_distance(x, y) if x is not None else y, initial=0))
      for x, y in _distances(a, b, within)
    ],
    default=0,
  )


def scaled_ulp(a: dict[str, np.ndarray], b: dict[str, np.ndarray], within: str = "") -> float:
  """The largest ``max|a - b|`` per leaf in ulp of the leaf's largest entry ``max|b|``.

  Elementwise ulp blow up where a value is near 0 (a float32 ulp there is
  tiny), and Adam moves such coordinates by a full step; this measure is
  the rounding error of the leaf as a whole. Integer leaves: in code steps.
  """
  return max(
    [
      float(np.max(np.abs(x - y)) / np.spacing(np.max(np.abs(y))))
      if x is not None
      else float(np.max(y, initial=0))
      for x, y in _distances(a, b, within)
    ],
    default=0.0,
  )


def moment_bytes(state: Any) -> dict[str, int]:
  """Bytes of mu and nu: in all, on this process's devices, on its first device."""
  leaves = jax.tree.leaves([optax.tree_utils.tree_get(state, n) for n in ("mu", "nu")])
  first = jax.local_devices()[0]
  shards = [shard for leaf in leaves for shard in leaf.addressable_shards]
  return {
    "total": sum(leaf.nbytes for leaf in leaves),
    "process": sum(shard.data.nbytes for shard in shards),
    "device": sum(shard.data.nbytes for shard in shards if shard.device == first),
  }


def zero1_layout(tx: optax.GradientTransformation, params: Any, mesh: Any) -> dict[str, Any]:
  """ZeRO-1 on ``mesh``: params (arrays or abstract) as laid out, the state split over 'data'."""
  state_shardings = zero1_shardings(jax.eval_shape(tx.init, params), mesh)
  return {
    # Each device takes the slice of the gradient its moments' slice needs. The split
    # of a params-shaped tree (a quantized mu holds codes and scales, not that shape).
    "grads": zero1_shardings(jax.eval_shape(lambda p: p, params), mesh),
    "out": (jax.tree.map(lambda p: p.sharding, params), state_shardings),
  }


def restore_target(tx: optax.GradientTransformation, params: Any, layout: Any) -> dict[str, Any]:
  """What a fresh run restores into: shapes, dtypes and the layout's shardings, no arrays."""
  shapes = jax.eval_shape(lambda p: (p, tx.init(p)), params)
  structs = jax.tree.map(
    lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
    shapes,
    layout["out"],
  )
  return {"params": structs[0], "opt_state": structs[1]}


def checkpoint_checks(
  out: pathlib.Path, step: Callable, layout: dict[str, Any], halfway: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Adam under ZeRO-1, saved halfway by both processes, restored in two layouts."""
  tx, rows = OPTIMIZERS["adam"](), NamedSharding(layout["grads"]["w1"].mesh, P("data"))
  saved = flat(halfway)
  restored = restore_checkpoint(out / "ckpt_adam", restore_target(tx, halfway[0], layout))
  resumed = train(step, restored["params"], restored["opt_state"], range(SAVED_AT, STEPS), rows)
  results = {
    "restored/same_layout_ulp": max_ulp(flat((restored["params"], restored["opt_state"])), saved)
  }

  # The same checkpoint on a (2, 4) mesh: each process holds one half of each
  # moment (replicated over its 4 devices) instead of four eighths.
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  with jax.set_mesh(mesh):
    params = jax.tree.map(
      lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=NamedSharding(mesh, P())),
      halfway[0],
    )
    other = zero1_layout(tx, params, mesh)
    again = restore_checkpoint(out / "ckpt_adam", restore_target(tx, params, other))
    results["restored/other_layout_ulp"] = max_ulp(
      flat((again["params"], again["opt_state"])), saved
    )
    mu = again["opt_state"][0].mu["w1"]
    results["restored/other_layout_w1_mu"] = [
      str(mu.sharding.spec),
      mu.addressable_shards[0].data.shape,
    ]
    other_run = train(
      make_step(tx, other),
      again["params"],
      again["opt_state"],
      range(SAVED_AT, STEPS),
      NamedSharding(mesh, P("data")),
    )
  return results, {"resumed": resumed, "other_layout": other_run}


def train_scenario(out: pathlib.Path) -> None:
  """Plain data parallel and ZeRO-1 on 8 devices of 2 processes, then the checkpoint."""
  mesh = jax.make_mesh((8,), ("data",))
  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  results: dict[str, Any] = {"devices": jax.device_count(), "processes": jax.process_count()}
  arrays: dict[str, np.ndarray] = {}
  with jax.set_mesh(mesh):
    params = jax.device_put(init_params(), replicated)
    for name, make_tx in OPTIMIZERS.items():
      tx = make_tx()
      state = jax.jit(tx.init, out_shardings=replicated)(params)
      plain = train(make_step(tx), params, state, range(STEPS), rows)
      results[f"{name}/bytes/plain"] = moment_bytes(plain[1])

      layout = zero1_layout(tx, params, mesh)
      step = make_step(tx, layout)
      state = jax.jit(tx.init, out_shardings=layout["out"][1])(params)
      halfway = train(step, params, state, range(SAVED_AT), rows)
      if name in SAVED:
        save_checkpoint(out / f"ckpt_{name}", {"params": halfway[0], "opt_state": halfway[1]})
        arrays |= flat(halfway, f"{name}/saved")
      zero1 = train(step, *halfway, range(SAVED_AT, STEPS), rows)
      results[f"{name}/bytes/zero1"] = moment_bytes(zero1[1])
      results[f"{name}/zero1_vs_plain_ulp"] = max_ulp(flat(zero1), flat(plain))
      arrays |= flat(plain, f"{name}/plain") | flat(zero1, f"{name}/zero1")
      if name == "adam":
        checks, runs = checkpoint_checks(out, step, layout, halfway)
        results |= checks
        results["resumed/same_layout_ulp"] = max_ulp(flat(runs["resumed"]), flat(zero1))
        results["resumed/other_layout_scaled_ulp"] = scaled_ulp(
          flat(runs["other_layout"]), flat(zero1)
        )
  if jax.process_index() == 0:
    np.savez(out / "train.npz", **arrays)
    (out / "train.json").write_text(json.dumps(results))


def single_scenario(out: pathlib.Path) -> None:
  """One process, one device, the same global batches: the reference for ``train``."""
  arrays = dict(np.load(out / "train.npz"))
  results: dict[str, Any] = {}
  params = init_params()
  for name, make_tx in OPTIMIZERS.items():
    tx = make_tx()
    single = flat(train(make_step(tx), params, tx.init(params), range(STEPS), None))
    for mode in ("plain", "zero1"):
      run = part(arrays, f"{name}/{mode}")
      results[f"{name}/{mode}_vs_single/params_ulp"] = max_ulp(run, single, "[0]")
      results[f"{name}/{mode}_vs_single/params_scaled_ulp"] = scaled_ulp(run, single, "[0]")
      results[f"{name}/{mode}_vs_single/state_scaled_ulp"] = scaled_ulp(run, single, "[1]")
  # The checkpoints of 2 processes and 8 devices, into 1 process and 1 device: into
  # arrays, and into the abstract target of jax.eval_shape, which places nothing.
  for name in SAVED:
    tx = OPTIMIZERS[name]()
    abstract = jax.eval_shape(lambda: {"params": params, "opt_state": tx.init(params)})  # noqa: B023
    restored = restore_checkpoint(out / f"ckpt_{name}", abstract)
    pair = (restored["params"], restored["opt_state"])
    results[f"restored/{name}/eval_shape_ulp"] = max_ulp(flat(pair), part(arrays, f"{name}/saved"))
    results[f"restored/{name}/eval_shape_devices"] = sorted(
      {str(leaf.device) for leaf in jax.tree.leaves(pair)}
    )
  tx = OPTIMIZERS["adam"]()
  target = {"params": params, "opt_state": tx.init(params)}
  restored = restore_checkpoint(out / "ckpt_adam", target)
  pair = (restored["params"], restored["opt_state"])
  results["restored/one_process_ulp"] = max_ulp(flat(pair), part(arrays, "adam/saved"))
  resumed = flat(train(make_step(tx), *pair, range(SAVED_AT, STEPS), None))
  results["resumed/one_process_scaled_ulp"] = scaled_ulp(resumed, part(arrays, "adam/zero1"))
  print(json.dumps(results))


def die_in_save_scenario(out: pathlib.Path) -> None:
  """Process 1 is killed once the save is under way; process 0 must not hang or commit."""
  mesh = jax.make_mesh((8,), ("data",))
  with jax.set_mesh(mesh):
    params = jax.device_put(init_params(), NamedSharding(mesh, P()))
    tx = OPTIMIZERS["adam"]()
    state = jax.jit(tx.init, out_shardings=zero1_layout(tx, params, mesh)["out"][1])(params)
    tree = {"params": params, "opt_state": state}
    if jax.process_index() == 0:
      save_checkpoint(out / "ckpt", tree)
      print("the save returned", flush=True)
    else:
      # orbax's save returns once the write is under way; it commits later.
      ocp.StandardCheckpointer().save((out / "ckpt").resolve(), tree)
      print(f"killed at {time.time()}", flush=True)
      os.kill(os.getpid(), signal.SIGKILL)


def raise_in_training_scenario(out: pathlib.Path) -> None:
  """Process 0 (the coordinator) raises between steps; process 1 goes on into a collective."""
  del out
  mesh = jax.make_mesh((8,), ("data",))
  with jax.set_mesh(mesh):
    tx = OPTIMIZERS["adam"]()
    params = jax.device_put(init_params(), NamedSharding(mesh, P()))
    state = jax.jit(tx.init, out_shardings=NamedSharding(mesh, P()))(params)
    step, rows = make_step(tx), NamedSharding(mesh, P("data"))
    params, state = train(step, params, state, range(2), rows)
    if jax.process_index() == 0:
      print(f"raised at {time.time()}", flush=True)
      raise RuntimeError("a bug in process 0")
    train(step, params, state, range(2, 4), rows)
  print("process 1 trained on", flush=True)


def main() -> None:
  scenario, out = sys.argv[1], pathlib.Path(sys.argv[2])
  if scenario == "single":
    single_scenario(out)
    return
  if scenario == "unreachable":
    print(f"joining at {time.time()}", flush=True)
    distributed.initialize(initialization_timeout=UNREACHABLE_TIMEOUT)
    return
  distributed.initialize(**TIMEOUTS)
  assert jax.device_count() == 8, jax.devices()
  scenarios = {
    "train": train_scenario,
    "die_in_save": die_in_save_scenario,
    "raise_in_training": raise_in_training_scenario,
  }
  scenarios[scenario](out)


if __name__ == "__main__":
  main()
