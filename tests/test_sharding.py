"""Optimizer states on a device mesh: inherited shardings, ZeRO-1, exact numbers.

The checks need 8 devices, so they run in tests/sharding_checks.py in a
subprocess on 8 host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``
and ``JAX_PLATFORMS=cpu``, so also on a machine with a GPU; the rest of the suite keeps
one device); each test here runs one group of checks
and asserts on the results it prints. Both kinds of mesh axes are covered:
``explicit`` (``jax.make_mesh``'s default) and ``auto``.
"""

from __future__ import annotations

import json
from typing import Any

from fresh_python import run_python


def run_checks(group: str) -> dict[str, Any]:
  run = run_python(["tests/sharding_checks.py", group], host_devices=8)
  assert run.returncode == 0, f"sharding_checks.py {group} failed:\n{run.stderr[-4000:]}"
  return json.loads(run.stdout.strip().splitlines()[-1])


def test_state_inherits_the_params_sharding_and_the_numbers_do_not_move() -> None:
  results = run_checks("inherit")
  for mode in ("explicit", "auto"):
    for name in ("adam", "amsgrad"):
      # Every mu/nu (and nu_max) leaf has its param's NamedSharding, from init on.
      assert results[f"inherit/{mode}/{name}/init"], (mode, name)
      assert results[f"inherit/{mode}/{name}/update"], (mode, name)
      # Sharded over (data, model), the run equals one device's bit for bit.
      assert results[f"inherit/{mode}/{name}/ulp"] == 0, (mode, name)


def test_zero1_splits_the_moments_and_computes_the_unsharded_numbers() -> None:
  results = run_checks("zero1")
  for mode in ("explicit", "auto"):
    assert results[f"zero1/{mode}/moments_split"], mode
    assert results[f"zero1/{mode}/params_replicated"], mode
    # On the same gradients ZeRO-1 is exactly one device's Adam.
    assert results[f"zero1/{mode}/ulp_on_same_grads"] == 0, mode
    # In data-parallel training the gradient is summed across devices, in
    # another order; that rounding is all that separates the runs.
    assert results[f"zero1/{mode}/ulp_vs_plain_data_parallel"] <= 64, mode  # measured: 2
    assert results[f"zero1/{mode}/relative_vs_one_device"] < 1e-4, mode  # measured: 3.6e-6
  # On a tensor-parallel layout, 'data' is added on a free dimension.
  assert results["zero1/tensor_parallel_specs"] == {
    "w1": "P('data', 'model')",  # already split over 'data': kept
    "b1": "P('model',)",  # no free dimension: kept
    "w2": "P('model', 'data')",
    "b2": "P('data',)",
  }
