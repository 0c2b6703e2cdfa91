"""Line 11 of Algorithm 1: the signal-to-noise ratio that becomes the step."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from adam_optax import _validate
from adam_optax._pieces import require_moments
from adam_optax.moments import Moments


def normalize(
  eps: chex.Numeric = 1e-8, eps_root: chex.Numeric = 0.0
) -> optax.GradientTransformation:
  r"""Turns :class:`Moments` into the param-shaped direction of the step.

  .. math::

    u_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

  :math:`\hat m_t/\sqrt{\hat v_t}` is the paper's signal-to-noise ratio: its
  magnitude is about 1 or less in ordinary training and shrinks where gradients
  disagree (near an optimum), which anneals the step. (It is not bounded by 1:
  the paper's approximate bound is :math:`(1-\beta_1)/\sqrt{1-\beta_2}`, about
  3.16 with the defaults, and the strict bound tends to about 7.27.) It is
  invariant to rescaling the gradient by :math:`c > 0` (up to :math:`\epsilon`).
  ``eps_root`` puts a term inside the square root, which keeps the derivative
  finite when differentiating through the update (meta-learning). For AdaMax's
  infinity-norm moment (``order=inf``) the root is the identity.

  The result is computed in at least float32 and cast to the dtype optax's
  arithmetic would give it, the promotion of the gradient's and the stored
  moments' dtypes (:attr:`Moments.dtypes`): float32 params with bfloat16
  gradients get float32 updates.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_optax as ao
    >>> tx = optax.chain(ao.scale_by_moments(), ao.bias_correct(), ao.normalize())
    >>> direction, _ = tx.update(jnp.array([3.0, -0.01]), tx.init(jnp.zeros(2)))
    >>> direction  # the first step is the sign of the gradient
    Array([ 1., -1.], dtype=float32)

  Args:
    eps: added to the root of the denominator, ``eps >= 0``.
    eps_root: added inside the root, ``eps_root >= 0``.

  Returns:
    An :class:`optax.GradientTransformation` (stateless) mapping
    :class:`Moments` to updates shaped like the params.

  Raises:
    ValueError: at construction, for a concrete negative ``eps``/``eps_root``.
    TypeError: at update, when the input is not :class:`Moments`.

  References:
    Kingma & Ba, 2015, Algorithm 1 line 11 and section 2.1.
  """
  _validate.check_non_negative("eps", eps)
  _validate.check_non_negative("eps_root", eps_root)

  def update_fn(
    updates: Moments, state: optax.EmptyState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.EmptyState]:
    del params
    moments = require_moments("ao.normalize", updates)
    root = jnp.sqrt if moments.order == 2 else (lambda x: x)
    direction = jax.tree.map(
      lambda m, v, dtype: (m / (root(v + eps_root) + eps)).astype(dtype),
      moments.mu,
      moments.nu,
      moments.dtypes,
    )
    return direction, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
