"""Lines 7-8 of Algorithm 1: the moving averages of the gradient and its square.

The first piece of the chain. It keeps ``m_t``, ``v_t`` and ``t`` in its state
and hands the next piece a :class:`Moments` value instead of param-shaped
updates, so that ``bias_correct`` and ``normalize`` need no repeated
hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from adam_optax import _precision, _validate

_NOT_A_PYTREE = (
  "ao.Moments, which ao.scale_by_moments hands to ao.bias_correct, ao.running_max "
  "and ao.normalize, was used as a pytree of updates: an optax "
  "transformation (optax.scale, optax.clip, ...) between those pieces, or a chain "
  "that ends before ao.normalize(). Put transformations of param-shaped updates "
  "before ao.scale_by_moments() or after ao.normalize(); they would otherwise act "
  "on the step count and the decay rates too."
)


@dataclasses.dataclass(frozen=True, eq=False)
class Moments:
  r"""The moments of the gradient, passed between the pieces of the chain.

  Emitted by :func:`scale_by_moments` (and :func:`scale_by_infinity_moments`)
  as the ``updates`` of an :func:`optax.chain` link; read and re-emitted by
  :func:`bias_correct` and :func:`running_max`; turned back
  into param-shaped updates by :func:`normalize`. Leaves are in compute
  precision (at least float32), before any rounding to the storage format.

  It is deliberately not a pytree: a transformation that maps over updates
  (``optax.scale``, ``optax.clip``, ``optax.clip_by_global_norm``, ...) placed
  between the pieces would otherwise scale or clip the step count and the
  decay rates silently. Flattening it raises a ``TypeError`` that names the
  pieces.

  Attributes:
    mu: the first moment :math:`m_t` (or :math:`\hat m_t` once bias-corrected).
    nu: the second moment :math:`v_t` (or :math:`\hat v_t`); for
      ``order=inf`` the infinity-norm moment :math:`u_t` of AdaMax.
    count: the step count :math:`t` (int32, 1 at the first step).
    b1: the decay rate :math:`\beta_1` of ``mu``.
    b2: the decay rate :math:`\beta_2` of ``nu``.
    grad: the gradient :math:`g_t` the moments were updated with, in compute
      precision (NAdam's look-ahead reads it).
    dtypes: per leaf, the dtype the param-shaped updates take: the promotion
      of the gradient's and the stored moments' dtypes, as in optax.
    order: 2 when ``nu`` averages :math:`|g|^2`, ``math.inf`` when it is
      AdaMax's :math:`u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon)`.
    corrected_mu: whether :func:`bias_correct` divided ``mu`` by
      :math:`1 - \beta_1^t` (or applied NAdam's look-ahead).
    corrected_nu: whether :func:`bias_correct` divided ``nu`` by
      :math:`1 - \beta_2^t`.

  References:
    Kingma & Ba, 2015, Algorithm 1 (lines 7-10) and section 7.1.
  """

  mu: chex.ArrayTree
  nu: chex.ArrayTree
  count: chex.Array
  b1: chex.Numeric
  b2: chex.Numeric
  grad: chex.ArrayTree
  dtypes: Any
  order: float = 2.0
  corrected_mu: bool = False
  corrected_nu: bool = False


def _refuse_flattening(moments: Moments) -> Any:
  del moments
  raise TypeError(_NOT_A_PYTREE)


jax.tree_util.register_pytree_node(Moments, _refuse_flattening, _refuse_flattening)


class MomentsState(NamedTuple):
  """State of :func:`scale_by_moments` and :func:`scale_by_infinity_moments`.

  The field names are optax's, so ``optax.tree_utils.tree_get(state, "count")``
  (and ``"mu"``, ``"nu"``) work on an ``ao.adam`` state as on an ``optax.adam`` one.

  Attributes:
    count: the number of steps taken, int32, saturating at its maximum.
    mu: the first moment, in its storage format.
    nu: the second moment, in its storage format.
  """

  count: chex.Array
  mu: chex.ArrayTree
  nu: chex.ArrayTree


_SecondMoment = Callable[[chex.ArrayTree, chex.ArrayTree], chex.ArrayTree]


def _moments_transformation(
  *,
  piece: str,
  b1: chex.Numeric,
  b2: chex.Numeric,
  second_moment: _SecondMoment,
  order: float,
  mu_dtype: DTypeLike | None,
  nu_dtype: DTypeLike | None,
) -> optax.GradientTransformation:
  """The state handling shared by the pieces that emit :class:`Moments`."""
  _validate.check_decay("b1", b1)
  _validate.check_decay("b2", b2)
  _validate.check_storage("mu_dtype", mu_dtype)
  _validate.check_storage("nu_dtype", nu_dtype)

  def init_fn(params: optax.Params) -> MomentsState:
    _validate.check_params(piece, params)
    mu = _precision.zeros(params, mu_dtype)
    nu = _precision.zeros(params, nu_dtype, real=True)
    _precision.warn_if_decay_vanishes("b1", b1, mu, what="a moment", fix="mu_dtype")
    _precision.warn_if_decay_vanishes("b2", b2, nu, what="a moment", fix="nu_dtype")
    _precision.warn_if_resharded(params, mu)
    _precision.warn_if_resharded(params, nu)
    return MomentsState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(
    updates: optax.Updates, state: MomentsState, params: optax.Params | None = None
  ) -> tuple[Moments, MomentsState]:
    del params
    if isinstance(updates, Moments):
      raise TypeError(
        f"{piece} expected gradients (param-shaped updates) but got "
        "ao.Moments: it must be the first piece of the Adam chain."
      )
    # A low-bit moment that came back from nnx.state (or a checkpoint) as a
    # mapping is read with the format this piece knows, and handed back alike.
    stored_mu, mu_back = _precision.adopt(state.mu, updates, mu_dtype)
    stored_nu, nu_back = _precision.adopt(state.nu, updates, nu_dtype, real=True)
    _validate.check_gradients(piece, updates, stored_mu)

    def new_moments(*inputs: chex.ArrayTree) -> tuple[chex.ArrayTree, ...]:
      updates, stored_mu, stored_nu = inputs
      grad = _precision.upcast(updates)
      mu = optax.tree.update_moment(grad, _precision.upcast(stored_mu), b1, 1)
      return grad, mu, second_moment(grad, _precision.upcast(stored_nu))

    inputs = (updates, stored_mu, stored_nu)
    grad, mu, nu = new_moments(*inputs)
    # Low-bit moments are coded from copies of the new moments made again from the
    # inputs, apart from the first on a GPU (_precision.copies_apart says why).
    copies = _precision.copies_apart(new_moments, inputs, (stored_mu, stored_nu))
    count = optax.safe_increment(state.count)
    moments = Moments(
      mu=mu,
      nu=nu,
      count=count,
      b1=b1,
      b2=b2,
      grad=grad,
      dtypes=_precision.update_dtypes(updates, stored_mu, stored_nu),
      order=order,
    )
    # The emitted moments keep compute precision; only the state is rounded.
    new_state = MomentsState(
      count=count,
      mu=mu_back(_precision.cast_like(mu, stored_mu, *(c[1] for c in copies))),
      nu=nu_back(_precision.cast_like(nu, stored_nu, *(c[2] for c in copies))),
    )
    return moments, new_state

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_moments(
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  *,
  mu_dtype: DTypeLike | None = None,
  nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""Keeps the exponential moving averages of the gradient and its square.

  .. math::

    t \leftarrow t + 1, \qquad
    m_t = \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2

  with :math:`m_0 = v_0 = 0`. Emits :class:`Moments` (not param-shaped
  updates), so it is the first piece of a chain that ends with
  :func:`normalize`. For complex gradients :math:`v_t` is real. The storage
  formats follow the dtype policy of :mod:`adam_optax._precision`: the
  arithmetic is in at least float32, only the stored state is rounded.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_optax as ao
    >>> tx = optax.chain(ao.scale_by_moments(), ao.bias_correct(),
    ...                  ao.normalize(), ao.scale_by_lr(0.1))
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> updates, state = tx.update({"w": jnp.array([0.5, -4.0])}, tx.init(params))
    >>> updates["w"]  # the first step is -lr * sign(g)
    Array([-0.1,  0.1], dtype=float32)

  Args:
    b1: decay rate :math:`\beta_1` of the first moment, ``0 <= b1 < 1``.
    b2: decay rate :math:`\beta_2` of the second moment, ``0 <= b2 < 1``.
    mu_dtype: storage dtype of :math:`m_t`; ``None`` keeps the params' dtype.
    nu_dtype: storage dtype of :math:`v_t`; ``None`` keeps the params' (real)
      dtype. ``init`` warns when a dtype cannot hold one step of the average
      (e.g. ``b2=0.999`` in bfloat16).

  Returns:
    An :class:`optax.GradientTransformation` whose state is
    :class:`MomentsState` and whose ``update`` emits :class:`Moments`.

  Raises:
    ValueError: at construction, for a concrete ``b1``/``b2`` outside
      ``[0, 1)`` or a non-inexact storage dtype; at update, for gradients
      whose tree or shapes do not match the state (naming the path).
    TypeError: at init, for integer params (naming the path); at update, for
      integer gradients or :class:`Moments` input.

  References:
    Kingma & Ba, 2015, Algorithm 1, lines 5, 7 and 8.
  """
  return _moments_transformation(
    piece="ao.scale_by_moments",
    b1=b1,
    b2=b2,
    second_moment=lambda g, nu: optax.tree.update_moment_per_elem_norm(g, nu, b2, 2),
    order=2.0,
    mu_dtype=mu_dtype,
    nu_dtype=nu_dtype,
  )


def scale_by_infinity_moments(
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-8,
  *,
  mu_dtype: DTypeLike | None = None,
  nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""AdaMax's moments: the first moment and an exponentially weighted infinity norm.

  .. math::

    m_t = \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
    u_t = \max(\beta_2 u_{t-1},\ |g_t| + \epsilon)

  :math:`u_t` is the limit :math:`p \to \infty` of the :math:`L^p` moment
  :math:`(v_t)^{1/p}`; it is not biased towards zero, so :func:`bias_correct`
  corrects only :math:`m_t`, and :func:`normalize` divides by :math:`u_t`
  without a square root. ``eps`` sits inside the maximum (as in optax) so
  that :math:`u_t > 0`.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_optax as ao
    >>> tx = optax.chain(ao.scale_by_infinity_moments(), ao.bias_correct(),
    ...                  ao.normalize(eps=0.0), ao.scale_by_lr(0.1))
    >>> params = jnp.zeros(2)
    >>> updates, _ = tx.update(jnp.array([0.5, -4.0]), tx.init(params))
    >>> updates
    Array([-0.1,  0.1], dtype=float32)

  Args:
    b1: decay rate of the first moment, ``0 <= b1 < 1``.
    b2: decay rate of the infinity norm, ``0 <= b2 < 1``.
    eps: added to :math:`|g_t|` inside the maximum, ``eps >= 0``.
    mu_dtype: storage dtype of :math:`m_t` (default: the params' dtype).
    nu_dtype: storage dtype of :math:`u_t` (default: the params' real dtype).

  Returns:
    An :class:`optax.GradientTransformation` emitting :class:`Moments` with
    ``order=math.inf``; its state is :class:`MomentsState`.

  References:
    Kingma & Ba, 2015, section 7.1 (Algorithm 2).
  """
  _validate.check_non_negative("eps", eps)
  return _moments_transformation(
    piece="ao.scale_by_infinity_moments",
    b1=b1,
    b2=b2,
    second_moment=lambda g, nu: optax.tree.update_infinity_moment(g, nu, b2, eps),
    order=math.inf,
    mu_dtype=mu_dtype,
    nu_dtype=nu_dtype,
  )
