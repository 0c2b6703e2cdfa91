"""Checkpoints across device counts, run by tests/test_checkpoint.py in a process of 8 CPU devices.

``JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 python
tests/restore_checks.py DIR``: DIR holds ``one/<kind>``, checkpoints
that the test saved with one device (``kind`` of ``OPTIMIZERS``), and the
arrays they hold (``one/<kind>.npz``, as :func:`stored_bytes` writes them).
This process

* restores each into :func:`jax.eval_shape` targets three ways: unsharded
  (every leaf on the default device), unsharded under ``jax.set_mesh`` (every
  leaf replicated over the mesh), and with the params sharded over the mesh's
  ``d`` axis (the state follows them, as ``tx.init`` gives it);
* saves its own checkpoint of each, ``eight/<kind>``, from params with a leaf
  sharded ``P("d")`` over 8 devices, and the arrays it holds, ``eight/<kind>.npz``;
* restores ``one/float32`` into 8-bit moments sharded with the params: refused
  without ``lossy=True`` (the message is printed), and with it the same bytes
  as :func:`adam_optax.convert_state` of the float32 state restored here.

Prints one JSON object: per check, whether every leaf was bit for bit the
saved one, and where the leaves landed.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from matrix import LEARNING_RATE, STORAGES, ours, storage_kwargs

import adam_optax as ao
from adam_optax import quantized
from adam_optax.checkpoint import restore_checkpoint, save_checkpoint

#: ``ao.adam`` with its moments in each storage of the matrix (tests/matrix.py).
OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
  storage: functools.partial(ours, "adam", LEARNING_RATE, **storage_kwargs(storage))
  for storage in STORAGES
}
# "w" has 8,192 entries (a quantized moment; 64 rows split over 8 devices), "b" 8.
SHAPES = {"w": (64, 128), "b": (8,)}


def params() -> dict[str, jax.Array]:
  keys = jax.random.split(jax.random.key(0), len(SHAPES))
  return {n: jax.random.normal(k, s) for k, (n, s) in zip(keys, SHAPES.items(), strict=True)}


def trained(tx: optax.GradientTransformation, start: dict[str, jax.Array]) -> dict[str, Any]:
  """``{"params", "opt_state"}`` after 2 steps: moments that are not zeros."""
  state = tx.init(start)
  for step in range(2):
    grads = jax.tree.map(lambda p, s=step: jnp.cos(p + s), start)
    updates, state = tx.update(grads, state, start)
    start = optax.apply_updates(start, updates)
  return {"params": start, "opt_state": state}


def stored_bytes(tree: Any) -> dict[str, np.ndarray]:
  """Every array of ``tree`` (quantized moments as codes and scales) as raw bytes, by path."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {
    jax.tree_util.keystr(path): np.frombuffer(np.asarray(leaf).tobytes(), np.uint8)
    for path, leaf in flat
  }


def equal_bytes(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
  """Whether two :func:`stored_bytes` hold the same arrays, bit for bit."""
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def same_bytes(tree: Any, npz: pathlib.Path) -> bool:
  """Whether ``tree`` holds, bit for bit, the arrays saved in ``npz``."""
  return equal_bytes(stored_bytes(tree), dict(np.load(npz)))


def placement(tree: Any) -> list[str]:
  """Where the arrays of ``tree`` are: a device, or the mesh axis their first dimension spans."""
  places = set()
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf.sharding, NamedSharding):
      places.add(str(next(iter(leaf.sharding.spec), None) or "replicated"))
    else:
      places.add(str(leaf.device))
  return sorted(places)


def main() -> None:
  out = pathlib.Path(sys.argv[1])
  assert jax.device_count() == 8, jax.devices()
  mesh = jax.make_mesh((8,), ("d",))
  results: dict[str, Any] = {"devices": jax.device_count()}
  for kind, make_tx in OPTIMIZERS.items():
    tx, start = make_tx(), params()
    abstract = jax.eval_shape(lambda: {"params": start, "opt_state": tx.init(start)})  # noqa: B023
    restored = restore_checkpoint(out / "one" / kind, abstract)
    results[f"{kind}/unsharded"] = [same_bytes(restored, out / "one" / f"{kind}.npz")]
    results[f"{kind}/unsharded"].append(placement(restored))
    with jax.set_mesh(mesh):
      restored = restore_checkpoint(out / "one" / kind, abstract)
      results[f"{kind}/on_mesh"] = [same_bytes(restored, out / "one" / f"{kind}.npz")]
      results[f"{kind}/on_mesh"].append(placement(restored))
    # The layout: params sharded by rows, the state as tx.init gives it.
    sharded = {**start, "w": jax.device_put(start["w"], NamedSharding(mesh, P("d")))}
    abstract = jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p)}, sharded)  # noqa: B023
    restored = restore_checkpoint(out / "one" / kind, abstract)
    mu = optax.tree_utils.tree_get(restored["opt_state"], "mu")["w"]
    results[f"{kind}/sharded"] = [same_bytes(restored, out / "one" / f"{kind}.npz")]
    results[f"{kind}/sharded"].append(placement([restored["params"]["w"], mu]))
    results[f"{kind}/sharded_mu_quantized"] = quantized.is_quantized(mu)

    saved = trained(tx, sharded)
    save_checkpoint(out / "eight" / kind, saved)
    np.savez(out / "eight" / f"{kind}.npz", **stored_bytes(saved))
  # Across topologies and formats at once, into narrower storage: the float32
  # checkpoint of one device into 8-bit moments sharded with the params. Refused
  # without lossy=True, naming the first rounded moment; with it, what converting
  # the float32 state restored on the mesh gives, where that puts it.
  narrow = OPTIMIZERS["8bit"]()
  target = jax.eval_shape(lambda p: {"params": p, "opt_state": narrow.init(p)}, sharded)
  try:
    restore_checkpoint(out / "one" / "float32", target)
    results["float32->8bit/refused"] = None
  except ValueError as error:
    results["float32->8bit/refused"] = str(error)
  restored = restore_checkpoint(out / "one" / "float32", target, lossy=True)
  wide = OPTIMIZERS["float32"]()
  as_saved = restore_checkpoint(
    out / "one" / "float32",
    jax.eval_shape(lambda p: {"params": p, "opt_state": wide.init(p)}, sharded),
  )
  converted = ao.convert_state(as_saved, target, lossy=True)
  mu = optax.tree_utils.tree_get(restored["opt_state"], "mu")["w"]
  results["float32->8bit/lossy"] = [
    equal_bytes(stored_bytes(restored), stored_bytes(converted)),
    quantized.is_quantized(mu),
    placement([restored["params"]["w"], mu]),
  ]
  print(json.dumps(results))


if __name__ == "__main__":
  main()
