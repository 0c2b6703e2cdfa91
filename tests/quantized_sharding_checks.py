"""Low-bit states on 8 host devices, run by tests/test_quantized.py in a subprocess.

Run as ``JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8
python tests/quantized_sharding_checks.py``; prints one JSON object that the
test asserts on. For 8 and 4 bits on explicit mesh axes and 8 bits on automatic ones:
the specs of the codes and scales of a leaf sharded by rows and one sharded
by columns, whether the compiled step of those two has any all-gather,
whether a step-by-step run (one jitted step per call, as in training) equals
the single-device run bit for bit, and the warnings ``init`` gives for a leaf
whose shards do not hold whole rows of blocks (it is gathered, and still equal).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adam_optax as ao

STEPS = 3
# rows: each device holds 8 rows of 512; cols: each holds 2048 / 8 = 256 columns of
# every row, a whole row of blocks at both widths; cross: each holds one row of 600,
# so blocks cross the devices' boundaries.
SHAPES = {"rows": (64, 512), "cols": (64, 2048), "cross": (8, 600)}
SPECS = {"rows": P("data", None), "cols": P(None, "data"), "cross": P("data", None)}


def _run(tx: optax.GradientTransformation, params: Any, state: Any, grads: Any) -> Any:
  step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
  for _ in range(STEPS):
    params, state = step(params, state, grads)
  return params, state


def _same(a: Any, b: Any) -> bool:
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return all(bool(np.array_equal(x, y)) for x, y in pairs)


def check(bits: int, axis_type: str) -> dict[str, Any]:
  fmt = ao.Quantized(bits)
  tx = ao.adam(1e-2, mu_dtype=fmt, nu_dtype=fmt)
  params = {k: jax.random.normal(jax.random.key(i), s) for i, (k, s) in enumerate(SHAPES.items())}
  grads = jax.tree.map(lambda p: jnp.cos(p) * 3.0, params)
  single = _run(tx, params, tx.init(params), grads)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(AxisType, axis_type),))
  with jax.set_mesh(mesh):
    shardings = {k: NamedSharding(mesh, SPECS[k]) for k in SHAPES}
    sharded, sharded_grads = jax.device_put(params, shardings), jax.device_put(grads, shardings)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("default")
      state = tx.init(sharded)
    aligned = ["rows", "cols"]
    only = {k: sharded[k] for k in aligned}
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    hlo = step.lower(only, tx.init(only), {k: sharded_grads[k] for k in aligned}).compile()
    out = _run(tx, sharded, state, sharded_grads)
  mu = out[1][0].mu
  return {
    "codes": {k: str(mu[k].codes.sharding.spec) for k in SHAPES},
    "scales": {k: str(mu[k].scales.sharding.spec) for k in SHAPES},
    "all_gathers": hlo.as_text().count("all-gather"),
    "same": _same(out, single),
    "warnings": [str(w.message) for w in caught],
  }


def main() -> None:
  assert jax.device_count() == 8, f"expected 8 devices, got {jax.device_count()}"
  # Both widths on explicit axes, where the layout's shardings are spelled out; 8 bits
  # on automatic ones, where XLA places the same reshapes (the widths differ only in
  # packing, within a row).
  cases = [(8, "Explicit"), (4, "Explicit"), (8, "Auto")]
  results = {f"{bits}/{axis}": check(bits, axis) for bits, axis in cases}
  print(json.dumps(results))


if __name__ == "__main__":
  main()
