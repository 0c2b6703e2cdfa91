"""Low-bit moments (ao.Quantized): the codes, the contract, and everything float32 states do."""

from __future__ import annotations

import functools
import json
import math
import pathlib
import re
from typing import Any

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import oracles
import pytest
from fresh_python import run_python
from hypothesis import given, settings
from hypothesis import strategies as st
from matrix import WITH_STORAGE, ours
from training import assert_trees_equal, train

import adam_optax as ao
from adam_optax import _block_layout, _codes, _fields, _precision, quantized
from adam_optax.benchmarks import lowbit
from adam_optax.checkpoint import restore_checkpoint, save_checkpoint
from adam_optax.flat import flatten_params

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
def test_signed_codes_are_within_the_codebook_error(
  magnitudes: np.ndarray, signs: np.ndarray, bits: int
) -> None:
  x = np.where(signs, -magnitudes, magnitudes).astype(np.float32)
  y = _roundtrip(x, bits, signed=True)
  block = _block_layout.plan(SHAPE, bits, ao.Quantized(bits).block).block  # equal blocks
  flat = np.pad(np.abs(x).ravel(), (0, -x.size % block)).reshape(-1, block)
  scale = np.repeat(flat.max(1), block)[: x.size].reshape(x.shape)
  smallest = float(_codes._value(jnp.asarray(1), True, bits))  # the smallest non-zero code
  # The codebook's relative error down to its smallest code (its low bound, either way there:
  # tests/test_codes.py), absolute below (the scale is rounded to bfloat16: half an ulp, 2^-9).
  bound = np.maximum(_codes.rounding(True, bits).low * np.abs(x), smallest * scale) * (1 + 2**-8)
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
  # sqrt(v) is never read low by more than 1/33 (8 bits) or 1/3 (4 bits; a floor only rounds up).
  low = 1 / 33 if bits == 8 else 1 / 3
  assert np.all(w[normal] >= v[normal] * (1 - low) ** 2 * (1 - 2**-20))


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
  # Within the codebook's error of the moment, or of the smallest magnitude of the block.
  smallest = float(_codes._value(jnp.asarray(1), True, fmt.bits))
  atol = 0.1 * float(jnp.max(jnp.abs(g["w"]))) * smallest * (1 + 2**-8)
  rtol = quantized.relative_error(optax.tree_utils.tree_get(state, "mu")["w"])
  np.testing.assert_allclose(mu["w"], 0.1 * g["w"], rtol=rtol, atol=atol)


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


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("make", STORED.values(), ids=STORED.keys())
def test_every_optimizer_takes_quantized_moments(make: Any, fmt: ao.Quantized) -> None:
  params, grads = _params(), _grads(3)
  quantized_run = train(make(fmt), params, make(fmt).init(params), grads)
  float_run = train(make(None), params, make(None).init(params), grads)
  stored = jax.tree.leaves(quantized_run[1], is_leaf=quantized.is_quantized)
  assert any(quantized.is_quantized(x) for x in stored)
  # Three steps of about lr each: the params move as float32 Adam's do, within a step, where
  # the codebooks' range holds the moments. The 4-bit maps hold m down to 1/49 of its block's
  # largest and sqrt(v) to 1/256: the gradient columns below 1/20 of the largest only take
  # shorter steps (their stored m reads 0, their v the floor), never longer ones.
  held = np.logspace(-3, 0, 100) >= (0.05 if fmt.bits == 4 else 0.0)
  runs = (quantized_run[0], float_run[0], params)
  for a, b, p in zip(*(jax.tree.leaves(x) for x in runs), strict=True):
    inside = held if a.shape == (50, 100) else True
    assert float(jnp.max(jnp.where(inside, jnp.abs(a - b), 0.0))) < 0.02
    assert bool(jnp.all(jnp.abs(a - p) < jnp.abs(b - p) + 0.02))


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_jit_does_not_recompile_and_matches_eager(fmt: ao.Quantized) -> None:
  tx = _both(fmt)
  params, grads = _params(), _grads(2)
  update = jax.jit(tx.update)
  state = tx.init(params)
  for t in range(2):
    g = jax.tree.map(lambda x, t=t: x[t], grads)
    # Eager from the jitted run's state: the two may round a few ulp apart (a GPU
    # contracts multiply-adds under jit only), and a code flipped by that would make
    # every later step differ by a code's width.
    eager_updates, _ = tx.update(g, state, params)
    updates, state = update(g, state, params)
    check = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # noqa: E731
    jax.tree.map(check, updates, eager_updates)
  assert update._cache_size() == 1


def _lowered(tx: optax.GradientTransformation, platform: str) -> str:
  """The StableHLO of ``tx.update`` lowered for ``platform`` (on any machine)."""
  params = _params()
  traced = jax.jit(tx.update).trace(params, tx.init(params), params)
  return traced.lower(lowering_platforms=(platform,)).as_text()


def _compiled_on_cpu(tx: optax.GradientTransformation) -> str:
  """The optimized HLO of ``tx.update`` compiled for the CPU, without names and locations."""
  params = jax.device_put(_params(), jax.devices("cpu")[0])
  text = jax.jit(tx.update).lower(params, tx.init(params), params).compile().as_text()
  text = re.sub(r"(?ms)^FileNames$.*?(?=^(ENTRY|%))", "", text)  # the source locations
  text = re.sub(r", metadata=\{[^}]*\}|,? ?stack_frame_id=\d+", "", text)
  names: dict[str, str] = {}  # instructions and computations, renamed in order of appearance
  return re.sub(r"%[\w.-]+", lambda m: names.setdefault(m[0], f"%{len(names)}"), text)


@pytest.mark.parametrize(
  ("make", "bits", "barriers"),
  [(ao.adam, 8, 1), (ao.adam, 4, 2), (ao.amsgrad, 8, 2), (ao.amsgrad, 4, 4)],
)
def test_on_a_gpu_low_bit_states_are_coded_from_copies_behind_barriers(
  make: Any, bits: int, barriers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
  """The passes of a low-bit step on a GPU (_precision.copies_apart), and none elsewhere.

  Per stored moment (and AMSGrad's maximum) a barrier before the copy its scales come
  from, and at 4 bits a second before the copy its codes come from: lowered for CUDA
  here, on any machine (the GPU run of this suite executes them). On a CPU the copies
  are the same computation, merged by XLA: the compiled program is the one without them.
  """
  fmt = ao.Quantized(bits)
  tx = make(1e-3, mu_dtype=fmt, nu_dtype=fmt)
  assert _lowered(tx, "cuda").count("stablehlo.optimization_barrier") == barriers
  assert "optimization_barrier" not in _lowered(tx, "cpu")
  assert "optimization_barrier" not in _lowered(make(1e-3), "cuda")
  with_copies = _compiled_on_cpu(tx)
  monkeypatch.setattr(_precision, "copies_apart", lambda *args: ())
  without = _compiled_on_cpu(make(1e-3, mu_dtype=fmt, nu_dtype=fmt))
  assert with_copies == without


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
  stored = optax.tree_utils.tree_get(state, "mu")["w"], optax.tree_utils.tree_get(state, "nu")["w"]
  (mu_low, mu_high), (nu_low, nu_high) = (quantized.rounding(x) for x in stored)
  read = float(readings["step_max"])
  assert (1 - mu_low) / (1 + nu_high) ** 0.5 * step <= read  # |m| read low, v read high
  assert read <= (1 + mu_high) / (1 - nu_low) ** 0.5 * step  # |m| read high, v read low
  assert float(readings["above_strict"]) == 0.0

  # The step uses this step's unrounded float32 moments, so a derivative
  # through one update is float32 Adam's; the stored codes carry none.
  def loss_after_step(tx: optax.GradientTransformation, grads: Any) -> jax.Array:
    updates, _ = tx.update(grads, tx.init(params), params)
    return sum(jnp.sum(u**3) for u in jax.tree.leaves(updates))

  ours = jax.grad(lambda g: loss_after_step(_both(fmt), g))(g)
  reference = jax.grad(lambda g: loss_after_step(ao.adam(1e-2), g))(g)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, reference)


@pytest.mark.parametrize("path", ["tree", "flat"])
def test_checkpoint_round_trip_and_bit_identical_resume(tmp_path: pathlib.Path, path: str) -> None:
  import orbax.checkpoint as ocp

  tx = ao.amsgrad(1e-2, mu_dtype=ao.Quantized(4), nu_dtype=ao.Quantized(8))
  params, grads = _params(), _grads(4)
  if path == "flat":  # a run of codes and the float32 rest (orbax once refused to save it)
    params = flatten_params(params, multiple_of=8)
    grads = jax.vmap(lambda g: flatten_params(g, multiple_of=8))(grads)
  first = jax.tree.map(lambda x: x[:2], grads)
  second = jax.tree.map(lambda x: x[2:], grads)
  p, s = train(tx, params, tx.init(params), first)
  save_checkpoint(tmp_path / "ckpt", {"params": p, "opt_state": s})
  restored = restore_checkpoint(tmp_path / "ckpt", {"params": params, "opt_state": tx.init(params)})
  assert_trees_equal(restored, {"params": p, "opt_state": s})
  resumed = train(tx, restored["params"], restored["opt_state"], second)
  straight = train(tx, params, tx.init(params), grads)
  assert_trees_equal(resumed, straight)
  # Without a target, the moments are read from the arrays alone.
  without = ocp.StandardCheckpointer().restore(tmp_path / "ckpt")["opt_state"]
  for field in ("mu", "nu", "nu_max"):
    got = ao.dequantize(optax.tree_utils.tree_get(without, field))
    expected = ao.dequantize(optax.tree_utils.tree_get(s, field))
    for a, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
      np.testing.assert_array_equal(np.reshape(a, e.shape), e)


@pytest.mark.parametrize(
  ("make", "message"),
  [
    (lambda: ao.Quantized(5), "bits=5"),
    (lambda: ao.Quantized(True), "bits=True"),
    (lambda: ao.Quantized(8, block_size=0), "block_size=0"),
    (lambda: ao.Quantized(4, block_size=3), "block_size=3"),
    (lambda: ao.Quantized(8, min_size=-1), "min_size=-1"),
    (lambda: _both(ao.Quantized(8)).init(jnp.zeros(8192, jnp.complex64)), "mu_dtype="),
    (
      lambda: quantized.zeros(jnp.zeros(5000), ao.Quantized(8), signed=True, segments=(9, 4991)),
      "largest first",
    ),
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


def _model_step(tx: optax.GradientTransformation) -> tuple[Any, Any, Any, Any]:
  """An nnx.Linear(256, 64), its input, its params and a plain-optax step of ``tx`` on them."""
  from flax import nnx

  model = nnx.Linear(256, 64, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (8, 256))
  # A twin made alike: the split of ``model`` would share its variables.
  graphdef, params = nnx.split(nnx.Linear(256, 64, rngs=nnx.Rngs(0)), nnx.Param)

  @jax.jit
  def plain_step(params: Any, state: Any) -> Any:
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) ** 2))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return model, x, params, plain_step


WRAPPERS = {
  "plain": lambda tx: tx,
  "apply_if_finite": lambda tx: optax.apply_if_finite(tx, 3),
  "multi_steps": lambda tx: optax.MultiSteps(tx, 2),
}


@pytest.mark.parametrize("wrapper", WRAPPERS, ids=WRAPPERS)
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_nnx_optimizer_steps_as_a_plain_optax_loop(fmt: ao.Quantized, wrapper: str) -> None:
  """Issue 16, item 1: nnx.update writes the state back through nnx.state.

  Which would turn a QuantizedArray inside a variable into a State of its
  arrays, another tree: the step compiled again at step 2. Both steps compile once.
  """
  from flax import nnx

  tx = WRAPPERS[wrapper](_both(fmt))
  model, x, params, plain_step = _model_step(tx)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model: Any, optimizer: Any) -> None:
    optimizer.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))

  state = tx.init(params)
  for _ in range(4):
    step(model, optimizer)
    params, state = plain_step(params, state)
  assert (step.jitted_fn._cache_size(), plain_step._cache_size()) == (1, 1)
  assert_trees_equal(nnx.to_pure_dict(nnx.state(model, nnx.Param)), nnx.to_pure_dict(params))
  for field in ("mu", "nu"):  # the same codes and scales, leaf by leaf (nnx boxes them)
    got = optax.tree_utils.tree_get(nnx.state(optimizer)["opt_state"], field)
    want = optax.tree_utils.tree_get(state, field)
    assert_trees_equal(*([np.asarray(x) for x in jax.tree.leaves(t)] for t in (got, want)))


def test_a_mapping_in_another_format_is_refused_naming_the_leaf() -> None:
  params, g = _params(), jax.tree.map(lambda x: x[0], _grads(1))
  as_mappings = _as_restored(_both(ao.Quantized(8)).init(params)[0])  # as nnx.state leaves it
  state = _both(ao.Quantized(4)).init(params)
  moments = type(state[0])(**{k: jax.tree.map(jnp.asarray, v) for k, v in as_mappings.items()})
  with pytest.raises(ValueError, match=r"stored moment at \['w'\] .*Quantized\(bits=4"):
    _both(ao.Quantized(4)).update(g, (moments, *state[1:]), params)


def test_linen_train_state_steps_as_a_plain_optax_loop() -> None:
  from flax.training.train_state import TrainState

  tx, params, grads = _both(ao.Quantized(8)), _params(), _grads(3)
  train_state = TrainState.create(apply_fn=None, params=params, tx=tx)
  apply = jax.jit(lambda s, g: s.apply_gradients(grads=g))
  plain = jax.jit(
    lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p))
  )
  state = tx.init(params)
  for t in range(3):
    g = jax.tree.map(lambda x, t=t: x[t], grads)
    train_state = apply(train_state, g)
    params, state = plain(params, state, g)
  assert_trees_equal((train_state.params, train_state.opt_state), (params, state))


# Leaves of whole rows of blocks (kept dims), of a size that is not a multiple of a
# row (equal blocks, padding recorded), and a small one that stays float32.
_READ_PARAMS = {"rows": (40, 256), "conv": (3, 3, 16, 128), "odd": (5001,), "tiny": (10,)}
_READ_FORMATS = {
  "8bit": ao.Quantized(8),
  "4bit": ao.Quantized(4),
  "8bit-block64": ao.Quantized(8, block_size=64, min_size=100),
  "4bit-block32": ao.Quantized(4, block_size=32, min_size=100),
}


def _read_state(fmt: ao.Quantized, name: str) -> tuple[optax.GradientTransformation, Any, Any]:
  tx = getattr(ao, name)(0.1, mu_dtype=fmt, nu_dtype=fmt, diagnostics=True)
  params = {k: jnp.zeros(shape) for k, shape in _READ_PARAMS.items()}
  state = tx.init(params)
  for t in range(3):
    grads = {
      k: (jnp.sin(jnp.arange(p.size) * (t + 1.0)) * (1.0 + jnp.arange(p.size) % 7)).reshape(p.shape)
      for k, p in params.items()
    }
    _, state = jax.jit(tx.update)(grads, state, params)
  return tx, params, state


def _as_restored(node: Any) -> Any:
  """What orbax gives back without a target: every node a dict by field name, sequences lists."""
  if quantized.is_quantized(node):
    named = {"codes": node.codes, "scales": node.scales, "rest": node.rest}
    return {key: _as_restored(value) for key, value in named.items() if value is not None}
  named = _fields.children(node)
  if named is None:
    return np.asarray(node)
  if isinstance(node, (list, tuple)) and not hasattr(node, "_fields"):
    return [_as_restored(child) for child in named.values()]
  return {key: _as_restored(child) for key, child in named.items()}


def _assert_same_readings(got: Any, expected: Any) -> None:
  assert set(got) == set(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)


@pytest.mark.parametrize(
  ("fmt", "name"),
  [("8bit", "adam"), ("4bit", "amsgrad"), ("8bit-block64", "amsgrad"), ("4bit-block32", "adam")],
)
def test_readers_work_on_a_state_whose_metadata_is_gone(fmt: str, name: str) -> None:
  """Issue 16, item 2: the layout is read from the arrays' shapes, jitted, exactly."""
  _, _, state = _read_state(_READ_FORMATS[fmt], name)
  as_dicts = _as_restored(state)
  _assert_same_readings(jax.jit(ao.diagnostics)(as_dicts), jax.jit(ao.diagnostics)(state))
  for field in ("mu", "nu") + (("nu_max",) if name == "amsgrad" else ()):
    expected = ao.dequantize(optax.tree_utils.tree_get(state, field))
    got = jax.jit(ao.dequantize)(as_dicts[0 if field != "nu_max" else 2][field])
    for key, shape in _READ_PARAMS.items():
      np.testing.assert_array_equal(np.asarray(got[key]).reshape(shape), expected[key])
    # Documented shapes: trailing dimensions flattened after the kept ones.
    assert got["odd"].shape == (5001,)
    assert got["tiny"].shape == (10,)


def test_readers_work_on_nnx_state_and_an_orbax_checkpoint(tmp_path: pathlib.Path) -> None:
  import orbax.checkpoint as ocp
  from flax import nnx

  tx = _both(ao.Quantized(4), diagnostics=True)
  model, x, params, plain_step = _model_step(tx)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  step = nnx.jit(lambda m, o: o.update(m, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(m)))
  state = tx.init(params)
  for _ in range(2):
    step(model, optimizer)
    params, state = plain_step(params, state)
  expected = jax.jit(ao.diagnostics)(state)
  _assert_same_readings(jax.jit(ao.diagnostics)(nnx.state(optimizer)), expected)
  _assert_same_readings(jax.jit(ao.diagnostics)(optimizer.opt_state), expected)
  _, _, state = _read_state(ao.Quantized(8), "amsgrad")
  save_checkpoint(tmp_path / "ckpt", state)
  restored = ocp.StandardCheckpointer().restore(tmp_path / "ckpt")
  _assert_same_readings(jax.jit(ao.diagnostics)(restored), jax.jit(ao.diagnostics)(state))


@settings(max_examples=200, deadline=None)
@given(
  shape=st.lists(st.integers(0, 700), min_size=0, max_size=4).map(tuple),
  bits=st.sampled_from([8, 4]),
  block=st.integers(1, 300).map(lambda b: 2 * b),
)
def test_the_stored_shapes_tell_the_layout(shape: tuple[int, ...], bits: int, block: int) -> None:
  layout = _block_layout.plan(shape, bits, block)
  assert _block_layout.read(layout.codes_shape, layout.scales_shape) == layout
  assert layout.size * math.prod(layout.lead) == math.prod(shape)
  assert layout.block <= block
  assert layout.padding < max(layout.blocks, 1)  # equal blocks waste less than one each


# The case (a leaf under min_size beside a large one, gradients 1 and 1e-4),
# with a leaf of whole rows and one of equal padded blocks.
_FLAT_SHAPES = {"big": (8200,), "small": (48,), "rows": (64, 128), "odd": (77, 61)}
_FLAT_FORMATS = {
  "4bit": ao.Quantized(4),
  "8bit-block64-all": ao.Quantized(8, block_size=64, min_size=0),
}


@pytest.mark.parametrize("fmt", _FLAT_FORMATS.values(), ids=_FLAT_FORMATS.keys())
def test_fast_path_stores_each_leaf_as_the_tree_path(fmt: ao.Quantized) -> None:
  """Issue 16, item 3: blocks and min_size per leaf, in a few flat arrays per buffer."""
  tx = _both(fmt)
  params = {k: jnp.zeros(shape) for k, shape in _FLAT_SHAPES.items()}
  grads = {
    k: jnp.cos(jnp.arange(math.prod(s), dtype=jnp.float32)).reshape(s)
    for k, s in _FLAT_SHAPES.items()
  }
  grads = {**grads, "big": jnp.ones(8200), "small": jnp.full(48, 1e-4)}
  flat, flat_grads = flatten_params(params, multiple_of=8), flatten_params(grads, multiple_of=8)
  update = jax.jit(tx.update)
  tree_state, flat_state = tx.init(params), tx.init(flat)
  for _ in range(5):
    tree_updates, tree_state = update(grads, tree_state, params)
    flat_updates, flat_state = update(flat_grads, flat_state, flat)
  for field in ("mu", "nu"):
    tree_moment = ao.dequantize(optax.tree_utils.tree_get(tree_state, field))
    flat_moment = ao.dequantize(optax.tree_utils.tree_get(flat_state, field)).tree()
    assert_trees_equal(flat_moment, tree_moment)  # the same codes and scales, leaf by leaf
  # The updates as the float32 fast path's: within its 4 ulp of the tree (tests/test_flat.py).
  for key, value in tree_updates.items():
    assert int(np.max(oracles.ulp_distance(flat_updates.tree()[key], value))) <= 4, key
  assert float(flat_updates.tree()["small"][0]) == pytest.approx(-1e-2, rel=0.01)  # lr sign(g)
  arrays = jax.tree.leaves(optax.tree_utils.tree_get(flat_state, "mu"))
  # Codes and scales per run (big, rows and odd are stored unlike one another), and the
  # float32 rest (the small leaf, the padding); a run per leaf would be 2 * 4 + 1.
  assert len(arrays) == (7 if fmt.min_size else 2 * 4 + 1)


@pytest.mark.parametrize("fmt", _FLAT_FORMATS.values(), ids=_FLAT_FORMATS.keys())
def test_fast_path_state_without_its_metadata_is_read_exactly(fmt: ao.Quantized) -> None:
  """As a checkpoint restored without a target leaves it: the runs are told by the shapes."""
  tx = _both(fmt, diagnostics=True)
  # Two equal leaves of padded blocks, stored as one run of two.
  shapes = {**_FLAT_SHAPES, "odd_too": (77, 61)}
  flat = flatten_params({k: jnp.zeros(shape) for k, shape in shapes.items()}, multiple_of=8)
  grads = jax.tree.map(lambda x: jnp.sin(jnp.arange(x.size, dtype=jnp.float32)), flat)
  _, state = jax.jit(tx.update)(grads, tx.init(flat), flat)
  as_dicts = _as_restored(state)
  _assert_same_readings(jax.jit(ao.diagnostics)(as_dicts), jax.jit(ao.diagnostics)(state))
  for field in ("mu", "nu"):
    got = jax.jit(ao.dequantize)(as_dicts[0][field])["buffers"]
    (expected,) = ao.dequantize(optax.tree_utils.tree_get(state, field)).buffers
    np.testing.assert_array_equal(got[0], expected)


@pytest.mark.parametrize("path", ["tree", "flat"])
def test_a_stored_moment_comes_back_from_jit_as_the_same_frozen_value(path: str) -> None:
  """jit's dispatch flattens and unflattens stored moments each step, by a fast unflatten.

  A leaf has codes and scales; a fast-path buffer with a leaf under ``min_size`` has a
  float32 rest too. What comes back equals what went in, is still frozen, and is named
  by the same key paths (which checkpoints use).
  """
  params = {"w": jnp.zeros((50, 100)), "small": jnp.zeros(10)}
  params = flatten_params(params, multiple_of=8) if path == "flat" else params
  state = _both(ao.Quantized(8)).init(params)
  stored = optax.tree_utils.tree_get(state, "mu")
  back = jax.jit(lambda s: s)(stored)
  assert jax.tree.structure(back, is_leaf=quantized.is_quantized) == jax.tree.structure(
    stored, is_leaf=quantized.is_quantized
  )
  pairs = zip(
    jax.tree.leaves(back, is_leaf=quantized.is_quantized),
    jax.tree.leaves(stored, is_leaf=quantized.is_quantized),
    strict=True,
  )
  for got, expected in pairs:
    if not quantized.is_quantized(expected):
      continue
    assert (got.rest is None) == (expected.rest is None) == (path == "tree")
    assert all(
      jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), got, expected))
    )
    static = ("logical_shape", "bits", "signed", "layout", "runs")
    assert [getattr(got, f) for f in static] == [getattr(expected, f) for f in static]
    with pytest.raises(AttributeError):
      got.bits = 4  # type: ignore[misc]
  keys = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(back)[0]]
  assert keys == [
    jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(stored)[0]
  ]
  assert any(key.endswith(".rest") for key in keys) == (path == "flat")


def test_sharded_leaves_keep_their_sharding_without_gathering() -> None:
  """Issue 16, item 4: rows and columns of 8 devices, each holding whole rows of blocks."""
  run = run_python(["tests/quantized_sharding_checks.py"], host_devices=8)
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads(run.stdout.strip().splitlines()[-1])
  for name, result in results.items():  # 8 and 4 bits, explicit and automatic axes
    assert result["same"], name  # one jitted step per call, as training runs
    assert result["all_gathers"] == 0, name
    assert result["codes"]["rows"].startswith("P('data'"), (name, result["codes"])
    assert result["codes"]["cols"].startswith("P(None, 'data'"), (name, result["codes"])
    assert result["scales"]["cols"].startswith("P(None, 'data'"), (name, result["scales"])
    (warning,) = result["warnings"]  # once, for mu and nu alike, naming the leaf and spec
    assert "['cross']" in warning, warning
    assert "PartitionSpec('data', None)" in warning, warning


def test_states_command_reports_bad_flags_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
  from adam_optax import cli

  with pytest.raises(SystemExit) as exit_info:
    cli.main(["states", "--size", "0"])
  assert exit_info.value.code == 2
  assert "--size" in capsys.readouterr().err
