"""The paper's properties of Adam, as hypothesis tests (Kingma & Ba 2015, sections 2.1 and 3).

Each jitted function below takes the hyper-parameters as traced arguments and
hypothesis feeds it arrays of fixed shapes, so it compiles once per test.
The step-size tests run in float64 (64-bit JAX), where rounding is far below
the margins they test; the scale-invariance test runs in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import adam_optax as ao

STEPS, WIDTH = 32, 4  # the shape of a hypothesis gradient stream: steps x coordinates


def _updates(tx: optax.GradientTransformation, grads: jax.Array) -> jax.Array:
  """The updates of ``tx`` (on a vector param) at every step of a gradient stream."""

  def step(state: optax.OptState, g: jax.Array) -> tuple[optax.OptState, jax.Array]:
    updates, state = tx.update(g, state)
    return state, updates

  return jax.lax.scan(step, tx.init(jnp.zeros_like(grads[0])), grads)[1]


@jax.jit
def _adam_updates(grads: jax.Array, b1: jax.Array, b2: jax.Array) -> jax.Array:
  """Adam with alpha = 1 and eps = 0, so that an update is its own ratio to alpha."""
  return _updates(ao.adam(1.0, b1, b2, eps=0.0), grads)


def strict_bound(t: np.ndarray, b1: float, b2: float) -> np.ndarray:
  r"""The bound on :math:`|\Delta_t|/\alpha` that holds for every gradient stream (eps = 0).

  With :math:`m_t = (1-\beta_1)\sum_i \beta_1^{t-i} g_i` and
  :math:`v_t = (1-\beta_2)\sum_i \beta_2^{t-i} g_i^2`, Cauchy–Schwarz on
  :math:`\beta_1^{t-i} g_i = (\beta_1^{t-i}/\beta_2^{(t-i)/2})(\beta_2^{(t-i)/2} g_i)` gives
  :math:`|m_t| \le (1-\beta_1)\sqrt{\sum_{k<t}\gamma^k}\sqrt{v_t/(1-\beta_2)}`,
  :math:`\gamma = \beta_1^2/\beta_2 < 1`, hence
  :math:`|\Delta_t| \le \alpha(1-\beta_1)\sqrt{1-\beta_2^t}\sqrt{(1-\gamma^t)/(1-\gamma)}
  / ((1-\beta_1^t)\sqrt{1-\beta_2})`, with equality for :math:`g_i \propto (\beta_2/\beta_1)^i`.
  """
  gamma = b1**2 / b2
  return (
    (1 - b1)
    * np.sqrt(1 - b2**t)
    * np.sqrt((1 - gamma**t) / (1 - gamma))
    / ((1 - b1**t) * np.sqrt(1 - b2))
  )


def paper_bound(b1: float, b2: float) -> float:
  """The paper's approximate bound on |Delta_t|/alpha (section 2.1)."""
  return (1 - b1) / np.sqrt(1 - b2) if (1 - b1) > np.sqrt(1 - b2) else 1.0


def _magnitudes(low: float, high: float) -> st.SearchStrategy[float]:
  """Zero, or a signed magnitude in [10^low, 10^high] spread over the exponents."""
  signed = st.tuples(st.sampled_from([-1.0, 1.0]), st.floats(low, high)).map(
    lambda pair: pair[0] * 10.0 ** pair[1]
  )
  return st.one_of(st.just(0.0), signed)


# Scale invariance -----------------------------------------------------------------


@jax.jit
def _adam_updates_scaled(
  grads: jax.Array, scale: jax.Array, b1: jax.Array, b2: jax.Array
) -> tuple[jax.Array, jax.Array]:
  return _adam_updates(grads, b1, b2), _adam_updates(grads * scale, b1, b2)


@settings(max_examples=60, deadline=None)
@given(
  grads=hnp.arrays(np.float64, (STEPS, WIDTH), elements=_magnitudes(-6, 3)),
  scale=st.floats(-3, 3).map(lambda e: 10.0**e),
  b2=st.floats(0.5, 0.9999),
  b1_fraction=st.floats(0.0, 0.99),
)
def test_updates_are_invariant_to_rescaling_the_gradient(
  grads: np.ndarray, scale: float, b2: float, b1_fraction: float
) -> None:
  r"""With eps = 0, g -> c g (c > 0) leaves every update unchanged.

  :math:`\hat m_t` scales by :math:`c` and :math:`\sqrt{\hat v_t}` by
  :math:`c`, so :math:`\Delta_t = -\alpha \hat m_t/\sqrt{\hat v_t}` does not
  move (section 2.1). In float32 the two runs round differently: each step of
  the recursions adds half an ulp to :math:`m_t` relative to
  :math:`\sum_i \beta_1^{t-i}|g_i|` (which Cauchy–Schwarz bounds like
  :math:`|m_t|`, by :func:`strict_bound`), and the scaling, bias corrections,
  root and division add a few more, so the tolerance is
  :math:`(2t + 8)\,\epsilon_{32}` times the strict bound. Steps before the
  first non-zero gradient are 0/0 (NaN) in both runs.
  """
  b1 = b1_fraction * np.sqrt(b2)
  grads = grads.astype(np.float32)
  ours, scaled = (np.asarray(u, np.float64) for u in _adam_updates_scaled(grads, scale, b1, b2))
  undefined = np.cumsum(grads != 0, axis=0) == 0
  np.testing.assert_array_equal(np.isnan(ours), undefined)
  np.testing.assert_array_equal(np.isnan(scaled), undefined)
  t = np.arange(1, STEPS + 1)[:, None]
  tolerance = (2 * t + 8) * np.finfo(np.float32).eps * strict_bound(t, b1, b2)
  error = np.abs(np.where(undefined, 0.0, scaled - ours))
  assert np.all(error <= tolerance), (error / tolerance).max()


# Bias correction ------------------------------------------------------------------


@jax.jit
def _bias_corrected(grads: jax.Array, b1: jax.Array, b2: jax.Array) -> tuple[jax.Array, jax.Array]:
  tx = optax.chain(ao.scale_by_moments(b1, b2), ao.bias_correct())

  def step(state: optax.OptState, g: jax.Array) -> tuple[optax.OptState, tuple]:
    moments, state = tx.update(g, state)
    return state, (moments.mu, moments.nu)

  return jax.lax.scan(step, tx.init(jnp.zeros_like(grads[0])), grads)[1]


@settings(max_examples=60, deadline=None)
@given(
  gradient=hnp.arrays(np.float64, (WIDTH,), elements=_magnitudes(-8, 8)),
  b1=st.floats(0.0, 0.999),
  b2=st.floats(0.0, 0.999),
)
def test_bias_correction_recovers_a_constant_gradient(
  gradient: np.ndarray, b1: float, b2: float
) -> None:
  r"""For a constant gradient, :math:`\hat m_t = g` and :math:`\hat v_t = g^2` at every step.

  :math:`m_t = (1-\beta_1)\sum_{i\le t}\beta_1^{t-i} g = (1-\beta_1^t)\,g`, which
  is exactly what :func:`ao.bias_correct` divides by (section 3); likewise
  :math:`v_t = (1-\beta_2^t)\,g^2`. In float64 the only error is the rounding
  of the recursion, relative to :math:`1-\beta^t \ge 1-0.999`.
  """
  with jax.enable_x64(True):
    mu_hat, nu_hat = _bias_corrected(np.broadcast_to(gradient, (STEPS, WIDTH)), b1, b2)
  assert mu_hat.dtype == jnp.float64
  expected_mu = np.broadcast_to(gradient, (STEPS, WIDTH))
  np.testing.assert_allclose(mu_hat, expected_mu, rtol=1e-11, atol=0)
  np.testing.assert_allclose(nu_hat, expected_mu**2, rtol=1e-11, atol=0)


# Step size ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
  base=hnp.arrays(np.float64, (WIDTH,), elements=_magnitudes(-8, 8)),
  noise=hnp.arrays(np.float64, (STEPS, WIDTH), elements=_magnitudes(-2, 2)),
  growth=st.floats(0.25, 4.0),
  flip=st.booleans(),
  b2=st.floats(0.5, 0.9999),
  b1_fraction=st.floats(0.0, 0.99),
)
def test_step_never_exceeds_the_strict_bound(
  base: np.ndarray,
  noise: np.ndarray,
  growth: float,
  flip: bool,
  b2: float,
  b1_fraction: float,
) -> None:
  r"""|Delta_t| <= :func:`strict_bound` on adversarial streams (eps = 0, b1^2 < b2).

  Hypothesis draws streams :math:`g_{t,j} = b_j\, r^t (\pm 1)^t n_{t,j}`: zeros,
  magnitudes over 16 decades, sign flips, growth and decay, and
  ``hypothesis.target`` pushes it towards the largest ratio
  :math:`|\Delta_t| / \text{bound}`. The bound is attained by
  :math:`g_i \propto (\beta_2/\beta_1)^i`, so a tiny relative slack (1e-12,
  float64 rounding) is allowed above 1. Steps before the first non-zero
  gradient are 0/0 and are not steps.
  """
  b1 = b1_fraction * np.sqrt(b2)
  t = np.arange(1, STEPS + 1)[:, None]
  grads = base * growth**t * (-1.0 if flip else 1.0) ** t * noise
  with jax.enable_x64(True):
    updates = np.asarray(_adam_updates(grads, b1, b2))
  defined = np.cumsum(grads != 0, axis=0) > 0
  assert np.all(np.isfinite(updates[defined]))
  ratio = np.abs(np.where(defined, updates, 0.0)) / strict_bound(t, b1, b2)
  target(float(ratio.max()), label="|Delta_t| / strict bound")
  assert ratio.max() <= 1 + 1e-12


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(("b1", "b2"), [(0.9, 0.999), (0.5, 0.99)])
def test_sparse_gradient_approaches_the_papers_bound(b1: float, b2: float) -> None:
  r"""Zero gradients for t - 1 steps, then one: |Delta_t| -> alpha (1 - b1) / sqrt(1 - b2).

  The paper's most severe case of sparsity (section 2.1), for
  :math:`(1-\beta_1) > \sqrt{1-\beta_2}` (both settings here). Then
  :math:`m_t = (1-\beta_1)g`, :math:`v_t = (1-\beta_2)g^2`, so
  :math:`|\Delta_t| = \alpha(1-\beta_1)\sqrt{1-\beta_2^t}/((1-\beta_1^t)\sqrt{1-\beta_2})`,
  which grows with :math:`t` towards the paper's bound and never passes it.
  """
  assert (1 - b1) > np.sqrt(1 - b2)
  arrivals = np.array([10, 100, 1_000, 10_000])  # coordinate j sees its gradient at t_j
  grads = np.zeros((arrivals.max(), arrivals.size))
  grads[arrivals - 1, np.arange(arrivals.size)] = 3.0
  updates = np.asarray(_adam_updates(grads, b1, b2))
  steps = np.abs(updates[arrivals - 1, np.arange(arrivals.size)])
  expected = (1 - b1) * np.sqrt(1 - b2**arrivals) / ((1 - b1**arrivals) * np.sqrt(1 - b2))
  np.testing.assert_allclose(steps, expected, rtol=1e-12)
  ratio = steps / paper_bound(b1, b2)
  assert np.all(np.diff(ratio) > 0)
  assert ratio.max() <= 1 + 1e-12
  assert ratio[-1] >= 1 - 1e-4


@pytest.mark.usefixtures("x64")
def test_growing_gradient_exceeds_the_papers_bound_but_not_the_strict_one() -> None:
  r"""A steadily growing stream breaks the paper's bound by ~17% after 300 steps.

  With the default :math:`\beta_1 = 0.9, \beta_2 = 0.999` the paper's bound
  is :math:`\alpha(1-\beta_1)/\sqrt{1-\beta_2} \approx 3.16\alpha`. The stream
  :math:`g_t = (\beta_2/\beta_1)^t` (growing 11% a step) is the Cauchy–Schwarz
  equality case, so :math:`|\Delta_{300}|` equals the strict bound,
  :math:`\approx 3.70\alpha`: the paper's bound is an approximation, the strict
  bound is not.
  """
  b1, b2, steps = 0.9, 0.999, 300
  t = np.arange(1, steps + 1)
  updates = np.abs(np.asarray(_adam_updates((b2 / b1) ** t[:, None], b1, b2)))[:, 0]
  excess = updates[-1] / paper_bound(b1, b2)
  assert 1.16 < excess < 1.18
  np.testing.assert_allclose(updates, strict_bound(t, b1, b2), rtol=1e-12)
