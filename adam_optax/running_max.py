"""AMSGrad's addition to the chain: a running maximum of the second moment."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from adam_optax import _precision, _validate
from adam_optax._pieces import require_moments
from adam_optax.moments import Moments


class RunningMaxState(NamedTuple):
  r"""State of :func:`running_max`.

  Attributes:
    nu_max: the elementwise maximum of every :math:`\hat v_s`, :math:`s \le t`.
  """

  nu_max: chex.ArrayTree


def running_max(*, nu_dtype: DTypeLike | None = None) -> optax.GradientTransformation:
  r"""Replaces the second moment by its running maximum (AMSGrad).

  .. math::

    \hat v^{\max}_t = \max(\hat v^{\max}_{t-1},\ \hat v_t)

  Placed between :func:`bias_correct` and :func:`normalize`, it makes the
  effective per-coordinate step size :math:`\alpha/\sqrt{\hat v^{\max}_t}`
  non-increasing, which repairs the non-convergence example of Reddi et al.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_optax as ao
    >>> tx = optax.chain(ao.scale_by_moments(), ao.bias_correct(), ao.running_max())
    >>> state = tx.init(jnp.zeros(1))
    >>> _, state = tx.update(jnp.array([4.0]), state)
    >>> moments, state = tx.update(jnp.array([0.0]), state)
    >>> moments.nu  # v-hat fell to about 8, the maximum keeps 16
    Array([16.], dtype=float32)

  Args:
    nu_dtype: storage dtype of the maximum (default: the params' real dtype).

  Returns:
    An :class:`optax.GradientTransformation` mapping :class:`Moments` to
    :class:`Moments`; its state is :class:`RunningMaxState`.

  References:
    Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018,
    Algorithm 2.
  """
  _validate.check_storage("nu_dtype", nu_dtype)

  def init_fn(params: optax.Params) -> RunningMaxState:
    nu_max = _precision.zeros(params, nu_dtype, real=True)
    _precision.warn_if_resharded(params, nu_max)
    return RunningMaxState(nu_max=nu_max)

  def update_fn(
    updates: Moments, state: RunningMaxState, params: optax.Params | None = None
  ) -> tuple[Moments, RunningMaxState]:
    del params
    moments = require_moments("ao.running_max", updates)
    stored, back = _precision.adopt(state.nu_max, moments.nu, nu_dtype, real=True)

    def new_max(stored: chex.ArrayTree, nu: chex.ArrayTree) -> chex.ArrayTree:
      return jax.tree.map(jnp.maximum, _precision.upcast(stored), nu)

    nu_max = new_max(stored, moments.nu)
    # A low-bit maximum is coded from copies made apart on a GPU, as the moments are.
    copies = _precision.copies_apart(new_max, (stored, moments.nu), stored)
    new_state = RunningMaxState(nu_max=back(_precision.cast_like(nu_max, stored, *copies)))
    dtypes = jax.tree.map(lambda d, m: jnp.result_type(d, m.dtype), moments.dtypes, stored)
    return dataclasses.replace(moments, nu=nu_max, dtypes=dtypes), new_state

  return optax.GradientTransformation(init_fn, update_fn)
