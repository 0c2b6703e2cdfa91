r"""Section 7.2 of the paper: temporal averaging of the parameters.

The last iterate of a stochastic optimizer is noisy; an exponential moving
average of the iterates is often a better estimate of the optimum.
:func:`average_params` keeps that average in the optimizer state (at the end
of a chain, where it sees the final updates and the params) and
:func:`averaged_params` reads it back, bias-corrected, for evaluation.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from adam_optax import _fields, _precision, _validate
from adam_optax._pieces import require_param_shaped


class AveragedParamsState(NamedTuple):
  r"""State of :func:`average_params`.

  Attributes:
    average: :math:`\bar\theta_t`, the moving average of the parameters (zero
      at the start), in its storage dtype.
    weight: :math:`1 - \beta^t`, the total weight the average has given the
      parameters so far (the same average taken of the constant 1), float32.
  """

  average: chex.ArrayTree
  weight: chex.Array


def average_params(
  beta: chex.Numeric = 0.999, *, dtype: DTypeLike | None = None
) -> optax.GradientTransformation:
  r"""Keeps an exponential moving average of the parameters.

  .. math::

    \theta_t = \theta_{t-1} + \Delta_t, \qquad
    \bar\theta_t = \beta\, \bar\theta_{t-1} + (1 - \beta)\, \theta_t, \qquad
    \hat\theta_t = \frac{\bar\theta_t}{1 - \beta^t}

  with :math:`\bar\theta_0 = 0` and the bias correction of the moments. The
  updates pass through unchanged, so put it last in a chain (it must see the
  final :math:`\Delta_t`) and hand ``update`` the params. The divisor
  :math:`1 - \beta^t` is kept as the same moving average of the constant 1,
  so it stays right when ``beta`` changes between steps
  (:func:`optax.inject_hyperparams`). Read :math:`\hat\theta_t` with
  :func:`averaged_params`.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_optax as ao
    >>> from adam_optax.averaging import average_params, averaged_params
    >>> tx = optax.chain(ao.scale_by_lr(0.1), average_params(beta=0.5))
    >>> params = jnp.array([1.0])
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...     updates, state = tx.update(jnp.array([1.0]), state, params)
    ...     params = optax.apply_updates(params, updates)
    >>> params, averaged_params(state)  # (0.9 + 2 * 0.8) / 3 (weights 1/3, 2/3)
    (Array([0.8], dtype=float32), Array([0.83333], dtype=float32))

  Args:
    beta: the decay :math:`\beta`, ``0 <= beta < 1`` (the paper uses
      :math:`\beta_2`; 0 keeps the last iterate).
    dtype: storage dtype of the average; ``None`` keeps the params' dtype.
      Arithmetic is in at least float32, but a stored bfloat16 average with
      ``beta=0.999`` cannot move (``0.999 * x`` rounds back to ``x``): ``init``
      then warns once, naming ``dtype=jnp.float32`` as the fix.

  Returns:
    An :class:`optax.GradientTransformation` on param-shaped updates whose
    state is :class:`AveragedParamsState`.

  Raises:
    ValueError: at construction, for a concrete ``beta`` outside ``[0, 1)``
      or a non-inexact ``dtype``; at update, when ``params`` is not given.
    TypeError: at update, when handed :class:`Moments` instead of updates.

  References:
    Kingma & Ba, 2015, section 7.2 (temporal averaging, with the bias
    correction of section 3).
  """
  _validate.check_decay("beta", beta)
  _validate.check_inexact_dtype("dtype", dtype)

  def init_fn(params: optax.Params) -> AveragedParamsState:
    average = _precision.zeros(params, dtype)
    _precision.warn_if_decay_vanishes("beta", beta, average, what="the average", fix="dtype")
    return AveragedParamsState(average=average, weight=jnp.zeros([], jnp.float32))

  def update_fn(
    updates: optax.Updates, state: AveragedParamsState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, AveragedParamsState]:
    require_param_shaped("ao.average_params", updates)
    if params is None:
      raise ValueError(
        "ao.average_params needs the params to average: call tx.update(updates, state, params)."
      )
    new_params = _precision.upcast(optax.apply_updates(params, updates))
    average = optax.tree.update_moment(new_params, _precision.upcast(state.average), beta, 1)
    weight = optax.tree.update_moment(jnp.ones([], jnp.float32), state.weight, beta, 1)
    new_state = AveragedParamsState(
      average=_precision.cast_like(average, state.average), weight=weight.astype(jnp.float32)
    )
    return updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)


def averaged_params(opt_state: optax.OptState) -> optax.Params:
  r"""The bias-corrected average :math:`\hat\theta_t = \bar\theta_t / (1 - \beta^t)`.

  Finds the one state of :func:`average_params` in ``opt_state`` by its
  field names (``average``, ``weight``), as :func:`optax.tree_utils.tree_get`
  does: inside :func:`optax.chain`, :func:`optax.inject_hyperparams`,
  :class:`optax.MultiSteps`, in ``nnx.state(optimizer)`` or in a checkpoint
  restored without a target. Returns a tree like the stored average (the
  params' tree; in ``nnx.state`` form for an ``nnx.state``), in the storage
  dtype, ready for evaluation. Before the first step the average is empty
  and this returns zeros. With Flax NNX, load the result into a copy of the
  model::

    averaged = averaged_params(nnx.state(optimizer))
    eval_model = nnx.clone(model)
    nnx.update(eval_model, averaged)

  Args:
    opt_state: an optimizer state holding one :func:`average_params` state.

  Returns:
    The averaged parameters.

  Raises:
    ValueError: when ``opt_state`` holds none, or several.

  References:
    Kingma & Ba, 2015, section 7.2.
  """
  found = _fields.find(opt_state, AveragedParamsState._fields)
  if len(found) != 1:
    where = ", ".join(path or "<root>" for path, _ in found) or "nowhere"
    raise ValueError(
      "ao.averaged_params expected exactly one ao.average_params state (average, weight) "
      f"in the optimizer state, but found {len(found)}: {where}."
    )
  state = found[0][1]
  weight = _fields.scalar(state["weight"])
  divisor = jnp.where(weight > 0, weight, 1.0)
  return jax.tree.map(lambda a: (_precision.upcast(a) / divisor).astype(a.dtype), state["average"])
