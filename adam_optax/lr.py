"""Line 11 of Algorithm 1: the step size alpha, with its sign."""

from __future__ import annotations

import optax

from adam_optax import _validate
from adam_optax._pieces import require_param_shaped


def scale_by_lr(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  r"""Scales the updates by the negative step size.

  .. math::

    \Delta_t = -\alpha_t \, u_t

  where :math:`\alpha_t` is ``learning_rate``, or ``learning_rate(t - 1)`` for
  an :class:`optax.Schedule` (the schedule sees 0 at the first step and keeps
  its own count, exactly as in :func:`optax.scale_by_learning_rate`, which this
  piece wraps). Added to the params by :func:`optax.apply_updates` it gives
  :math:`\theta_t = \theta_{t-1} - \alpha\, \hat m_t / (\sqrt{\hat v_t} + \epsilon)`.

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> tx = ao.scale_by_lr(0.5)
    >>> updates, _ = tx.update(jnp.array([1.0, -2.0]), tx.init(None))
    >>> updates
    Array([-0.5,  1. ], dtype=float32)

  Args:
    learning_rate: the step size :math:`\alpha`, a finite number, an array
      (e.g. traced by :func:`optax.inject_hyperparams`) or a schedule.

  Returns:
    An :class:`optax.GradientTransformation` on param-shaped updates.

  Raises:
    ValueError: at construction, for a concrete non-finite learning rate.
    TypeError: at update, when handed :class:`Moments` instead of updates.

  References:
    Kingma & Ba, 2015, Algorithm 1 line 11.
  """
  _validate.check_finite("learning_rate", learning_rate)
  inner = optax.scale_by_learning_rate(learning_rate)

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.OptState]:
    return inner.update(require_param_shaped("ao.scale_by_lr", updates), state, params)

  return optax.GradientTransformation(inner.init, update_fn)
