"""Line 11 of Algorithm 1: the signal-to-noise ratio that becomes the step."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from adam_optax import _validate
from adam_optax._pieces import require_moments
from adam_optax.moments import Moments

#: What ``normalize(diagnostics=True)`` records, in this order, in one float32 array:
#: the decay rates and their complements as the moments used them, its own
#: epsilons, and how the moments were bias-corrected (flags as 0 or 1).
RECORDED: tuple[str, ...] = (
  "b1",
  "b2",
  "one_minus_b1",
  "one_minus_b2",
  "eps",
  "eps_root",
  "corrected_mu",
  "corrected_nu",
  "infinity_norm",
)


class NormalizeState(NamedTuple):
  r"""State of :func:`normalize` with ``diagnostics=True``: what :math:`u_t` was made with.

  One float32 array of the values :data:`RECORDED` names, in that order:
  :math:`\beta_1`, :math:`\beta_2` and :math:`1-\beta_1`, :math:`1-\beta_2` as
  the moments computed them (for a Python float in double precision, then
  rounded, which float32 ``1 - b1`` would not reproduce), :math:`\epsilon`,
  :math:`\epsilon_{root}`, and 1 or 0 for: the first moment was
  bias-corrected, the second was, the second is AdaMax's infinity norm. Every
  one of them is a float32 number where the step used it (the moments'
  arithmetic is float32), so the array holds them exactly. One array, not
  nine, because every array of a state crosses the ``jit`` boundary at every
  step.

  Attributes:
    normalized_with: the recorded values, float32, shape ``(len(RECORDED),)``.
  """

  normalized_with: chex.Array


def _record(moments: Moments, eps: chex.Numeric, eps_root: chex.Numeric) -> NormalizeState:
  """The values :data:`RECORDED` names, as this step used them, in one array."""
  b1, b2 = moments.b1, moments.b2
  used = {
    "b1": b1,
    "b2": b2,
    # The expressions of optax.tree.update_moment, on the same values: the same rounding.
    "one_minus_b1": 1 - b1,
    "one_minus_b2": 1 - b2,
    "eps": eps,
    "eps_root": eps_root,
    "corrected_mu": moments.corrected_mu,
    "corrected_nu": moments.corrected_nu,
    "infinity_norm": moments.order != 2,
  }
  values = jnp.stack([jnp.asarray(used[name], jnp.float32) for name in RECORDED])
  # A record, not part of the step: a meta-gradient through the update does not flow into it.
  return NormalizeState(normalized_with=jax.lax.stop_gradient(values))


def normalize(
  eps: chex.Numeric = 1e-8, eps_root: chex.Numeric = 0.0, *, diagnostics: bool = False
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

  With ``diagnostics=True`` its state is a :class:`NormalizeState`: the
  :math:`\epsilon`, :math:`\epsilon_{root}`, decay rates and corrections this
  step used, in one small array, from which (with the moments and the step
  size :func:`scale_by_lr` records) :func:`diagnostics` recomputes
  :math:`u_t` when it is read. The direction is the same to the bit.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_optax as ao
    >>> tx = optax.chain(ao.scale_by_moments(), ao.bias_correct(), ao.normalize())
    >>> direction, _ = tx.update(jnp.array([3.0, -0.01]), tx.init(jnp.zeros(2)))
    >>> direction.round(4)  # the first step is the sign of the gradient
    Array([ 1., -1.], dtype=float32)

  Args:
    eps: added to the root of the denominator, ``eps >= 0``.
    eps_root: added inside the root, ``eps_root >= 0``.
    diagnostics: record what the direction was computed with
      (:class:`NormalizeState`) for :func:`diagnostics`; otherwise stateless.

  Returns:
    An :class:`optax.GradientTransformation` mapping :class:`Moments` to
    updates shaped like the params.

  Raises:
    ValueError: at construction, for a concrete negative ``eps``/``eps_root``.
    TypeError: at update, when the input is not :class:`Moments`.

  References:
    Kingma & Ba, 2015, Algorithm 1 line 11 and section 2.1.
  """
  _validate.check_non_negative("eps", eps)
  _validate.check_non_negative("eps_root", eps_root)

  def init_fn(params: optax.Params) -> NormalizeState | optax.EmptyState:
    del params
    if diagnostics:
      return NormalizeState(normalized_with=jnp.zeros(len(RECORDED), jnp.float32))
    return optax.EmptyState()

  def update_fn(
    updates: Moments,
    state: NormalizeState | optax.EmptyState,
    params: optax.Params | None = None,
  ) -> tuple[optax.Updates, NormalizeState | optax.EmptyState]:
    del params
    moments = require_moments("ao.normalize", updates)
    root = jnp.sqrt if moments.order == 2 else (lambda x: x)
    direction = jax.tree.map(
      lambda m, v, dtype: (m / (root(v + eps_root) + eps)).astype(dtype),
      moments.mu,
      moments.nu,
      moments.dtypes,
    )
    return direction, _record(moments, eps, eps_root) if diagnostics else state

  return optax.GradientTransformation(init_fn, update_fn)
