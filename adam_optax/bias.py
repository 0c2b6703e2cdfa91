"""Lines 9-10 of Algorithm 1: correcting the moments' bias towards zero."""

from __future__ import annotations

import dataclasses
import math

import jax
import optax

from adam_optax._pieces import require_moments
from adam_optax.moments import Moments


def bias_correct(
  *, nesterov: bool = False, mu: bool = True, nu: bool = True
) -> optax.GradientTransformation:
  r"""Divides the moments by the total weight their zero start leaves them.

  Because :math:`m_0 = 0`, :math:`m_t = (1-\beta_1)\sum_{i=1}^t \beta_1^{t-i} g_i`
  gives the gradients a total weight of :math:`1 - \beta_1^t` instead of 1;
  for a stationary gradient :math:`\mathbb{E}[m_t] = (1-\beta_1^t)\,
  \mathbb{E}[g]`. Dividing undoes it:

  .. math::

    \hat m_t = \frac{m_t}{1 - \beta_1^t}, \qquad
    \hat v_t = \frac{v_t}{1 - \beta_2^t}

  so a constant gradient :math:`g` gives :math:`\hat m_t = g` and
  :math:`\hat v_t = g^2` at every step. With ``nesterov=True`` the first moment
  looks one step ahead (NAdam, Dozat 2016):

  .. math::

    \hat m_t = \beta_1 \frac{m_t}{1 - \beta_1^{t+1}}
      + (1 - \beta_1) \frac{g_t}{1 - \beta_1^t}

  The decay rates and :math:`t` are read from the :class:`Moments` it receives.
  AdaMax's infinity-norm moment (``order=inf``) is not biased and is left as
  it is. Leaving this piece out of the chain gives Adam without bias correction.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_optax as ao
    >>> tx = optax.chain(ao.scale_by_moments(b1=0.9), ao.bias_correct())
    >>> moments, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    >>> moments.mu  # m_1 = 0.1 * 2 is corrected back to g
    Array([2.], dtype=float32)

  Args:
    nesterov: use the Nesterov look-ahead first moment (NAdam); it is a bias
      correction of the first moment, so it needs ``mu=True``.
    mu: correct the first moment (``False`` as in the AMSGrad paper).
    nu: correct the second moment (``False`` as in the AMSGrad paper).

  Returns:
    An :class:`optax.GradientTransformation` (stateless) mapping
    :class:`Moments` to bias-corrected :class:`Moments`.

  Raises:
    ValueError: at construction, for ``nesterov=True`` with ``mu=False``.
    TypeError: at update, when the input is not :class:`Moments`.

  References:
    Kingma & Ba, 2015, Algorithm 1 lines 9-10 and section 3; Dozat, 2016.
  """
  if nesterov and not mu:
    raise ValueError(
      "ao.bias_correct: nesterov=True with mu=False is contradictory: the Nesterov "
      "look-ahead is a bias-corrected first moment. Drop mu=False, or nesterov=True."
    )

  def update_fn(
    updates: Moments, state: optax.EmptyState, params: optax.Params | None = None
  ) -> tuple[Moments, optax.EmptyState]:
    del params
    moments = require_moments("ao.bias_correct", updates)
    b1, count = moments.b1, moments.count
    mu_hat = moments.mu
    if nesterov:
      mu_hat = jax.tree.map(
        lambda m, g: b1 * m + (1 - b1) * g,
        optax.tree.bias_correction(moments.mu, b1, optax.safe_increment(count)),
        optax.tree.bias_correction(moments.grad, b1, count),
      )
    elif mu:
      mu_hat = optax.tree.bias_correction(moments.mu, b1, count)
    corrected_nu = nu and moments.order != math.inf
    nu_hat = moments.nu
    if corrected_nu:
      nu_hat = optax.tree.bias_correction(moments.nu, moments.b2, count)
    corrected = dataclasses.replace(
      moments, mu=mu_hat, nu=nu_hat, corrected_mu=mu, corrected_nu=corrected_nu
    )
    return corrected, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
