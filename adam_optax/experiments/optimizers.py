"""The optimizers compared, each with the learning rates of its sweep.

Every optimizer is a factory of keyword hyper-parameters, wrapped by
:func:`injected` in :func:`optax.inject_hyperparams`, so that the learning rate
(and, in the bias-correction study, ``b1`` and ``b2``) is an array in the
optimizer state: one compiled program then trains every learning rate at once
under :func:`jax.vmap`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import optax

import adam_optax as ao
from adam_optax.optimizers import _direction

Factory = Callable[..., optax.GradientTransformation]


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """An optimizer of the comparison.

  Attributes:
    name: the name used by ``--optimizers`` and in the results.
    label: the name in figure legends.
    factory: builds the transformation from keyword hyper-parameters.
    learning_rates: the learning rates swept (the best one is kept).
    records_diagnostics: whether ``factory`` takes ``diagnostics=True``
      (the Adam family), which ``--diagnostics`` turns on.
  """

  name: str
  label: str
  factory: Factory
  learning_rates: tuple[float, ...]
  records_diagnostics: bool = False


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
  return optax.sgd(learning_rate, momentum, nesterov=True)


def adam_without_bias_correction(
  learning_rate: chex.Numeric,
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-8,
  *,
  diagnostics: bool = False,
) -> optax.GradientTransformation:
  r"""Adam with lines 9-10 of Algorithm 1 left out: the chain without :func:`ao.bias_correct`.

  .. math::  \theta_t = \theta_{t-1} - \alpha\, \frac{m_t}{\sqrt{v_t} + \epsilon}

  With :math:`\beta_2` close to 1, :math:`v_t` starts near 0, so the first
  steps are up to :math:`(1-\beta_1)/\sqrt{1-\beta_2}` times larger than
  Adam's: the instability figure 4 of the paper shows.

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
    diagnostics: see :func:`ao.adam`; the recorded bound is the one for
      moments that are not bias-corrected.

  Returns:
    ``optax.chain(ao.scale_by_moments(b1, b2), ao.normalize(eps), ao.scale_by_lr(learning_rate))``.

  References:
    Kingma & Ba, 2015, section 3 and figure 4.
  """
  direction = _direction(eps, 0.0, learning_rate, diagnostics, mu=False, nu=False)
  return optax.chain(ao.scale_by_moments(b1, b2), direction, ao.scale_by_lr(learning_rate))


def injected(factory: Factory, **hyperparams: chex.Numeric) -> optax.GradientTransformation:
  """``factory`` with its hyper-parameters held as arrays in the optimizer state.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> init = lambda lr: injected(ao.adam, learning_rate=lr).init(jnp.zeros(2))
    >>> jax.vmap(init)(jnp.array([0.1, 0.01])).hyperparams["learning_rate"]
    Array([0.1 , 0.01], dtype=float32)

  Args:
    factory: an optimizer factory taking keyword hyper-parameters.
    **hyperparams: their values (numbers or traced arrays).

  Returns:
    ``optax.inject_hyperparams(factory)(**hyperparams)``.

  References:
    optax, ``inject_hyperparams``.
  """
  return optax.inject_hyperparams(factory)(**hyperparams)


OPTIMIZERS: dict[str, Optimizer] = {
  opt.name: opt
  for opt in (
    Optimizer("adam", "Adam", ao.adam, (3e-3, 1e-2, 3e-2), records_diagnostics=True),
    Optimizer("adamax", "AdaMax", ao.adamax, (6e-3, 2e-2, 6e-2), records_diagnostics=True),
    Optimizer("sgd_nesterov", "SGD Nesterov", sgd_nesterov, (3e-2, 1e-1, 3e-1)),
    Optimizer("adagrad", "AdaGrad", optax.adagrad, (3e-2, 1e-1, 3e-1)),
    Optimizer("rmsprop", "RMSProp", optax.rmsprop, (1e-3, 3e-3, 1e-2)),
    Optimizer("adadelta", "AdaDelta", optax.adadelta, (3.0, 10.0, 30.0)),
  )
}

# Figure 4: Adam with and without bias correction, over a grid of b1, b2 and step sizes.
BIAS_CORRECTION_B1 = (0.0, 0.9)
BIAS_CORRECTION_B2 = (0.99, 0.999, 0.9999)
BIAS_CORRECTION_LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
BIAS_CORRECTION_VARIANTS: dict[str, Optimizer] = {
  opt.name: opt
  for opt in (
    Optimizer(
      "adam",
      "with bias correction",
      ao.adam,
      BIAS_CORRECTION_LEARNING_RATES,
      records_diagnostics=True,
    ),
    Optimizer(
      "adam_no_bias_correction",
      "without bias correction",
      adam_without_bias_correction,
      BIAS_CORRECTION_LEARNING_RATES,
      records_diagnostics=True,
    ),
  )
}
