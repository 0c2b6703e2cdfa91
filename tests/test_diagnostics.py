"""Diagnostics: the readings against NumPy, the bounds, the reader in every kind of state.

The readings are computed from the state when ``ao.diagnostics`` is called
(docs/diagnostics.md), from what ``ao.normalize`` and ``ao.scale_by_lr``
recorded of the step they took, so these tests also check what turning them on
must not do: change an update, move a piece, or add anything param-sized (or
more than two small arrays) to the state; and that the readings are those of
the step taken, whatever the chain was built with.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fresh_python import run_python
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from matrix import OPTIMIZERS

import adam_optax as ao
from adam_optax import quantized
from adam_optax.diagnosis import READINGS, SLACK, diagnostics
from adam_optax.normalize import RECORDED, NormalizeState

PARAMS = {"w": jnp.zeros((4, 5)), "b": jnp.zeros(5)}


def _stream(rng: np.random.Generator, steps: int) -> dict[str, np.ndarray]:
  """Noisy gradients of varied scale; one coordinate grows, one is sparse, one decays."""
  w = rng.normal(size=(steps, 4, 5)) * np.exp(rng.normal(size=(steps, 1, 1)))
  w[:, 0, 0] = (0.95 / 0.9) ** np.arange(steps)  # grows: leaves the paper's bound
  w[:, 0, 1] = np.where(np.arange(steps) % 9 == 8, 5.0, 0.0)  # sparse
  w[:, 0, 2] = 0.95 ** np.arange(steps)  # decays: leaves AdaMax's paper bound
  b = rng.normal(size=(steps, 5)) + 0.5
  return {"w": w.astype(np.float32), "b": b.astype(np.float32)}


def _run(
  tx: optax.GradientTransformation, grads: Any, params: Any = PARAMS, *, record: bool = True
) -> Any:
  """Every step's diagnostics (stacked, if ``record``), the final state and the updates."""

  state, (history, updates) = _jit_scan(tx, grads, params, record)
  return jax.tree.map(np.asarray, history), state, updates


def _scan(tx: optax.GradientTransformation, grads: Any, params: Any, record: bool = True) -> Any:
  """``lax.scan`` over the steps, collecting ``diagnostics(state)`` and the updates."""

  def body(state, g):
    updates, state = tx.update(g, state, params)
    return state, (diagnostics(state) if record else {}, updates)

  return jax.lax.scan(body, tx.init(params), grads)


_jit_scan = jax.jit(_scan, static_argnums=(0, 3))


def _numpy_diagnostics(
  grads: dict[str, np.ndarray], alphas: np.ndarray, b1: float, b2: float, eps: float, kind: str
) -> dict[str, np.ndarray]:
  """The same numbers, from the same stream, in float64 NumPy, the bounds by brute force."""
  g = np.concatenate([grads["b"].reshape(len(alphas), -1), grads["w"].reshape(len(alphas), -1)], 1)
  g = g.astype(np.float64)
  m, v, v_max, out = np.zeros(g.shape[1]), np.zeros(g.shape[1]), np.zeros(g.shape[1]), []
  corrected = kind != "amsgrad_uncorrected"
  for t in range(1, len(g) + 1):
    gt = g[t - 1]
    m = b1 * m + (1 - b1) * gt
    weights = (1 - b1) * b1 ** np.arange(t)  # m_t = sum_k weights[k] g_{t-k}
    if kind == "adamax":
      v = np.maximum(b2 * v, np.abs(gt) + eps)
      m_hat, root, nu_factor = m / (1 - b1**t), v, 1.0
      weights = weights / (1 - b1**t)
      strict = np.sum(weights / b2 ** np.arange(t))
      paper = 1.0
    else:
      v = b2 * v + (1 - b2) * gt**2
      mu_factor, nu_factor = (1 - b1**t, 1 - b2**t) if corrected else (1.0, 1.0)
      m_hat, v_hat = m / mu_factor, v / nu_factor
      weights = weights / mu_factor
      if kind.startswith("amsgrad"):
        v_max = v_hat = np.maximum(v_max, v_hat)
      root = np.sqrt(v_hat) + eps
      strict = np.sqrt(nu_factor / (1 - b2) * np.sum(weights**2 / b2 ** np.arange(t)))
      paper = (1 - b1) / np.sqrt(1 - b2) if (1 - b1) > np.sqrt(1 - b2) else 1.0
    snr = np.abs(m_hat) / root
    alpha = alphas[t - 1]
    out.append(
      {
        "step_max": alpha * snr.max(),
        "step_mean": alpha * snr.mean(),
        "bound_paper": alpha * paper,
        "bound_strict": alpha * strict,
        "above_paper": np.mean(snr > paper),
        "above_strict": np.mean(snr > strict),
        "snr_max": snr.max(),
        "snr_mean": snr.mean(),
        "bias_correction_mu": 1 - b1**t if corrected else 1.0,
        "bias_correction_nu": nu_factor,
        "mu_norm": np.linalg.norm(m_hat),
        "nu_norm": np.linalg.norm(np.sqrt(v_hat) if kind != "adamax" else v),
        "alpha": alpha,
      }
    )
  return {key: np.array([step[key] for step in out]) for key in out[0]}


SCHEDULE = optax.exponential_decay(0.1, transition_steps=10, decay_rate=0.5)
CASES: dict[str, tuple[Callable[..., optax.GradientTransformation], dict[str, Any]]] = {
  "adam": (ao.adam, {}),
  "adam_schedule": (ao.adam, {}),
  "adamw": (ao.adamw, {"weight_decay": 0.3}),
  "nadam": (ao.nadam, {}),
  "nadamw": (ao.nadamw, {"weight_decay": 0.3}),
  "adamax": (ao.adamax, {}),
  "amsgrad": (ao.amsgrad, {}),
  "amsgrad_uncorrected": (ao.amsgrad, {"bias_correction_mu": False, "bias_correction_nu": False}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_recorded_values_equal_numpy(case: str, rng: np.random.Generator) -> None:
  steps, b1, b2, eps = 40, 0.9, 0.95, 1e-8
  factory, kwargs = CASES[case]
  lr = SCHEDULE if case == "adam_schedule" else 0.05
  tx = factory(lr, b1, b2, eps, **kwargs, diagnostics=True)
  grads = _stream(rng, steps)
  history, _, _ = _run(tx, grads)
  alphas = np.asarray([SCHEDULE(t) for t in range(steps)]) if callable(lr) else np.full(steps, lr)
  # NAdam's readings are Adam's step from the same moments (g_t is not in the state).
  kind = case.removesuffix("_schedule").removesuffix("w").replace("nadam", "adam")
  expected = _numpy_diagnostics(grads, alphas, b1, b2, eps, kind)
  assert set(history) == set(expected) == set(READINGS)
  for key, want in expected.items():
    np.testing.assert_allclose(history[key], want, rtol=2e-5, atol=1e-12, err_msg=key)
  assert history["above_paper"].max() > 0  # the growing coordinate leaves the paper's bound
  assert history["above_strict"].max() == 0


# eps = 1e-30 makes the bound as tight as it gets while 0/0 stays 0.
# The optimizers of tests/matrix.py whose step the bounds describe (AdamW's decoupled
# weight decay is not in them), and AMSGrad without bias correction.
BOUNDED = {
  **{
    name: functools.partial(OPTIMIZERS[name][0], eps=1e-30)
    for name in ("adam", "nadam", "adamax", "amsgrad")
  },
  "amsgrad_uncorrected": functools.partial(
    OPTIMIZERS["amsgrad"][0], eps=1e-30, bias_correction_mu=False, bias_correction_nu=False
  ),
}
STEPS, STREAMS = 64, 8


@functools.cache
def _bound_run(name: str) -> Callable[..., Any]:
  """One compiled run per optimizer; b1 and b2 are traced (inject_hyperparams)."""
  factory = optax.inject_hyperparams(BOUNDED[name])

  def run(b1, b2, grads):
    tx = factory(learning_rate=1.0, b1=b1, b2=b2, diagnostics=True)
    _, (history, _) = _scan(tx, grads, jnp.zeros(STREAMS))
    return history

  return jax.jit(run)


@pytest.mark.parametrize("shape", [(3 << 20) + 1000, (1024, 3072)])
def test_sums_over_millions_of_coordinates_keep_float32_accuracy(shape, rng) -> None:
  # A float32 sum run in one sequence over millions of elements would drift by percents.
  b1, b2, eps = 0.9, 0.999, 1e-8
  g = rng.lognormal(size=shape).astype(np.float32) * rng.choice([-1, 1], size=shape)
  tx = ao.adam(1e-3, b1, b2, eps, diagnostics=True)
  _, state = jax.jit(tx.update)(jnp.asarray(g), tx.init(jnp.zeros(shape)))
  stats = {key: float(value) for key, value in diagnostics(state).items()}
  g64 = g.astype(np.float64)
  m_hat, v_hat = g64, g64**2  # bias-corrected moments of the first step
  snr = np.abs(m_hat) / (np.sqrt(v_hat) + eps)
  np.testing.assert_allclose(stats["mu_norm"], np.linalg.norm(m_hat), rtol=1e-6)
  # v-hat itself is 6.5e-6 off in float32 (1 - b2**1 there is 1.0000467e-3, not 1e-3),
  # which the numbers made from it inherit; a sum drifting by 0.3% would still fail.
  np.testing.assert_allclose(stats["nu_norm"], np.sqrt(v_hat.sum()), rtol=1e-5)
  np.testing.assert_allclose(stats["snr_mean"], snr.mean(), rtol=1e-5)
  np.testing.assert_allclose(stats["snr_max"], snr.max(), rtol=1e-5)


def _tight_streams(name: str, b1: float, b2: float, growth: float, exponents, signs) -> jax.Array:
  """Gradients ``(STEPS, STREAMS)``: one stream at the strict bound, one growing, noise."""
  t = np.arange(1, STEPS + 1)
  # Cauchy–Schwarz is tight for g_{t-k} ∝ (b1/b2)^k (AdaMax: ∝ b2^-k): one stream is that.
  tight_rate = 1 / b2 if name == "adamax" else (b2 / b1 if b1 > 0 else 1.0)
  tight = np.exp(np.maximum((t - STEPS) * np.log(tight_rate), -12 * np.log(10)))
  grown = np.exp(np.clip((t - STEPS) * np.log(growth), -27, 27))
  noise = np.where(signs, -1, 1) * 10.0**exponents
  return jnp.asarray(np.column_stack([tight, grown, noise]), jnp.float32)


# b1 is 0 or at least 1e-3: a subnormal b1 would overflow the tight stream's rate b2/b1.
_STREAMS = {
  "b1": st.one_of(st.just(0.0), st.floats(1e-3, 0.99)),
  "b2": st.floats(0.5, 0.9999),
  "growth": st.floats(0.3, 3.0),
  "exponents": hnp.arrays(np.float64, (STEPS, STREAMS - 2), elements=st.floats(-6, 6)),
  "signs": hnp.arrays(np.bool_, (STEPS, STREAMS - 2)),
}


@settings(max_examples=15, deadline=None)
@given(
  name=st.sampled_from(sorted(BOUNDED)),
  **_STREAMS,
)
def test_strict_bound_is_never_exceeded(name, b1, b2, growth, exponents, signs) -> None:
  grads = _tight_streams(name, b1, b2, growth, exponents, signs)
  history = jax.tree.map(np.asarray, _bound_run(name)(jnp.float32(b1), jnp.float32(b2), grads))
  assert np.all(history["above_strict"] == 0)
  assert np.all(history["step_max"] <= history["bound_strict"] * (1 + SLACK))


@pytest.mark.parametrize(
  ("b1", "b2", "paper"),
  [
    (0.0, 0.999, 1 / np.sqrt(1e-3)),
    (0.0, 0.0, 1.0),
    (0.99, 0.999, 1.0),
    (0.9, 0.999, 0.1 / np.sqrt(1e-3)),
  ],
)
def test_paper_bound_cases(b1: float, b2: float, paper: float) -> None:
  tx = ao.adam(1.0, b1, b2, diagnostics=True)
  _, state = jax.jit(tx.update)(jnp.ones(2), tx.init(jnp.zeros(2)))
  stats = diagnostics(state)
  np.testing.assert_allclose(stats["bound_paper"], paper, rtol=1e-6)
  assert np.isfinite(stats["bound_strict"])  # also for b2 = 0 at t = 1
  assert stats["above_strict"] == 0


# Rounded storage: the step used the unrounded moments, the reader reads them rounded. Blocks
# of two elements, so that a coordinate's place in its map is set by its block's other one.
STORED: dict[str, Any] = {
  "float32": jnp.float32,
  "bfloat16": jnp.bfloat16,
  "8-bit": ao.Quantized(8, block_size=2, min_size=0),
  "4-bit": ao.Quantized(4, block_size=2, min_size=0),
}
# How much longer u_t can read than the step's, (1 + a_m) / sqrt(1 - b_v) (AdaMax: / (1 - b_v)),
# where m is read high by at most a_m and v (AdaMax's u_t) low by at most b_v: the table of
# docs/diagnostics.md.
ALLOWANCE = {
  "float32": {"adam": 1.0, "adamax": 1.0},
  "bfloat16": {
    "adam": (1 + 1 / 257) / np.sqrt(1 - 1 / 257),
    "adamax": (1 + 1 / 257) / (1 - 1 / 257),
  },
  "8-bit": {"adam": 18 / 17 * 33 / 32, "adamax": 18 / 17 * (33 / 32) ** 2},
  "4-bit": {"adam": 2 * 3 / 2, "adamax": 2 * 9 / 4},
}
_PAST = 1 + 2**-17  # just past a cut (or just under one, divided by it)
# Where each storage reads m furthest high and v furthest low (tests/test_codes.py and
# test_precision.py find every cut): (m over its block's largest, which is 1; v itself, or
# None where its place is set by the block alone; sqrt(v) over its block's largest).
WORST: dict[str, tuple[float, float | None, float]] = {
  "float32": (0.75, None, 0.375),
  # a tie of bfloat16 and one past it: m read as 2^-2 (1 + 2^-7), v as 1
  "bfloat16": (2**-2 * (1 + 2**-8) * _PAST, (1 + 2**-8) / _PAST, 0.125),
  # past the first midpoint of an octave of m's minifloats; under one of sqrt(v)'s
  "8-bit": (2**-1 * (1 + 2**-4) * _PAST, None, 2**-2 * (1 + 2**-5) / _PAST),
  # past half of m's smallest code, read as it; under sqrt(v)'s cut 1.5 / 256, read as 1 / 256
  "4-bit": (0.5 / 49 * _PAST, None, 1.5 / 256 / _PAST),
}
PAIRS = 64


@functools.cache
def _read_stored(storage: str, kind: str) -> Callable[..., Any]:
  """``(b1, m, v) -> diagnostics`` of a step at t = 1 whose moments were ``m`` and ``v``.

  Stored in ``storage``, as a step stores the moments it used: b2 = 0.75 and eps = 0, so
  that u_t = m / (b1' sqrt(4 v)) (Adam; AdaMax: m / (b1' v)), b1' = 1 - b1.
  """
  fmt = STORED[storage]

  def factory(learning_rate: float, b1: float) -> optax.GradientTransformation:
    if kind == "adam":
      return ao.adam(learning_rate, b1, 0.75, 0.0, mu_dtype=fmt, nu_dtype=fmt, diagnostics=True)
    return optax.chain(
      ao.scale_by_infinity_moments(b1, 0.75, 0.0, mu_dtype=fmt, nu_dtype=fmt),
      ao.bias_correct(),
      ao.normalize(eps=0.0, diagnostics=True),
      ao.scale_by_lr(learning_rate, diagnostics=True),
    )

  @functools.partial(jax.jit, static_argnums=1)
  def stepped(b1: jax.Array, size: int) -> Any:
    tx = optax.inject_hyperparams(factory)(learning_rate=1.0, b1=b1)
    params = jnp.zeros(size)
    return tx.update(params + 1.0, tx.init(params), params)[1]

  def read(b1: float, m: np.ndarray, v: np.ndarray) -> dict[str, jax.Array]:
    state = stepped(jnp.float32(b1), m.size)
    like = {key: optax.tree_utils.tree_get(state, key) for key in ("mu", "nu")}
    # Stored outside the jitted reader, as a state is: inside one program XLA:GPU may
    # skip a cast to bfloat16 and back (excess precision), and nothing would be rounded.
    stored = {"mu": quantized.encode(m, like["mu"]), "nu": quantized.encode(v, like["nu"])}
    return reader(optax.tree_utils.tree_set(state, **stored))

  reader = jax.jit(diagnostics)
  return read


def _moments_stepping(storage: str, kind: str, u: float) -> tuple[float, np.ndarray, np.ndarray]:
  """``(b1, m, v)`` of pairs (a block's largest, a coordinate whose step is u_t = u).

  The first pair's coordinate is where ``storage`` reads u_t longest (:data:`WORST`), the
  others anywhere; each largest element's step is shorter.
  """
  m_worst, v_worst, root_worst = WORST[storage]
  rng = np.random.default_rng(0)
  m_test = np.concatenate([[m_worst], 10 ** rng.uniform(-6, 0, PAIRS - 1)])
  ratio = np.concatenate([[root_worst], m_test[1:] * rng.uniform(0.05, 0.5, PAIRS - 1)])

  def denominator(v: Any) -> Any:  # sqrt(v-hat) with 1 - b2 = 1/4, AdaMax's u_t as it is
    return 2 * np.sqrt(v) if kind == "adam" else v

  def inverse(d: np.ndarray) -> np.ndarray:
    return (d / 2) ** 2 if kind == "adam" else d

  # 1 - b1 sets where m and v fall relative to each other (bfloat16 has no blocks to do it).
  b1 = np.float32(1 - (m_worst / denominator(v_worst) if v_worst else 0.3) / u)
  corrected = 1 - np.float64(b1)  # exact: b1 >= 1/2
  v_test = inverse(m_test / (corrected * u))
  v_largest = v_test / ratio**2  # sqrt(v_test) is ratio times its block's largest
  m = np.stack([np.ones(PAIRS), m_test], 1).ravel().astype(np.float32)
  v = np.stack([v_largest, v_test], 1).ravel().astype(np.float32)
  steps = m[1::2] / (corrected * denominator(v[1::2].astype(np.float64)))
  np.testing.assert_allclose(steps, u, rtol=3e-7)  # what the step used: u_t = u
  return float(b1), m, v


@pytest.mark.parametrize("kind", ["adam", "adamax"])
@pytest.mark.parametrize("storage", sorted(STORED))
def test_a_step_at_the_strict_bound_reads_within_it_whatever_the_storage(
  storage: str, kind: str
) -> None:
  # At t = 1 the strict bound is 1: steps at it read within it, from the storage's worst
  # places too, however the storage rounds (the allowance is true)...
  read = _read_stored(storage, kind)
  at = read(*_moments_stepping(storage, kind, 1.0))
  np.testing.assert_allclose(at["bound_strict"], 1.0, rtol=1e-6)
  assert float(at["above_strict"]) == 0
  # ...steps a little past it read above it from the worst place (the allowance is tight),
  past = read(*_moments_stepping(storage, kind, 1 + 1e-4))
  assert float(past["above_strict"]) * 2 * PAIRS >= 1
  # and steps past it by more than the allowance read above it.
  beyond = read(*_moments_stepping(storage, kind, ALLOWANCE[storage][kind] * (1 + 1e-4)))
  assert float(beyond["above_strict"]) > 0


@functools.cache
def _stored_bound_run(name: str, storage: str) -> Callable[..., Any]:
  """:func:`_bound_run` with the moments stored in ``storage``, returning the updates too."""
  fmt = STORED[storage]
  factory = optax.inject_hyperparams(functools.partial(BOUNDED[name], mu_dtype=fmt, nu_dtype=fmt))

  def run(b1, b2, grads):
    tx = factory(learning_rate=1.0, b1=b1, b2=b2, diagnostics=True)
    return _scan(tx, grads, jnp.zeros(STREAMS))[1]

  return jax.jit(run)


@settings(max_examples=12, deadline=None)
@given(
  name=st.sampled_from(["adam", "amsgrad"]),
  storage=st.sampled_from(["bfloat16", "8-bit", "4-bit"]),
  **_STREAMS,
)
@pytest.mark.filterwarnings("ignore:b2=.* cannot move")
def test_rounded_storage_reads_steps_above_the_strict_bound_only_where_they_are(
  name, storage, b1, b2, growth, exponents, signs
) -> None:
  # Rounded moments are not the exact averages the bound is proved for, so the steps of
  # the tight stream may pass it; read back, a coordinate is above only where its step is
  # (with learning rate 1 the update is -u_t).
  grads = _tight_streams(name, b1, b2, growth, exponents, signs)
  run = _stored_bound_run(name, storage)
  history, updates = jax.tree.map(np.asarray, run(jnp.float32(b1), jnp.float32(b2), grads))
  steps_above = np.mean(np.abs(updates) > history["bound_strict"][:, None], axis=1)
  assert np.all(history["above_strict"] <= steps_above)


OFF = {  # the chains the optimizers were before diagnostics existed
  "adam": (
    ao.adam,
    lambda: optax.chain(
      ao.scale_by_moments(0.9, 0.99), ao.bias_correct(), ao.normalize(1e-6), ao.scale_by_lr(0.1)
    ),
  ),
  "adamw": (
    ao.adamw,
    lambda: optax.chain(
      ao.scale_by_moments(0.9, 0.99),
      ao.bias_correct(),
      ao.normalize(1e-6),
      optax.add_decayed_weights(1e-4),
      ao.scale_by_lr(0.1),
    ),
  ),
  "nadam": (
    ao.nadam,
    lambda: optax.chain(
      ao.scale_by_moments(0.9, 0.99),
      ao.bias_correct(nesterov=True),
      ao.normalize(1e-6),
      ao.scale_by_lr(0.1),
    ),
  ),
  "adamax": (
    ao.adamax,
    lambda: optax.chain(
      ao.scale_by_infinity_moments(0.9, 0.99, 1e-6),
      ao.bias_correct(),
      ao.normalize(0.0),
      ao.scale_by_lr(0.1),
    ),
  ),
  "amsgrad": (
    ao.amsgrad,
    lambda: optax.chain(
      ao.scale_by_moments(0.9, 0.99),
      ao.bias_correct(),
      ao.running_max(),
      ao.normalize(1e-6),
      ao.scale_by_lr(0.1),
    ),
  ),
}


@pytest.mark.parametrize("name", sorted(OFF))
def test_off_is_the_plain_chain_and_on_changes_no_update(name: str, rng) -> None:
  factory, plain = OFF[name]
  grads = _stream(rng, 8)
  _, state_ref, updates_ref = _run(plain(), grads, record=False)
  _, state_off, updates_off = _run(factory(0.1, 0.9, 0.99, 1e-6), grads, record=False)
  _, state_on, updates_on = _run(factory(0.1, 0.9, 0.99, 1e-6, diagnostics=True), grads)
  assert jax.tree.structure(state_off) == jax.tree.structure(state_ref)
  assert jax.tree.structure(factory(0.1).init(PARAMS)) == jax.tree.structure(plain().init(PARAMS))
  pairs = ((state_off, state_ref), (updates_off, updates_ref), (updates_on, updates_ref))
  for got, want in pairs:
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # On: no piece moves; normalize's and scale_by_lr's states gain one small array each.
  assert len(state_on) == len(state_off)
  changed = {
    index: type(on).__name__
    for index, (on, off) in enumerate(zip(state_on, state_off, strict=True))
    if jax.tree.structure(on) != jax.tree.structure(off)
  }
  assert changed == {len(state_on) - 2: "NormalizeState", len(state_on) - 1: "ScaleByLrState"} or (
    name == "adamw"  # optax.add_decayed_weights sits between them
    and changed == {len(state_on) - 3: "NormalizeState", len(state_on) - 1: "ScaleByLrState"}
  )
  added = {
    type(piece).__name__: [np.shape(x) for x in jax.tree.leaves(piece)]
    for piece in state_on
    if isinstance(piece, NormalizeState | ao.ScaleByLrState)
  }
  assert added == {"NormalizeState": [(len(RECORDED),)], "ScaleByLrState": [()]}
  assert len(jax.tree.leaves(state_on)) - len(jax.tree.leaves(state_ref)) == 2
  if name not in ("adamw", "nadam"):  # the reading is the step itself, to a few ulp
    largest = max(float(np.max(np.abs(np.asarray(u)[-1]))) for u in updates_on.values())
    assert float(diagnostics(state_on)["step_max"]) == pytest.approx(largest, rel=1e-6)


def _one_step_stats(tx: optax.GradientTransformation, steps: int = 1) -> dict[str, np.ndarray]:
  state, update = tx.init(PARAMS), jax.jit(tx.update)
  for k in range(steps):
    _, state = update(jax.tree.map(lambda p, k=k: p + 1.0 + k, PARAMS), state, PARAMS)
  return jax.tree.map(np.asarray, diagnostics(state))


def test_reader_finds_the_state_inside_wrappers() -> None:
  plain = _one_step_stats(ao.adam(0.1, diagnostics=True))
  wrapped = {
    "chain": optax.chain(optax.clip_by_global_norm(1e9), ao.adam(0.1, diagnostics=True)),
    "inject_hyperparams": optax.inject_hyperparams(ao.adam)(learning_rate=0.1, diagnostics=True),
  }
  for name, tx in wrapped.items():
    got = _one_step_stats(tx)
    assert got.keys() == plain.keys(), name
    for key in plain:
      # inject_hyperparams hands b1, b2 as float32 arrays: 1 - b2 rounds differently.
      np.testing.assert_allclose(got[key], plain[key], rtol=2e-5, err_msg=f"{name}: {key}")
  # MultiSteps: two mini-steps of gradients 1 and 2 are one step of their mean.
  multi = _one_step_stats(optax.MultiSteps(ao.adam(0.1, diagnostics=True), 2), steps=2)
  mean = _one_step_stats(optax.chain(optax.scale(1.5), ao.adam(0.1, diagnostics=True)))
  np.testing.assert_allclose(multi["mu_norm"], mean["mu_norm"], rtol=1e-6)


def test_keys_name_the_partition_label_whatever_else_is_diagnosed() -> None:
  """One scheme: plain names for a chain over every parameter, ``label/name`` in a partition."""
  labels = {"w": "fast", "b": "slow"}
  both = _one_step_stats(
    optax.multi_transform(
      {"fast": ao.adam(0.1, diagnostics=True), "slow": ao.adam(0.01, diagnostics=True)}, labels
    )
  )
  assert set(both) == {f"{label}/{name}" for label in ("fast", "slow") for name in READINGS}
  assert float(both["fast/alpha"]) == pytest.approx(0.1)
  assert float(both["slow/alpha"]) == pytest.approx(0.01)
  assert float(both["slow/mu_norm"]) == pytest.approx(np.sqrt(5.0))  # m-hat_1 = g = 1 on 5 biases
  # One diagnosed chain in the partition: the same keys for it as beside another.
  one = _one_step_stats(
    optax.multi_transform({"fast": ao.adam(0.1, diagnostics=True), "slow": optax.sgd(0.1)}, labels)
  )
  assert set(one) == {f"fast/{name}" for name in READINGS}
  for key, value in one.items():
    np.testing.assert_array_equal(value, both[key], err_msg=key)
  # A partition inside a partition: the labels joined.
  nested = optax.multi_transform(
    {
      "net": optax.multi_transform(
        {"fast": ao.adam(0.1, diagnostics=True), "slow": optax.sgd(1)}, labels
      )
    },
    {"w": "net", "b": "net"},
  )
  assert set(_one_step_stats(nested)) == {f"net/fast/{name}" for name in READINGS}
  # Over every parameter, in any wrapper: the plain names.
  assert set(_one_step_stats(optax.MultiSteps(ao.adam(0.1, diagnostics=True), 1))) == set(READINGS)


def test_reader_refuses_what_it_cannot_read() -> None:
  with pytest.raises(ValueError, match="diagnostics=True"):
    diagnostics(ao.adam(0.1).init(PARAMS))
  # Two optimizer states side by side would give the same keys: refused, naming both.
  side_by_side = {"gen": ao.adam(0.1, diagnostics=True), "disc": ao.adam(0.2, diagnostics=True)}
  states = {k: _trained(tx) for k, tx in side_by_side.items()}
  with pytest.raises(ValueError, match=r"at gen and disc|at disc and gen"):
    diagnostics(states)
  assert float(diagnostics(states["disc"])["alpha"]) == pytest.approx(0.2)
  # normalize recorded, scale_by_lr did not: no step size to read.
  half = optax.chain(
    ao.scale_by_moments(), ao.bias_correct(), ao.normalize(diagnostics=True), ao.scale_by_lr(0.1)
  )
  with pytest.raises(ValueError, match=r"no recorded step size"):
    diagnostics(_trained(half))


def test_injected_learning_rate_is_recorded_and_schedules_are_read_at_t_minus_1() -> None:
  tx = optax.inject_hyperparams(ao.adam)(learning_rate=0.1, diagnostics=True)
  state = tx.init(PARAMS)
  state.hyperparams["learning_rate"] = jnp.asarray(0.5)
  _, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, PARAMS), state)
  assert float(diagnostics(state)["alpha"]) == 0.5
  schedule = optax.linear_schedule(1.0, 0.0, 10)
  history, _, _ = _run(ao.adam(schedule, diagnostics=True), _stream(np.random.default_rng(0), 4))
  np.testing.assert_allclose(history["alpha"], [1.0, 0.9, 0.8, 0.7], rtol=1e-6)


def test_vmap_gives_batched_values_equal_to_single_runs(rng) -> None:
  batch = [_stream(rng, 10) for _ in range(3)]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *batch)
  tx = ao.adam(0.1, diagnostics=True)
  _, (histories, _) = jax.jit(jax.vmap(lambda gs: _scan(tx, gs, PARAMS)))(stacked)
  for index, grads in enumerate(batch):
    single, _, _ = _run(tx, grads)
    for key, value in single.items():
      assert histories[key].shape == (3, 10)
      np.testing.assert_allclose(histories[key][index], value, rtol=1e-6, err_msg=key)


def test_checkpoint_round_trip_keeps_values_and_training(rng) -> None:
  tx = ao.adam(0.1, diagnostics=True)
  grads = _stream(rng, 6)
  _, state, _ = _run(tx, jax.tree.map(lambda g: g[:5], grads))
  leaves, treedef = jax.tree.flatten(state)
  restored = jax.tree.unflatten(treedef, [np.array(leaf) for leaf in leaves])  # a host copy
  assert isinstance(restored[2], NormalizeState)
  assert isinstance(restored[3], ao.ScaleByLrState)
  for key, value in diagnostics(state).items():
    np.testing.assert_array_equal(np.asarray(diagnostics(restored)[key]), np.asarray(value))
  last = jax.tree.map(lambda g: jnp.asarray(g[5]), grads)
  resumed = jax.jit(tx.update)(last, restored)
  continued = jax.jit(tx.update)(last, state)
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(continued), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_gradient_through_the_update_is_unchanged() -> None:
  params = {"w": jnp.linspace(-1.0, 1.0, 6)}

  def loss(lr: jax.Array, diagnostics_on: bool) -> jax.Array:
    tx = optax.inject_hyperparams(ao.adam)(
      learning_rate=lr, eps_root=1e-8, diagnostics=diagnostics_on
    )
    state = tx.init(params)
    for _ in range(3):
      grads = jax.tree.map(lambda p: 2 * p - 0.3, params)
      updates, state = tx.update(grads, state, params)
    return jnp.sum(optax.apply_updates(params, updates)["w"] ** 2)

  gradient = jax.jit(jax.grad(loss), static_argnums=1)
  on = gradient(0.1, True)
  assert np.isfinite(on)
  assert on == gradient(0.1, False)


@pytest.mark.parametrize(
  "learning_rate", [0.1, optax.linear_schedule(0.1, 0.01, 3)], ids=["constant", "schedule"]
)
@pytest.mark.parametrize(("eps", "eps_root"), [(1.0, 0.0), (1e-8, 0.5), (0.0, 0.0)])
def test_readings_are_the_step_taken_whatever_the_chain_was_built_with(
  learning_rate: Any, eps: float, eps_root: float
) -> None:
  """Issue 16: normalize(eps=1.0) stepped 0.00099 while a separately told diagnose read 0.09999.

  The readings come from what normalize and scale_by_lr recorded of this step,
  so a hand-built chain cannot declare other numbers than it used.
  """
  tx = optax.chain(
    ao.scale_by_moments(),
    ao.bias_correct(),
    ao.normalize(eps, eps_root, diagnostics=True),
    ao.scale_by_lr(learning_rate, diagnostics=True),
  )
  params, state, update = jnp.zeros(4), tx.init(jnp.zeros(4)), jax.jit(tx.update)
  for k in range(3):
    updates, state = update(jnp.array([0.01, -0.02, 0.005, 3.0]) * (k + 1), state, params)
    stats = jax.jit(diagnostics)(state)
    steps = np.abs(np.asarray(updates))
    np.testing.assert_allclose(stats["step_max"], steps.max(), rtol=1e-6)
    np.testing.assert_allclose(stats["step_mean"], steps.mean(), rtol=1e-6)
    alpha = learning_rate(k) if callable(learning_rate) else learning_rate
    assert float(stats["alpha"]) == np.float32(alpha)


def test_the_record_holds_every_value_exactly_as_the_step_used_it() -> None:
  """One float32 array: 1 - b computed in double and rounded, as the moments did; flags 0 or 1."""

  def recorded(tx: optax.GradientTransformation) -> dict[str, float]:
    _, state = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))  # eagerly: one trace each is slow
    record = optax.tree_utils.tree_get(state, "normalized_with")
    assert record.dtype == jnp.float32
    return dict(zip(RECORDED, np.asarray(record).tolist(), strict=True))

  for b1, b2 in [(0.9, 0.999), (1 / 3, 0.99999), (0.0, 2 / 3), (0.95, 0.1)]:
    for bias, flags in [(ao.bias_correct(), (1, 1)), (ao.bias_correct(nu=False), (1, 0))]:
      tx = optax.chain(
        ao.scale_by_moments(b1, b2), bias, ao.normalize(1e-8, 1e-12, diagnostics=True)
      )
      # What the moments multiplied by: Python floats rounded to float32 where they met g.
      expected = [b1, b2, 1 - b1, 1 - b2, 1e-8, 1e-12, *flags, 0]
      assert list(recorded(tx).values()) == [float(np.float32(x)) for x in expected]
  adamax = recorded(ao.adamax(0.1, 0.9, 0.99, diagnostics=True))
  assert [adamax[k] for k in RECORDED[-3:]] == [1.0, 0.0, 1.0]
  # inject_hyperparams hands float32 arrays: 1 - b2 is float32 arithmetic, in the step as here.
  injected = recorded(optax.inject_hyperparams(ao.adam)(0.1, b2=0.99999, diagnostics=True))
  assert injected["one_minus_b2"] == float(np.float32(1) - np.float32(0.99999))


def test_a_record_not_yet_written_reads_zero_until_the_next_step() -> None:
  """A state converted from diagnostics=False gets empty records: nothing of training is in them."""
  off, on = ao.adam(0.1), ao.adam(0.1, diagnostics=True)
  trained = _trained(off)
  converted = (
    *trained[:2],
    NormalizeState(jnp.zeros(len(RECORDED))),
    ao.ScaleByLrState(jnp.zeros([]), trained[3]),
  )
  assert jax.tree.structure(converted) == jax.tree.structure(on.init(PARAMS))
  assert all(float(value) == 0 for value in diagnostics(converted).values())
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  _, resumed = jax.jit(on.update)(grads, converted, PARAMS)
  _, continued = jax.jit(on.update)(grads, _trained(on), PARAMS)
  for key, value in diagnostics(continued).items():
    np.testing.assert_array_equal(np.asarray(diagnostics(resumed)[key]), value, err_msg=key)


_SHARDED = textwrap.dedent(
  """
  import jax, jax.numpy as jnp, numpy as np, optax
  from jax.sharding import NamedSharding, PartitionSpec as P
  import adam_optax as ao
  from adam_optax.diagnosis import diagnostics

  mesh = jax.make_mesh((8,), ("data",))
  params = {"w": jnp.linspace(-1.0, 1.0, 64).reshape(16, 4), "b": jnp.zeros(8)}
  specs = {"w": P("data"), "b": P("data")}
  tx = ao.adam(0.1, diagnostics=True)

  def train(params):
    state = tx.init(params)
    for k in range(3):
      grads = jax.tree.map(lambda p: jnp.sin(p * (k + 1.0)) + 0.1, params)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    return diagnostics(state)

  single = jax.jit(train)(params)
  shards = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), params, specs)
  sharded = jax.jit(train)(shards)
  assert len(jax.devices()) == 8
  for key, value in single.items():
    np.testing.assert_allclose(np.asarray(sharded[key]), np.asarray(value), rtol=1e-6, err_msg=key)
  print("ok")
  """
)


def test_sharded_values_equal_single_device_values() -> None:
  result = run_python(["-c", _SHARDED], host_devices=8)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.bfloat16])
def test_complex_and_low_precision_params(dtype) -> None:
  params = jnp.zeros(4, dtype)
  grads = (jnp.arange(4.0) + 1j * jnp.ones(4)) if dtype == jnp.complex64 else jnp.arange(4.0)
  grads = grads.astype(dtype)
  on, off = (
    ao.adam(0.01, nu_dtype=jnp.float32, diagnostics=True),
    ao.adam(0.01, nu_dtype=jnp.float32),
  )
  updates_on, state = jax.jit(on.update)(grads, on.init(params), params)
  updates_off, _ = jax.jit(off.update)(grads, off.init(params), params)
  np.testing.assert_array_equal(np.asarray(updates_on), np.asarray(updates_off))
  stats = diagnostics(state)
  expected = np.linalg.norm(np.asarray(grads.astype(jnp.complex64)))
  # m-hat_1 = g, read from a moment stored in the params' dtype (half an ulp of bfloat16).
  rtol = 2.0**-8 if dtype == jnp.bfloat16 else 1e-6
  np.testing.assert_allclose(stats["mu_norm"], expected, rtol=rtol)
  np.testing.assert_allclose(stats["nu_norm"], expected, rtol=1e-5)  # v-hat_1 = |g|^2
  assert stats["above_strict"] == 0
  assert all(np.isfinite(np.asarray(value)) for value in stats.values())


def test_sixteen_bit_moments_read_back_within_the_documented_bound(rng) -> None:
  """Stored in bfloat16 the readings come from rounded moments: within 1.5 ulp of u_t."""
  grads = _stream(rng, 30)
  tx = ao.adam(0.1, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32, diagnostics=True)
  _, state, updates = _run(tx, grads, record=False)
  step = max(float(np.max(np.abs(np.asarray(u)[-1]))) for u in updates.values())
  read = float(diagnostics(state)["step_max"])
  assert read != step  # the step used the unrounded moment
  assert abs(read - step) <= 1.5 * 2.0**-8 * step


def _trained(tx: optax.GradientTransformation) -> optax.OptState:
  state = tx.init(PARAMS)
  for k in range(3):
    _, state = jax.jit(tx.update)(jax.tree.map(lambda p, k=k: p + 1.0 + k, PARAMS), state, PARAMS)
  return state


@pytest.mark.parametrize("name", ["adam", "amsgrad", "adamax"])
def test_reader_works_on_a_state_whose_namedtuples_became_dicts(name: str) -> None:
  """A checkpoint restored without a target: tuples are lists, NamedTuples dicts."""
  state = _trained(getattr(ao, name)(0.1, diagnostics=True))

  def plain(node: Any) -> Any:
    if isinstance(node, tuple) and hasattr(node, "_fields"):
      return {key: plain(value) for key, value in zip(node._fields, node, strict=True)}
    if isinstance(node, (list, tuple)):
      return [plain(value) for value in node]
    if isinstance(node, dict):
      return {key: plain(value) for key, value in node.items()}
    return np.asarray(node)

  as_dicts = plain(state)
  assert isinstance(as_dicts[0], dict)
  expected = jax.jit(diagnostics)(state)
  got = jax.jit(diagnostics)(as_dicts)
  for key in READINGS:
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]), err_msg=key)


def test_reader_works_on_nnx_state_of_an_optimizer() -> None:
  from flax import nnx

  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, ao.adam(0.1, diagnostics=True), wrt=nnx.Param)
  grads = nnx.state(model, nnx.Param)
  optimizer.update(model, jax.tree.map(jnp.ones_like, grads))
  stats = jax.jit(diagnostics)(nnx.state(optimizer))
  assert float(stats["step_max"]) == pytest.approx(0.1, rel=1e-4)  # the first step: alpha sign(g)
  assert float(stats["alpha"]) == pytest.approx(0.1)
  expected = jax.jit(diagnostics)(nnx.to_pure_dict(nnx.state(optimizer))["opt_state"])
  for key in READINGS:
    np.testing.assert_array_equal(np.asarray(stats[key]), np.asarray(expected[key]), err_msg=key)


@pytest.mark.parametrize("name", ["adam", "adamax", "amsgrad"])
def test_a_diagnosed_state_can_be_donated_step_after_step(name: str) -> None:
  """No two fields share a buffer (init) or alias an input (update): donation works."""
  tx = getattr(ao, name)(optax.linear_schedule(0.1, 0.01, 5), diagnostics=True)
  update = jax.jit(tx.update, donate_argnums=1)
  state = tx.init(PARAMS)
  for k in range(3):
    _, state = update(jax.tree.map(lambda p, k=k: p + 1.0 + k, PARAMS), state, PARAMS)
  assert float(diagnostics(state)["alpha"]) == pytest.approx(0.1 - 2 * 0.09 / 5)


@pytest.mark.parametrize("name", ["adam", "amsgrad"])
def test_diagnostics_add_no_param_sized_work_or_memory_to_the_step(name: str) -> None:
  """XLA's own accounting of the compiled step: a few scalars more, nothing per parameter."""
  params = {f"layer{i}": jnp.ones((256, 64)) for i in range(8)}
  schedule = optax.linear_schedule(1e-3, 1e-4, 100)

  def compiled(diagnostics_on: bool) -> Any:
    tx = getattr(ao, name)(schedule, diagnostics=diagnostics_on)

    def step(params: Any, state: Any, grads: Any) -> Any:
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), params).compile()

  off, on = compiled(False), compiled(True)
  cost_off, cost_on = (c.cost_analysis() for c in (off, on))
  cost_off, cost_on = (c[0] if isinstance(c, list) else c for c in (cost_off, cost_on))
  # A few dozen bytes of records, against 64 KiB for the smallest leaf (4 MiB in all). XLA:CPU
  # needs not one byte more of temporaries; a GPU's scheduling may add a few hundred.
  assert cost_on["bytes accessed"] - cost_off["bytes accessed"] < 1024
  temp_on, temp_off = (c.memory_analysis().temp_size_in_bytes for c in (on, off))
  assert abs(temp_on - temp_off) <= (0 if jax.default_backend() == "cpu" else 1024)
  # Two arrays more cross the jit boundary (the records), not one per recorded number.
  arguments = [len(jax.tree.leaves(c.args_info)) for c in (on, off)]
  assert arguments[0] - arguments[1] == 2


def test_reader_works_on_an_orbax_checkpoint_restored_without_a_target(tmp_path: Path) -> None:
  """orbax turns the NamedTuples into dicts and the tuples into lists: found by field name."""
  import orbax.checkpoint as ocp

  from adam_optax.checkpoint import save_checkpoint

  state = _trained(ao.amsgrad(0.1, diagnostics=True))
  save_checkpoint(tmp_path / "ckpt", state)
  restored = ocp.StandardCheckpointer().restore(tmp_path / "ckpt")
  assert not isinstance(restored, tuple)
  expected = jax.jit(diagnostics)(state)
  got = jax.jit(diagnostics)(restored)
  for key in READINGS:
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]), err_msg=key)
