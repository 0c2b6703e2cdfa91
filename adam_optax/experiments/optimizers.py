"""The optimizers compared, each with the learning rates of its sweep.

Every optimizer is a factory of keyword hyper-parameters, wrapped by
:func:`injected` in :func:`optax.inject_hyperparams`, so that the learning rate
(and, in the bias-correction study, ``b1`` and ``b2``) is an array in the
optimizer state: one compiled program then trains every learning rate at once
under :func:`jax.vmap`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import optax

import adam_optax as ao

Factory = Callable[..., optax.GradientTransformation]


# The learning-rate grid: GRID_POINTS points GRID_RATIO apart, on the lattice of its powers.
GRID_POINTS = 5
GRID_RATIO = 10**0.5


def _lattice(index: float, ratio: float) -> float:
  """``ratio ** index``, rounded to 3 significant digits so that it reads well in tables."""
  return float(f"{ratio**index:.3g}")


def _index(learning_rate: float, ratio: float) -> int:
  """The lattice point ``k`` with ``ratio ** k`` nearest to ``learning_rate``."""
  return round(math.log(learning_rate) / math.log(ratio))


def log_grid(
  center: float, points: int = GRID_POINTS, ratio: float = GRID_RATIO
) -> tuple[float, ...]:
  """``points`` learning rates ``ratio`` apart, powers of ``ratio``, around ``center``.

  Examples:
    >>> log_grid(1e-2, points=3)
    (0.00316, 0.01, 0.0316)

  References:
    Bergstra & Bengio, "Random Search for Hyper-Parameter Optimization",
    JMLR 2012 (log-uniform step sizes).
  """
  first = _index(center, ratio) - (points - 1) // 2
  return tuple(_lattice(first + k, ratio) for k in range(points))


def widen(
  learning_rates: tuple[float, ...], best: float, points: int = 2, ratio: float = GRID_RATIO
) -> tuple[float, ...]:
  """``points`` more learning rates of the lattice beyond the edge of the grid where ``best`` sits.

  Examples:
    >>> widen((0.01, 0.0316, 0.1), best=0.1)
    (0.316, 1.0)

  Returns:
    The new learning rates; empty when ``best`` is not at an edge.
  """
  ordered = sorted(learning_rates)
  if len(ordered) < 2 or best not in (ordered[0], ordered[-1]):
    return ()
  edge, sign = (ordered[-1], 1) if best == ordered[-1] else (ordered[0], -1)
  start = _index(edge, ratio)
  return tuple(_lattice(start + sign * k, ratio) for k in range(1, points + 1))


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """An optimizer of the comparison.

  Attributes:
    name: the name used by ``--optimizers`` and in the results.
    label: the name in figure legends.
    factory: builds the transformation from keyword hyper-parameters.
    learning_rate: the centre of its learning-rate grid (:func:`log_grid`).
    records_diagnostics: whether ``factory`` takes ``diagnostics=True``
      (the Adam family), which ``--diagnostics`` turns on.
    stores_moments: whether ``factory`` takes ``mu_dtype`` and ``nu_dtype``
      (the storage of ``--states``).
  """

  name: str
  label: str
  factory: Factory
  learning_rate: float
  records_diagnostics: bool = False
  stores_moments: bool = False

  @property
  def learning_rates(self) -> tuple[float, ...]:
    """The learning rates swept first (the best one is kept)."""
    return log_grid(self.learning_rate)


def sgd_nesterov(
  learning_rate: chex.Numeric, momentum: chex.Numeric = 0.9
) -> optax.GradientTransformation:
  r"""SGD with Nesterov momentum, the paper's "SGDNesterov".

  .. math::  b_t = \mu b_{t-1} + g_t, \qquad \theta_t = \theta_{t-1} - \alpha (g_t + \mu b_t)

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = sgd_nesterov(0.1)
    >>> updates, _ = tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)))
    >>> updates  # -0.1 * (1 + 0.9 * 1)
    Array([-0.19], dtype=float32)

  Args:
    learning_rate: the step size :math:`\alpha`.
    momentum: the momentum :math:`\mu`.

  Returns:
    ``optax.sgd(learning_rate, momentum, nesterov=True)``.

  References:
    Sutskever, Martens, Dahl & Hinton, "On the importance of initialization and
    momentum in deep learning", ICML 2013.
  """
  return optax.sgd(learning_rate=learning_rate, momentum=momentum, nesterov=True)


def adam_without_bias_correction(
  learning_rate: chex.Numeric,
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-8,
  *,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
  diagnostics: bool = False,
) -> optax.GradientTransformation:
  r"""Adam with lines 9-10 of Algorithm 1 left out: the chain without :func:`ao.bias_correct`.

  .. math::  \theta_t = \theta_{t-1} - \alpha\, \frac{m_t}{\sqrt{v_t} + \epsilon}

  With :math:`\beta_2` close to 1, :math:`v_t` starts near 0, so the early
  steps are larger than Adam's: for a constant gradient by the factor

  .. math::  \frac{1 - \beta_1^t}{\sqrt{1 - \beta_2^t}},

  which is :math:`(1-\beta_1)/\sqrt{1-\beta_2}` (3.16) at :math:`t = 1` but
  keeps growing while :math:`\beta_1^t` decays faster than :math:`\beta_2^t`:
  with :math:`\beta_1 = 0.9, \beta_2 = 0.999` it peaks near 6.6 at
  :math:`t \approx 12` (and near 21, also at :math:`t \approx 12`, for
  :math:`\beta_2 = 0.9999`) before falling to 1. This is the instability
  figure 4 of the paper shows.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = adam_without_bias_correction(0.1, b1=0.0, b2=0.99)
    >>> updates, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    >>> updates  # -0.1 * 2 / sqrt(0.01 * 4) = -1
    Array([-1.], dtype=float32)

  Args:
    learning_rate: see :func:`ao.adam`.
    b1: see :func:`ao.adam`.
    b2: see :func:`ao.adam`.
    eps: see :func:`ao.adam`.
    mu_dtype: see :func:`ao.scale_by_moments`.
    nu_dtype: see :func:`ao.scale_by_moments`.
    diagnostics: see :func:`ao.adam`; the recorded bound is the one for
      moments that are not bias-corrected.

  Returns:
    ``optax.chain(ao.scale_by_moments(...), ao.normalize(eps=eps), ao.scale_by_lr(...))``.

  References:
    Kingma & Ba, 2015, section 3 and figure 4.
  """
  # Without ao.bias_correct the moments say they are uncorrected: ao.normalize records that.
  return optax.chain(
    ao.scale_by_moments(b1=b1, b2=b2, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    ao.normalize(eps=eps, diagnostics=diagnostics),
    ao.scale_by_lr(learning_rate=learning_rate, diagnostics=diagnostics),
  )


def injected(
  factory: Factory, *, decay: bool = False, **hyperparams: chex.Numeric
) -> optax.GradientTransformation:
  r"""``factory`` with its hyper-parameters held as arrays in the optimizer state.

  With ``decay``, the learning rate :math:`\alpha` is the schedule
  :math:`\alpha_t = \alpha / \sqrt t` of the paper's logistic regression.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> init = lambda lr: injected(ao.adam, learning_rate=lr).init(jnp.zeros(2))
    >>> jax.vmap(init)(jnp.array([0.1, 0.01])).hyperparams["learning_rate"]
    Array([0.1 , 0.01], dtype=float32)

  Args:
    factory: an optimizer factory taking keyword hyper-parameters.
    decay: whether the learning rate decays as :math:`1/\sqrt t`.
    **hyperparams: their values (numbers or traced arrays).

  Returns:
    ``optax.inject_hyperparams(factory)(**hyperparams)``.

  References:
    optax, ``inject_hyperparams``; Kingma & Ba, 2015, section 6.1 (the decay).
  """
  if decay:
    alpha = hyperparams["learning_rate"]
    hyperparams["learning_rate"] = lambda count: alpha * jax.lax.rsqrt(count + 1.0)
  return optax.inject_hyperparams(factory)(**hyperparams)


OPTIMIZERS: dict[str, Optimizer] = {
  opt.name: opt
  for opt in (
    Optimizer("adam", "Adam", ao.adam, 1e-2, records_diagnostics=True, stores_moments=True),
    Optimizer("adamax", "AdaMax", ao.adamax, 1e-2, records_diagnostics=True),
    Optimizer("sgd_nesterov", "SGD Nesterov", sgd_nesterov, 3e-1),
    Optimizer("adagrad", "AdaGrad", optax.adagrad, 3e-1),
    Optimizer("rmsprop", "RMSProp", optax.rmsprop, 3e-3),
    Optimizer("adadelta", "AdaDelta", optax.adadelta, 10.0),
  )
}

# Figure 4: Adam with and without bias correction, over a grid of b1, b2 and step sizes
# (the paper's x axis: log10 of the step size from -5 to -1; below -3.5 nothing moves here).
BIAS_CORRECTION_B1 = (0.0, 0.9)
BIAS_CORRECTION_B2 = (0.99, 0.999, 0.9999)
BIAS_CORRECTION_LEARNING_RATES = log_grid(10**-2.5, points=6)
BIAS_CORRECTION_VARIANTS: dict[str, Optimizer] = {
  opt.name: opt
  for opt in (
    Optimizer(
      "adam",
      "with bias correction",
      ao.adam,
      10**-2.5,
      records_diagnostics=True,
      stores_moments=True,
    ),
    Optimizer(
      "adam_no_bias_correction",
      "without bias correction",
      adam_without_bias_correction,
      10**-2.5,
      records_diagnostics=True,
      stores_moments=True,
    ),
  )
}
