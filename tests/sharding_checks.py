"""Sharding checks that need 8 devices, run by tests/test_sharding.py in a subprocess.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python
tests/sharding_checks.py inherit`` (or ``zero1``, the other group of checks);
prints one JSON object mapping each check to its result, which the test
asserts on. Meshes of both axis types are checked:
``Explicit`` (the default of ``jax.make_mesh``, sharding in the types) and
``Auto`` (sharding propagated by the compiler).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import matrix
import numpy as np
import optax
import oracles
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adam_optax as ao
from adam_optax.sharding import zero1_shardings

STEPS = 5
MODES = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}
#: The optimizers whose states must follow the params (AMSGrad keeps a third moment).
INHERITING = ("adam", "amsgrad")
# A tensor-parallel layout: every kind of spec, including replicated.
TENSOR_PARALLEL = {"w1": P("data", "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}

_keys = jax.random.split(jax.random.key(0), 5)
PARAMS = {
  "w1": jax.random.normal(_keys[0], (16, 8)),
  "b1": jnp.zeros(8),
  "w2": jax.random.normal(_keys[1], (8, 4)),
  "b2": jnp.zeros(4),
}


def random_like(tree: Any, key: jax.Array) -> Any:
  """A tree like ``tree`` of standard normal samples."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten(
    [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
  )


GRAD_STEPS = [random_like(PARAMS, key) for key in jax.random.split(_keys[2], STEPS)]
X = jax.random.normal(_keys[3], (32, 16))
Y = jax.random.normal(_keys[4], (32, 4))


def loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((hidden @ params["w2"] + params["b2"] - y) ** 2)


def max_ulp(a: Any, b: Any) -> int:
  """The largest distance in units in the last place between two float32 trees."""
  return max(
    int(np.max(oracles.ulp_distance(u, v), initial=0))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def max_relative(a: Any, b: Any) -> float:
  """The largest leafwise ``max|a - b| / max|b|`` between two float trees."""
  return max(
    oracles.relative_error(u, v, elementwise=False)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def moments(state: Any) -> list[Any]:
  """The param-shaped trees of a state: mu, nu and, for AMSGrad, nu_max."""
  found = [optax.tree_utils.tree_get(state, "mu"), optax.tree_utils.tree_get(state, "nu")]
  nu_max = optax.tree_utils.tree_get(state, "nu_max")
  return found + ([nu_max] if nu_max is not None else [])


def sharded_like(trees: list[Any], params: Any) -> bool:
  """Whether every leaf of every tree has its param's sharding."""
  return all(
    leaf.sharding.is_equivalent_to(p.sharding, p.ndim)
    for tree in trees
    for leaf, p in zip(jax.tree.leaves(tree), jax.tree.leaves(params), strict=True)
  )


def pin(tree: Any, shardings: Any) -> Any:
  """Pins ``tree`` to ``shardings`` inside a jit, as the mesh's axis type asks."""
  mesh = jax.tree.leaves(shardings)[0].mesh
  if mesh.axis_types[0] == AxisType.Explicit:
    return jax.sharding.reshard(tree, shardings)
  return jax.lax.with_sharding_constraint(tree, shardings)


def train(
  tx: optax.GradientTransformation, params: Any, state: Any, batches: list, **shardings: Any
) -> Any:
  """The recipe of docs/howto/sharding.md: one jitted step per batch.

  A batch is ``(x, y)`` or a gradient tree. With ``grads=`` the gradient is
  pinned to those shardings (ZeRO-1: each device keeps its slice); with
  ``out=`` the step returns ``(params, state)`` with those shardings.
  """

  def step(p: Any, s: Any, batch: Any) -> Any:
    g = jax.grad(loss)(p, *batch) if isinstance(batch, tuple) else batch
    if "grads" in shardings:
      g = pin(g, shardings["grads"])
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  jitted = jax.jit(step, out_shardings=shardings["out"]) if "out" in shardings else jax.jit(step)
  for batch in batches:
    params, state = jitted(params, state, batch)
  return params, state


def inherit_checks(name: str, make_tx: Callable[[], optax.GradientTransformation]) -> dict:
  """Params sharded over a (data, model) mesh: the state follows them, the numbers do not move."""
  tx = make_tx()
  single = train(tx, PARAMS, tx.init(PARAMS), GRAD_STEPS)
  results = {}
  for mode, axis_type in MODES.items():
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
    shardings = {k: NamedSharding(mesh, spec) for k, spec in TENSOR_PARALLEL.items()}
    with jax.set_mesh(mesh):
      params = jax.device_put(PARAMS, shardings)
      grads = [jax.device_put(g, shardings) for g in GRAD_STEPS]
      # Under Auto axes jit leaves the sharding of fresh zeros to the compiler
      # (optax.adam's too), so there the state is built eagerly.
      init = jax.jit(tx.init) if axis_type == AxisType.Explicit else tx.init
      state = init(params)
      results[f"inherit/{mode}/{name}/init"] = sharded_like(moments(state), params)
      new_params, new_state = train(tx, params, state, grads)
      results[f"inherit/{mode}/{name}/update"] = sharded_like(
        [new_params, *moments(new_state)], params
      )
      results[f"inherit/{mode}/{name}/ulp"] = max_ulp((new_params, new_state), single)
  return results


def zero1_checks() -> dict:
  """Params replicated, moments split over 'data' by zero1_shardings."""
  tx = ao.adam(1e-2)
  single_on_grads = train(tx, PARAMS, tx.init(PARAMS), GRAD_STEPS)
  single = train(tx, PARAMS, tx.init(PARAMS), [(X, Y)] * STEPS)
  results = {}
  for mode, axis_type in MODES.items():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    replicated = NamedSharding(mesh, P())
    split = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
      params = jax.device_put(PARAMS, replicated)
      param_shardings = {name: replicated for name in params}
      state_shardings = zero1_shardings(jax.eval_shape(tx.init, params), mesh)
      state = jax.jit(tx.init, out_shardings=state_shardings)(params)
      zero1 = {
        "grads": optax.tree_utils.tree_get(state_shardings, "mu"),
        "out": (param_shardings, state_shardings),
      }
      new_params, new_state = train(
        tx, params, state, jax.device_put(GRAD_STEPS, replicated), **zero1
      )
      results[f"zero1/{mode}/ulp_on_same_grads"] = max_ulp((new_params, new_state), single_on_grads)
      results[f"zero1/{mode}/moments_split"] = all(
        leaf.sharding.is_equivalent_to(want, leaf.ndim)
        for leaf, want in zip(
          jax.tree.leaves(new_state), jax.tree.leaves(state_shardings), strict=True
        )
      ) and new_state[0].mu["w1"].addressable_shards[0].data.shape == (16 // 8, 8)
      results[f"zero1/{mode}/params_replicated"] = all(
        p.sharding.is_fully_replicated for p in jax.tree.leaves(new_params)
      )
      # Data parallel: the batch is split over 'data' too, so the gradient is
      # summed across devices, in another order than on one device.
      batches = [(jax.device_put(X, split), jax.device_put(Y, split))] * STEPS
      zero1_run = train(tx, params, state, batches, **zero1)
      plain_state = jax.device_put(tx.init(PARAMS), replicated)
      plain_run = train(tx, params, plain_state, batches, out=(param_shardings, replicated))
      results[f"zero1/{mode}/ulp_vs_plain_data_parallel"] = max_ulp(zero1_run, plain_run)
      results[f"zero1/{mode}/relative_vs_one_device"] = max_relative(zero1_run, single)
  return results


def zero1_on_tensor_parallel() -> dict:
  """zero1_shardings keeps a model-axis layout and adds 'data' on a free dimension."""
  mesh = jax.make_mesh((4, 2), ("data", "model"))
  with jax.set_mesh(mesh):
    params = jax.device_put(PARAMS, {k: NamedSharding(mesh, s) for k, s in TENSOR_PARALLEL.items()})
    shardings = zero1_shardings(jax.eval_shape(ao.adam(1e-2).init, params), mesh)
  return {"zero1/tensor_parallel_specs": {k: str(s.spec) for k, s in shardings[0].nu.items()}}


def main() -> None:
  assert jax.device_count() == 8, f"expected 8 devices, got {jax.device_count()}"
  results: dict[str, Any] = {}
  if sys.argv[1] == "inherit":
    for name in INHERITING:
      results.update(inherit_checks(name, functools.partial(matrix.ours, name, 1e-2)))
  else:
    results.update(zero1_checks())
    results.update(zero1_on_tensor_parallel())
  print(json.dumps(results))


if __name__ == "__main__":
  main()
