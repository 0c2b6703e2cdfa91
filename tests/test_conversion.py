"""ao.convert_state: moving a state between storage formats, and between optax and ours.

Independent oracles: optax's own optimizers (a run that never left optax), the
storage policy's own encoding (``quantized.encode``, a step's rounding) and a
checkpoint restored into the other format (the same plan, read from disk).
"""

from __future__ import annotations

import functools
import pathlib
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from matrix import NAMES, OPTIMIZERS, STORAGES, both, storage_kwargs
from training import assert_trees_equal, train

import adam_optax as ao
from adam_optax import conversion, quantized
from adam_optax.checkpoint import restore_checkpoint, save_checkpoint

HALF = 50  # steps before the switch and after it: 100 in all

# 8,192 entries: large enough for a quantized moment (min_size 4,096); "b" stays float32.
SHAPES = {"w": (64, 128), "b": (8,)}


def _params() -> dict[str, jax.Array]:
  keys = jax.random.split(jax.random.key(0), len(SHAPES))
  return {n: jax.random.normal(k, s) for k, (n, s) in zip(keys, SHAPES.items(), strict=True)}


def _grads(steps: int, seed: int = 1) -> dict[str, jax.Array]:
  """Gradients whose scales span 10^4 inside a block, so codes of every magnitude occur."""
  keys = jax.random.split(jax.random.key(seed), len(SHAPES))
  return {
    n: jax.random.normal(k, (steps, *s)) * jnp.logspace(-2, 2, s[-1])
    for k, (n, s) in zip(keys, SHAPES.items(), strict=True)
  }


@functools.cache
def _trainer(tx: optax.GradientTransformation) -> Callable[..., Any]:
  """``train`` for ``tx``, compiled once per optimizer and input shapes."""
  return jax.jit(functools.partial(train, tx))


def _half(grads: Any, which: int) -> Any:
  return jax.tree.map(lambda g: g[which * HALF : (which + 1) * HALF], grads)


@pytest.mark.parametrize("name", NAMES)
def test_optax_and_ours_continue_each_other_bit_for_bit_inside_a_chain(
  name: str, tmp_path: pathlib.Path
) -> None:
  # The bare optimizers are tested inside nnx.Optimizer below.
  ours, theirs = (optax.chain(optax.clip_by_global_norm(1.0), tx) for tx in both(name, 1e-2))
  params, grads = _params(), _grads(2 * HALF)
  run_ours, run_theirs = _trainer(ours), _trainer(theirs)
  # The oracle: 100 steps of optax, never converted.
  halfway = run_theirs(params, theirs.init(params), _half(grads, 0))
  reference = run_theirs(*halfway, _half(grads, 1))
  # 50 steps of optax, converted to ours (in memory, or from its checkpoint), 50 more.
  converted = ao.convert_state(halfway[1], ours.init(params))
  save_checkpoint(tmp_path / "optax", halfway[1])
  assert_trees_equal(restore_checkpoint(tmp_path / "optax", ours.init(params)), converted)
  ours_after = run_ours(halfway[0], converted, _half(grads, 1))
  # And the other way round.
  halfway = run_ours(params, ours.init(params), _half(grads, 0))
  converted = ao.convert_state(halfway[1], theirs.init(params))
  save_checkpoint(tmp_path / "ours", halfway[1])
  assert_trees_equal(restore_checkpoint(tmp_path / "ours", theirs.init(params)), converted)
  theirs_after = run_theirs(halfway[0], converted, _half(grads, 1))

  assert_trees_equal(theirs_after, reference)
  assert_trees_equal(ours_after[0], reference[0])
  assert_trees_equal(ao.convert_state(ours_after[1], theirs.init(params)), reference[1])


WRAPPED: dict[str, Callable[[Any], optax.GradientTransformation]] = {
  "inject_hyperparams": lambda opt: optax.inject_hyperparams(opt)(learning_rate=1e-2),
  "multi_steps": lambda opt: optax.MultiSteps(opt(1e-2), 2),
  "apply_if_finite": lambda opt: optax.apply_if_finite(opt(1e-2), 3),
  "multi_transform": lambda opt: optax.multi_transform(
    {"adam": opt(1e-2), "sgd": optax.sgd(1e-2)}, {"w": "adam", "b": "sgd"}
  ),
  "masked": lambda opt: optax.masked(opt(1e-2), {"w": True, "b": False}),
}


@pytest.mark.parametrize("wrapper", WRAPPED)
def test_the_moments_are_found_inside_every_optax_wrapper(wrapper: str) -> None:
  ours, theirs = (WRAPPED[wrapper](opt) for opt in OPTIMIZERS["amsgrad"])
  params, grads = _params(), jax.tree.map(lambda g: g[0], _grads(1))
  state = theirs.init(params)
  for _ in range(3):
    state = theirs.update(grads, state, params)[1]
  converted = ao.convert_state(state, ours.init(params))
  assert_trees_equal(
    ours.update(grads, converted, params)[0], theirs.update(grads, state, params)[0]
  )
  assert_trees_equal(ao.convert_state(converted, theirs.init(params)), state)


def _batches(start: int) -> tuple[jax.Array, jax.Array]:
  """Regression batches of steps ``start`` .. ``start + HALF``, stacked for a scan."""
  kx, ky = jax.random.split(jax.random.key(100 + start))
  return jax.random.normal(kx, (HALF, 16, 8)), jax.random.normal(ky, (HALF, 16, 3))


@functools.partial(jax.jit, static_argnums=0)
def _nnx_scan(graphdef: nnx.GraphDef, state: nnx.State, batches: Any) -> nnx.State:
  def step(state: nnx.State, batch: tuple[jax.Array, jax.Array]) -> tuple[nnx.State, None]:
    model, optimizer = nnx.merge(graphdef, state)
    x, y = batch
    optimizer.update(model, nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model))
    return nnx.state((model, optimizer)), None

  return jax.lax.scan(step, state, batches)[0]


def _nnx_train(model: nnx.Linear, optimizer: nnx.Optimizer, start: int) -> None:
  """``HALF`` steps of ``optimizer.update`` from step ``start``, in one jitted scan."""
  graphdef, state = nnx.split((model, optimizer))
  nnx.update((model, optimizer), _nnx_scan(graphdef, state, _batches(start)))


@pytest.mark.parametrize("name", NAMES)
def test_an_nnx_optimizer_moves_between_optax_and_ours(name: str) -> None:
  runs, txs = {}, both(name, 1e-2)  # one pair of optimizers: each compiles once
  for first, second in [(1, 1), (1, 0), (0, 1)]:  # optax throughout; optax then ours; and back
    model = nnx.Linear(8, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, txs[first], wrt=nnx.Param)
    _nnx_train(model, optimizer, 0)
    switched = nnx.Optimizer(model, txs[second], wrt=nnx.Param)
    nnx.update(switched, ao.convert_state(nnx.state(optimizer), nnx.state(switched)))
    _nnx_train(model, switched, HALF)
    runs[first, second] = (nnx.state(model), nnx.state(switched))
  optax_only = runs[1, 1]
  assert int(optax_only[1]["step"][...]) == 2 * HALF
  assert_trees_equal(runs[1, 0][0], optax_only[0])
  assert_trees_equal(runs[0, 1], optax_only)
  assert_trees_equal(ao.convert_state(runs[1, 0][1], optax_only[1]), optax_only[1])


def _stored(name: str, storage: str) -> optax.GradientTransformation:
  return OPTIMIZERS[name][0](1e-2, **storage_kwargs(storage))


# Each format once as the source and once as the target.
CHANGES = [("float32", "8bit"), ("8bit", "4bit"), ("4bit", "bfloat16"), ("bfloat16", "float32")]


def _lossless(start: str, to: str) -> bool:
  """Whether storing ``start``'s moments as ``to`` keeps every value: a copy, or into float32."""
  return start == to or to == "float32"


@pytest.mark.filterwarnings("ignore:b2=0.999 cannot move")
@pytest.mark.parametrize(("start", "to"), CHANGES, ids=[f"{a}-{b}" for a, b in CHANGES])
def test_a_checkpoint_restored_into_another_storage_equals_converting_in_memory(
  start: str, to: str, tmp_path: pathlib.Path
) -> None:
  name = "amsgrad"  # the three stored moments: mu, nu and the running maximum
  old, new = _stored(name, start), _stored(name, to)
  params, grads = _params(), _grads(3)
  params, state = train(old, params, old.init(params), jax.tree.map(lambda g: g[:2], grads))
  save_checkpoint(tmp_path / "ckpt", {"params": params, "opt_state": state})

  lossy = not _lossless(start, to)
  in_memory = ao.convert_state(state, new.init(params), lossy=lossy)
  abstract = jax.eval_shape(lambda: {"params": params, "opt_state": new.init(params)})
  if lossy:
    with pytest.raises(ValueError, match=re.escape("would round the leaf at opt_state.0.mu")):
      restore_checkpoint(tmp_path / "ckpt", abstract)
  restored = restore_checkpoint(tmp_path / "ckpt", abstract, lossy=lossy)
  assert_trees_equal(restored["opt_state"], in_memory)
  assert_trees_equal(restored["params"], params)
  # The converted state is the new optimizer's, in its format, and trains on.
  assert jax.tree.structure(in_memory) == jax.tree.structure(new.init(params))
  last, run = jax.tree.map(lambda g: g[2:], grads), _trainer(new)
  assert_trees_equal(run(params, restored["opt_state"], last), run(params, in_memory, last))


def _moments(state: Any) -> list[jax.Array]:
  """mu, nu and nu_max of a state, decoded to float32, leaf by leaf."""
  found = [optax.tree_utils.tree_get(state, key) for key in ("mu", "nu", "nu_max")]
  return jax.tree.leaves(ao.dequantize([f for f in found if f is not None]))


@functools.cache
def _round_trip(bits: int) -> tuple[Any, Any, Any, Any]:
  """An AMSGrad state, its conversion to ``bits``-bit codes and back, and the codes' layout."""
  wide, narrow = _stored("amsgrad", "float32"), _stored("amsgrad", f"{bits}bit")
  params = _params()
  state = train(wide, params, wide.init(params), _grads(3))[1]
  coded = ao.convert_state(state, narrow.init(params), lossy=True)
  return state, coded, ao.convert_state(coded, state), narrow.init(params)


@pytest.mark.parametrize("bits", [8, 4])
def test_float32_to_codes_and_back_rounds_each_moment_once(bits: int) -> None:
  state, coded, back, layout = _round_trip(bits)
  for key in ("mu", "nu", "nu_max"):
    x, y, like = (optax.tree_utils.tree_get(s, key) for s in (state, back, layout))
    # Exactly one step's rounding: what the storage policy stores for these values.
    once = jax.tree.map(jax.jit(lambda v, s: quantized.decode(quantized.encode(v, s))), x, like)
    if jax.default_backend() == "cpu":
      assert_trees_equal(y, once)
    else:  # one program against convert_state's: a GPU may round a product 1 ulp apart
      jax.tree.map(lambda a, b: np.testing.assert_array_max_ulp(a, b, maxulp=2), y, once)
  # Decoding is exact, and so codes -> float32 -> codes changes nothing.
  assert_trees_equal(ao.convert_state(back, layout, lossy=True), coded)


@pytest.mark.parametrize("bits", [8, 4])
def test_float32_to_codes_and_back_is_within_the_codebooks_relative_error(bits: int) -> None:
  state, _, back, layout = _round_trip(bits)
  for key in ("mu", "nu", "nu_max"):
    x, y, stored = (optax.tree_utils.tree_get(s, key)["w"] for s in (state, back, layout))
    # Within the codes' range (here: 5 octaves under the leaf's largest value, so
    # inside every block's range), by at most the codebook's relative error.
    inside = jnp.abs(x) >= jnp.max(jnp.abs(x)) / 32
    error = jnp.max(jnp.where(inside, jnp.abs(y - x) / jnp.abs(x), 0.0))
    assert float(error) <= quantized.relative_error(stored), key


@pytest.mark.filterwarnings("ignore:b2=0.999 cannot move")
def test_bfloat16_moments_widen_exactly_and_narrow_as_a_step_does() -> None:
  wide, narrow = _stored("adam", "float32"), _stored("adam", "bfloat16")
  params = _params()
  state = train(wide, params, wide.init(params), _grads(3))[1]
  halved = ao.convert_state(state, narrow.init(params), lossy=True)
  for x, y in zip(_moments(state), _moments(halved), strict=True):
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, x.astype(jnp.bfloat16))
  for x, y in zip(_moments(halved), _moments(ao.convert_state(halved, state)), strict=True):
    np.testing.assert_array_equal(y, x.astype(jnp.float32))


def test_a_dropping_conversion_needs_the_flag_and_names_what_it_drops() -> None:
  params = _params()
  amsgrad, adam = ao.amsgrad(1e-2), ao.adam(1e-2)
  state = train(amsgrad, params, amsgrad.init(params), _grads(2))[1]
  with pytest.raises(ValueError, match=re.escape("would drop 2.nu_max")) as error:
    ao.convert_state(state, adam.init(params))
  assert "lossy=True" in str(error.value)
  assert "\n" not in str(error.value)
  dropped = ao.convert_state(state, adam.init(params), lossy=True)
  assert_trees_equal(dropped[0], state[0])
  # The other way, the running maximum cannot be made up.
  with pytest.raises(ValueError, match=re.escape("target has a leaf at 2.nu_max.b")):
    ao.convert_state(dropped, amsgrad.init(params), lossy=True)


# Every pair of the formats, and the 16-bit dtypes into each other.
ROUNDINGS = [(a, b) for a in STORAGES for b in STORAGES] + [
  ("bfloat16", "float16"),
  ("float16", "bfloat16"),
  ("float16", "float32"),
]
# Each narrowing target's relative rounding, as the error states it: half an ulp
# (2^-(mantissa bits + 1)); the first moment's maps' delta at 8 bits, 1/(2^4 + 1),
# and at 4 bits, 3/5 (docs/low_memory_states.md).
BOUNDS = {
  "bfloat16": "2^-8 of it (half an ulp of bfloat16, in range)",
  "float16": "2^-11 of it (half an ulp of float16, in range)",
  "8bit": "0.0588 of it (quantized.relative_error, in range)",
  "4bit": "0.6 of it (quantized.relative_error, in range)",
}


@functools.cache
def _trained_adam() -> Any:
  """An Adam state with float32 moments after 3 steps: values to round."""
  tx, params = _stored("adam", "float32"), _params()
  return train(tx, params, tx.init(params), _grads(3))[1]


@pytest.mark.filterwarnings("ignore:b2=0.999 cannot move")
@pytest.mark.parametrize(("start", "to"), ROUNDINGS, ids=[f"{a}-{b}" for a, b in ROUNDINGS])
def test_a_rounding_conversion_needs_the_flag_and_names_the_leaf_and_the_bound(
  start: str, to: str
) -> None:
  storages = {**STORAGES, "float16": jnp.float16}
  old, new = (ao.adam(1e-2, mu_dtype=storages[f], nu_dtype=storages[f]) for f in (start, to))
  params = _params()
  state = ao.convert_state(_trained_adam(), old.init(params), lossy=True)
  like = new.init(params)
  if _lossless(start, to):  # a copy, or every value held by the wider dtype: no flag
    converted = ao.convert_state(state, like)
    widened = [[x.astype(jnp.float32) for x in _moments(s)] for s in (converted, state)]
    assert_trees_equal(*widened)
    return
  # The first moment's small leaf "b" stays float32 in a quantized format.
  first = "b" if to in ("bfloat16", "float16") else "w"
  where = re.escape(f"would round the leaf at 0.mu.{first} from")
  with pytest.raises(ValueError, match=where) as error:
    ao.convert_state(state, like)
  message = str(error.value)
  assert f"each value by up to {BOUNDS[to]} (pass lossy=True to convert it)" in message, message
  assert "\n" not in message
  converted = ao.convert_state(state, like, lossy=True)
  assert jax.tree.structure(converted) == jax.tree.structure(like)
  layouts = [[conversion.shape_dtype(x) for x in jax.tree.leaves(t)] for t in (converted, like)]
  assert layouts[0] == layouts[1]


MISFITS = {
  "another_model": (
    lambda: ao.adam(1e-2).init({"w": jnp.zeros((64, 127)), "b": jnp.zeros(8)}),
    "the leaf at 0.mu.w is float32[64, 128] in the state but float32[64, 127] in the target",
  ),
  "complex_params": (
    lambda: ao.adam(1e-2).init({n: jnp.zeros(s, jnp.complex64) for n, s in SHAPES.items()}),
    "the leaf at 0.mu.b is float32[8] in the state but complex64[8] in the target",
  ),
  "a_missing_leaf": (
    lambda: ao.adam(1e-2).init({"w": jnp.zeros((64, 128))}),
    "the state has a leaf at 0.mu.b (float32[8]) that the target lacks",
  ),
}


@pytest.mark.parametrize(("make_target", "message"), MISFITS.values(), ids=MISFITS.keys())
def test_what_cannot_fit_is_one_line_naming_the_first_path(
  make_target: Callable[[], Any], message: str
) -> None:
  state = ao.adam(1e-2).init(_params())
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    ao.convert_state(state, make_target())
  assert "\n" not in str(error.value)


def test_diagnostics_records_are_carried_zeroed_or_dropped_and_written_again() -> None:
  params, grads = _params(), _grads(4)
  schedule = optax.linear_schedule(1e-2, 0.0, 10)
  plain, watched = ao.adam(schedule), ao.adam(schedule, diagnostics=True)
  first, last = (jax.tree.map(lambda g, s=s: g[s], grads) for s in (slice(0, 3), slice(3, 4)))
  run = _trainer(watched)
  params, state = run(params, watched.init(params), first)
  reference = run(params, state, last)
  records = lambda s: (s[2], s[3].alpha)  # normalize's and scale_by_lr's  # noqa: E731
  eight = ao.adam(schedule, mu_dtype=ao.Quantized(8), diagnostics=True).init(params)
  assert_trees_equal(records(ao.convert_state(state, eight, lossy=True)), records(state))
  dropped = ao.convert_state(state, plain.init(params))  # dropped, no flag needed
  zeroed = ao.convert_state(dropped, watched.init(params))
  assert_trees_equal(records(zeroed), records(watched.init(params)))
  assert int(zeroed[3].inner_state.count) == 3  # the schedule's count: the moments'
  assert float(ao.diagnostics(zeroed)["step_max"]) == 0.0  # "no step yet"
  # The next update writes them again: as if the state had never lost them.
  assert_trees_equal(run(params, zeroed, last), reference)


def test_a_schedule_count_is_the_moments_count() -> None:
  params = _params()
  constant, scheduled = ao.adam(1e-2), ao.adam(optax.linear_schedule(1e-2, 0.0, 10))
  state = train(constant, params, constant.init(params), _grads(3))[1]
  converted = ao.convert_state(state, scheduled.init(params))
  assert type(converted[3]) is optax.ScaleByScheduleState  # scale_by_lr's own count
  assert int(converted[3].count) == int(state[0].count) == 3
  assert_trees_equal(ao.convert_state(converted, state), state)  # derived, so dropped freely
