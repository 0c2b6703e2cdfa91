"""Line 11 of Algorithm 1: the step size alpha, with its sign."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from adam_optax import _validate
from adam_optax._pieces import require_param_shaped


class ScaleByLrState(NamedTuple):
  r"""State of :func:`scale_by_lr` with ``diagnostics=True``.

  Attributes:
    alpha: :math:`|\alpha_t|`, the step size of the last step as the step
      used it (a schedule's value, or what :func:`optax.inject_hyperparams`
      held), float32.
    inner_state: the state of :func:`optax.scale_by_learning_rate`, as
      without diagnostics (a schedule's step count).
  """

  alpha: chex.Array
  inner_state: chex.ArrayTree


def scale_by_lr(
  learning_rate: optax.ScalarOrSchedule, *, diagnostics: bool = False
) -> optax.GradientTransformation:
  r"""Scales the updates by the negative step size.

  .. math::

    \Delta_t = -\alpha_t \, u_t

  where :math:`\alpha_t` is ``learning_rate``, or ``learning_rate(t - 1)`` for
  an :class:`optax.Schedule` (the schedule sees 0 at the first step and keeps
  its own count, exactly as in :func:`optax.scale_by_learning_rate`, which this
  piece wraps). Added to the params by :func:`optax.apply_updates` it gives
  :math:`\theta_t = \theta_{t-1} - \alpha\, \hat m_t / (\sqrt{\hat v_t} + \epsilon)`.

  With ``diagnostics=True`` its state is a :class:`ScaleByLrState`, which
  adds :math:`|\alpha_t|` of each step, the value the step was scaled by, for
  :func:`diagnostics`. The updates are the same to the bit.

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> tx = ao.scale_by_lr(0.5)
    >>> updates, _ = tx.update(jnp.array([1.0, -2.0]), tx.init(None))
    >>> updates
    Array([-0.5,  1. ], dtype=float32)

  Args:
    learning_rate: the step size :math:`\alpha`, a finite number, an array
      (e.g. traced by :func:`optax.inject_hyperparams`) or a schedule.
    diagnostics: record :math:`|\alpha_t|` (:class:`ScaleByLrState`) for
      :func:`diagnostics`.

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

  def init_fn(params: optax.Params) -> optax.OptState:
    if diagnostics:
      return ScaleByLrState(alpha=jnp.zeros([], jnp.float32), inner_state=inner.init(params))
    return inner.init(params)

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.OptState]:
    updates = require_param_shaped("ao.scale_by_lr", updates)
    if not diagnostics:
      return inner.update(updates, state, params)
    # The value optax.scale_by_learning_rate scales by (negated), from the same count.
    alpha = learning_rate(state.inner_state.count) if callable(learning_rate) else learning_rate
    updates, inner_state = inner.update(updates, state.inner_state, params)
    recorded = jax.lax.stop_gradient(jnp.abs(jnp.asarray(alpha, jnp.float32)))
    return updates, ScaleByLrState(alpha=recorded, inner_state=inner_state)

  return optax.GradientTransformation(init_fn, update_fn)
