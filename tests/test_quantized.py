"""Low-bit moments (ao.Quantized): the codes, the contract, and everything float32 states do."""

from __future__ import annotations

import functools
import json
import pathlib
import textwrap
from typing import Any

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fresh_python import run_python
from hypothesis import given, settings
from hypothesis import strategies as st
from matrix import WITH_STORAGE, ours
from training import assert_trees_equal, train

import adam_optax as ao
from adam_optax import _codes, quantized
from adam_optax.benchmarks import lowbit
from adam_optax.checkpoint import restore_checkpoint, save_checkpoint

FORMATS = {"8bit": ao.Quantized(8), "4bit": ao.Quantized(4)}
SHAPE = (3, 100)  # 300 elements: blocks of 128 and 256 both need padding


def _both(fmt: ao.Quantized, **kw: Any) -> optax.GradientTransformation:
  return ao.adam(1e-2, mu_dtype=fmt, nu_dtype=fmt, **kw)


def _params() -> dict[str, jax.Array]:
  """A leaf that is quantized (5,000 elements, padded) and one that stays float32."""
  kw, kb = jax.random.split(jax.random.key(0))
  return {"w": jax.random.normal(kw, (50, 100)), "b": jax.random.normal(kb, (100,))}


def _grads(steps: int) -> dict[str, jax.Array]:
  kw, kb = jax.random.split(jax.random.key(1))
  scales = jnp.logspace(-3, 0, 100)  # gradient scales spanning 1e3 inside every block
  return {
    "w": jax.random.normal(kw, (steps, 50, 100)) * scales,
    "b": jax.random.normal(kb, (steps, 100)),
  }


@functools.cache
def _codec(bits: int, signed: bool) -> Any:
  stored = quantized.zeros(jnp.zeros(SHAPE), ao.Quantized(bits, min_size=0), signed=signed)
  return jax.jit(lambda x: quantized.decode(quantized.encode(x, stored)))


def _roundtrip(values: np.ndarray, bits: int, *, signed: bool) -> np.ndarray:
  return np.asarray(_codec(bits, signed)(jnp.asarray(values)))


# Finite float32 values from 1e-30 to 1e30 in magnitude, with zeros: every
# block spans many decades, as moments of coordinates of unlike scales do.
_MAGNITUDES = hnp.arrays(
  np.float64, SHAPE, elements=st.one_of(st.just(0.0), st.floats(-30, 30).map(lambda e: 10.0**e))
)


@settings(max_examples=25, deadline=None)
@given(magnitudes=_MAGNITUDES, signs=hnp.arrays(np.bool_, SHAPE), bits=st.sampled_from([8, 4]))
def test_signed_codes_are_within_half_a_step(
  magnitudes: np.ndarray, signs: np.ndarray, bits: int
) -> None:
  x = np.where(signs, -magnitudes, magnitudes).astype(np.float32)
  y = _roundtrip(x, bits, signed=True)
  mantissa, top = _codes.MANTISSA[True, bits], 2 ** (bits - 1) - 1
  block = ao.Quantized(bits).block
  flat = np.pad(np.abs(x).ravel(), (0, -x.size % block)).reshape(-1, block)
  scale = np.repeat(flat.max(1), block)[: x.size].reshape(x.shape)
  smallest = 2.0 ** ((1 - top) / 2**mantissa)
  # Relative error at most half a code above the smallest magnitude, absolute below.
  bound = np.maximum(2.0 ** -(mantissa + 1) * np.abs(x), smallest * scale) * (1 + 2**-7)
  assert np.all(np.abs(y - x) <= bound)
  assert np.all(y[x == 0] == 0)
  assert np.all(np.sign(y) * np.sign(x) >= 0)


@settings(max_examples=25, deadline=None)
@given(magnitudes=_MAGNITUDES, bits=st.sampled_from([8, 4]))
def test_a_nonzero_second_moment_never_decodes_to_zero(magnitudes: np.ndarray, bits: int) -> None:
  v = magnitudes.astype(np.float32)
  w = _roundtrip(v, bits, signed=False)
  normal = v >= np.finfo(np.float32).tiny
  assert np.all(w[normal] > 0)
  # Never below the value by more than half a code (a floor only rounds up).
  half = 2.0 ** -(_codes.MANTISSA[False, bits] + 1)
  assert np.all(w[normal] >= v[normal] * (1 - half) ** 2 * (1 - 1e-6))


def test_a_tiny_second_moment_beside_a_large_one_keeps_the_step_bounded() -> None:
  # One coordinate with v = 1e3 and the others near 1e-4 in the same block: a
  # map with a zero code reads the small ones as 0 and steps m / eps.
  g = jnp.full(4096, 1e-2).at[0].set(1e3**0.5)
  tx = _both(ao.Quantized(8))
  params, state = jnp.zeros(4096), tx.init(jnp.zeros(4096))
  update = jax.jit(tx.update)
  largest = 0.0
  for _ in range(20):
    updates, state = update(g, state, params)
    largest = max(largest, float(jnp.max(jnp.abs(updates))))
  assert largest <= 1.01e-2  # lr; torchao's 8-bit map reaches 31 x lr here


@pytest.mark.parametrize(("bits", "limit"), [(8, 2.05), (4, 1.07)])
def test_bytes_per_param_with_scales(bits: int, limit: float) -> None:
  params = jnp.zeros((1024, 1024))
  state = _both(ao.Quantized(bits)).init(params)
  assert lowbit.bytes_per_param(state, params) <= limit


def _low_bit(bits: int) -> optax.GradientTransformation:
  fmt = ao.Quantized(bits)
  return ao.adam(lowbit.LEARNING_RATE, mu_dtype=fmt, nu_dtype=fmt)


def test_eight_bit_converges_like_float32() -> None:
  problem = lowbit.least_squares(0)
  ours = lowbit.final_loss(_low_bit(8), problem)
  reference = lowbit.final_loss(ao.adam(lowbit.LEARNING_RATE), problem)
  assert abs(ours / reference - 1) <= 0.005


def test_four_bit_deviates_from_float32_less_than_torchao_4bit(
  monkeypatch: pytest.MonkeyPatch,
) -> None:
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchao")
  # torchao compiles its step with torch.compile; eagerly the same operations give
  # the same losses to the bit (9.8748 on this seed) without 40 s of compiling.
  monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
  problem = lowbit.least_squares(0)
  ours = lowbit.final_loss(_low_bit(4), problem) / lowbit.final_loss(
    ao.adam(lowbit.LEARNING_RATE), problem
  )
  makers = lowbit.torchao_optimizers()
  theirs = lowbit.torch_final_loss(makers["4-bit"], problem) / lowbit.torch_final_loss(
    makers["float32"], problem
  )
  assert abs(ours - 1) <= 0.5 * abs(theirs - 1), (ours, theirs)


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_state_layout_and_reading_it_back(fmt: ao.Quantized) -> None:
  tx = _both(fmt)
  params = _params()
  state = tx.init(params)
  mu = optax.tree_utils.tree_get(state, "mu")
  assert quantized.is_quantized(mu["w"])
  assert mu["w"].shape == (50, 100)
  assert mu["b"].dtype == jnp.float32  # below min_size
  g = jax.tree.map(lambda x: x[0], _grads(1))
  _, state = jax.jit(tx.update)(g, state, params)
  mu = ao.dequantize(optax.tree_utils.tree_get(state, "mu"))
  # Within half a code of the moment, or of the smallest magnitude of the block.
  atol = 0.1 * float(jnp.max(jnp.abs(g["w"]))) * (2**-6 if fmt.bits == 4 else 2**-15)
  np.testing.assert_allclose(mu["w"], 0.1 * g["w"], rtol=0.5 if fmt.bits == 4 else 0.07, atol=atol)


def _stored(name: str, fmt: Any) -> optax.GradientTransformation:
  return ours(name, 1e-2, mu_dtype=fmt, nu_dtype=fmt)


# Every optimizer of tests/matrix.py with storage, by format; Adam as its bare chain.
STORED = {
  "scale_by_moments": lambda f: optax.chain(
    ao.scale_by_moments(mu_dtype=f, nu_dtype=f),
    ao.bias_correct(),
    ao.normalize(),
    ao.scale_by_lr(1e-2),
  ),
  **{name: functools.partial(_stored, name) for name in WITH_STORAGE if name != "adam"},
}


@pytest.mark.parametrize("make", STORED.values(), ids=STORED.keys())
def test_every_optimizer_takes_quantized_moments(make: Any) -> None:
  fmt = ao.Quantized(4)
  params, grads = _params(), _grads(3)
  quantized_run = train(make(fmt), params, make(fmt).init(params), grads)
  float_run = train(make(None), params, make(None).init(params), grads)
  stored = jax.tree.leaves(quantized_run[1], is_leaf=quantized.is_quantized)
  assert any(quantized.is_quantized(x) for x in stored)
  # Three steps of about lr each: the params move as float32 Adam's do, within a step.
  for a, b in zip(jax.tree.leaves(quantized_run[0]), jax.tree.leaves(float_run[0]), strict=True):
    assert float(jnp.max(jnp.abs(a - b))) < 0.02


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_jit_does_not_recompile_and_matches_eager(fmt: ao.Quantized) -> None:
  tx = _both(fmt)
  params, grads = _params(), _grads(2)
  update = jax.jit(tx.update)
  state = tx.init(params)
  eager_state = state
  for t, rtol in enumerate([1e-6, 0.1]):  # a code that flips between the two changes step 2
    g = jax.tree.map(lambda x, t=t: x[t], grads)
    updates, state = update(g, state, params)
    eager_updates, eager_state = tx.update(g, eager_state, params)
    check = lambda a, b, rtol=rtol: np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)  # noqa: E731
    jax.tree.map(check, updates, eager_updates)
  assert update._cache_size() == 1


def test_vmap_init_keeps_the_logical_shape() -> None:
  tx = _both(ao.Quantized(8))
  batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), _params())
  state = jax.vmap(tx.init)(batch)
  assert optax.tree_utils.tree_get(state, "mu")["w"].shape == (2, 50, 100)
  g = jax.tree.map(lambda x: jnp.stack([x[0], -x[0]]), _grads(1))
  _, state = jax.vmap(tx.update)(g, state, batch)
  mu = ao.dequantize(optax.tree_utils.tree_get(state, "mu"))["w"]
  _, single = tx.update(jax.tree.map(lambda x: x[1], g), tx.init(_params()))
  np.testing.assert_array_equal(mu[1], ao.dequantize(single[0].mu)["w"])


def test_inject_hyperparams_changes_the_learning_rate() -> None:
  fmt = ao.Quantized(8)
  tx = optax.inject_hyperparams(ao.adam)(learning_rate=1e-2, mu_dtype=fmt, nu_dtype=fmt)
  params, g = _params(), jax.tree.map(lambda x: x[0], _grads(1))
  state = tx.init(params)
  first, state = jax.jit(tx.update)(g, state, params)
  state.hyperparams["learning_rate"] = jnp.asarray(1e-3)
  second, _ = jax.jit(tx.update)(g, state, params)
  ratio = jnp.abs(second["b"]) / jnp.abs(first["b"])
  assert 0.05 < float(jnp.median(ratio)) < 0.2


def test_a_skipped_step_leaves_codes_and_scales_bit_identical() -> None:
  tx = optax.apply_if_finite(_both(ao.Quantized(4)), max_consecutive_errors=3)
  params, grads = _params(), _grads(1)
  _, state = train(tx, params, tx.init(params), grads)
  bad = jax.tree.map(lambda x: x[0].at[0].set(jnp.nan), grads)
  updates, skipped = jax.jit(tx.update)(bad, state, params)
  assert int(skipped.notfinite_count) == 1
  assert_trees_equal(skipped.inner_state, state.inner_state)
  assert all(float(jnp.max(jnp.abs(u))) == 0 for u in jax.tree.leaves(updates))


def test_multisteps_and_masked() -> None:
  fmt = ao.Quantized(8)
  params, grads = _params(), _grads(4)
  multi = optax.MultiSteps(_both(fmt), every_k_schedule=2)
  (p, state) = train(multi, params, multi.init(params), grads)
  assert int(state.gradient_step) == 2
  assert bool(jnp.all(jnp.isfinite(p["w"])))
  masked = optax.masked(_both(fmt), {"w": True, "b": False})
  p, _ = train(masked, params, masked.init(params), grads)
  np.testing.assert_allclose(p["b"], params["b"] + grads["b"].sum(0), atol=1e-6)  # passed through


def test_amsgrad_keeps_a_quantized_running_maximum() -> None:
  fmt = ao.Quantized(8)
  tx = ao.amsgrad(1e-2, mu_dtype=fmt, nu_dtype=fmt)
  params, grads = _params(), _grads(3)
  state = tx.init(params)
  nu_max = optax.tree_utils.tree_get(state, "nu_max")["w"]
  assert quantized.is_quantized(nu_max)
  assert not nu_max.signed
  previous = jnp.zeros((50, 100))
  for t in range(3):
    _, state = jax.jit(tx.update)(jax.tree.map(lambda x, t=t: x[t], grads), state, params)
    current = ao.dequantize(optax.tree_utils.tree_get(state, "nu_max"))["w"]
    # The maximum of decoded values never falls by more than the rounding.
    assert bool(jnp.all(current >= previous * (1 - 2**-5) ** 2 * (1 - 1e-6)))
    previous = current


def test_diagnostics_and_meta_gradient() -> None:
  fmt = ao.Quantized(8)
  params, g = _params(), jax.tree.map(lambda x: x[0], _grads(1))
  tx = _both(fmt, diagnostics=True)
  updates, state = jax.jit(tx.update)(g, tx.init(params), params)
  readings = jax.jit(ao.diagnostics)(state)
  # Read back from the codes: within the codebooks' rounding of the step it took.
  step = max(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(updates))
  error = 2.0 ** (1 / 16) - 1 + (2.0 ** (1 / 32) - 1)  # half a code of m, of sqrt(v)
  assert abs(float(readings["step_max"]) - step) <= error * step
  assert float(readings["above_strict"]) == 0.0

  # The step uses this step's unrounded float32 moments, so a derivative
  # through one update is float32 Adam's; the stored codes carry none.
  def loss_after_step(tx: optax.GradientTransformation, grads: Any) -> jax.Array:
    updates, _ = tx.update(grads, tx.init(params), params)
    return sum(jnp.sum(u**3) for u in jax.tree.leaves(updates))

  ours = jax.grad(lambda g: loss_after_step(_both(fmt), g))(g)
  reference = jax.grad(lambda g: loss_after_step(ao.adam(1e-2), g))(g)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, reference)


def test_checkpoint_round_trip_and_bit_identical_resume(tmp_path: pathlib.Path) -> None:
  tx = ao.amsgrad(1e-2, mu_dtype=ao.Quantized(4), nu_dtype=ao.Quantized(8))
  params, grads = _params(), _grads(4)
  first = jax.tree.map(lambda x: x[:2], grads)
  second = jax.tree.map(lambda x: x[2:], grads)
  p, s = train(tx, params, tx.init(params), first)
  save_checkpoint(tmp_path / "ckpt", {"params": p, "opt_state": s})
  restored = restore_checkpoint(tmp_path / "ckpt", {"params": params, "opt_state": tx.init(params)})
  assert_trees_equal(restored, {"params": p, "opt_state": s})
  resumed = train(tx, restored["params"], restored["opt_state"], second)
  straight = train(tx, params, tx.init(params), grads)
  assert_trees_equal(resumed, straight)


@pytest.mark.parametrize(
  ("make", "message"),
  [
    (lambda: ao.Quantized(5), "bits=5"),
    (lambda: ao.Quantized(True), "bits=True"),
    (lambda: ao.Quantized(8, block_size=0), "block_size=0"),
    (lambda: ao.Quantized(4, block_size=3), "block_size=3"),
    (lambda: ao.Quantized(8, min_size=-1), "min_size=-1"),
    (lambda: _both(ao.Quantized(8)).init(jnp.zeros(8192, jnp.complex64)), "mu_dtype="),
  ],
)
def test_bad_arguments_raise_value_error_naming_them(make: Any, message: str) -> None:
  with pytest.raises(ValueError, match=message):
    make()


def test_gradients_of_the_wrong_shape_name_the_path() -> None:
  tx = _both(ao.Quantized(8))
  params = _params()
  wrong = {"w": jnp.zeros((100, 50)), "b": jnp.zeros(100)}
  with pytest.raises(ValueError, match=r"\['w'\] has shape \(100, 50\).*expects \(50, 100\)"):
    tx.update(wrong, tx.init(params), params)


_SHARDED = textwrap.dedent(
  """
  import json, jax, jax.numpy as jnp, numpy as np, optax, adam_optax as ao
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  fmt = ao.Quantized(8)
  tx = ao.adam(1e-2, mu_dtype=fmt, nu_dtype=fmt)
  # (64, 512): each device holds 8 rows, 16 whole blocks; (8, 600): each holds
  # one row of 600, so blocks of 256 cross the devices' boundaries.
  shapes = {"aligned": (64, 512), "crossing": (8, 600)}
  params = {k: jax.random.normal(jax.random.key(i), s) for i, (k, s) in enumerate(shapes.items())}
  grads = jax.tree.map(lambda p: jnp.cos(p) * 3.0, params)
  def steps(p, s):
    for _ in range(3):
      u, s = tx.update(grads, s, p)
      p = optax.apply_updates(p, u)
    return p, s
  single = jax.jit(steps)(params, tx.init(params))
  results = {}
  for axis_type in ("Explicit", "Auto"):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(AxisType, axis_type),))
    sharded = jax.device_put(params, NamedSharding(mesh, P("data", None)))
    state = tx.init(sharded)
    out = jax.jit(steps)(sharded, state)
    codes = {k: str(state[0].mu[k].codes.sharding.spec) for k in shapes}
    pairs = zip(jax.tree.leaves(out), jax.tree.leaves(single))
    same = all(bool(np.array_equal(a, b)) for a, b in pairs)
    results[axis_type] = {"codes": codes, "same": same}
  print(json.dumps(results))
  """
)


def test_sharded_states_equal_single_device_states() -> None:
  run = run_python(["-c", _SHARDED], xla_flags="--xla_force_host_platform_device_count=8")
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads(run.stdout.strip().splitlines()[-1])
  for result in results.values():  # explicit and automatic axes
    assert result["same"], results
    assert result["codes"]["aligned"].startswith("P('data'"), results  # whole blocks per device


def test_states_command_reports_bad_flags_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
  from adam_optax import cli

  with pytest.raises(SystemExit) as exit_info:
    cli.main(["states", "--size", "0"])
  assert exit_info.value.code == 2
  assert "--size" in capsys.readouterr().err
