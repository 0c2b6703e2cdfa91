"""The optimizers: chains of the pieces, with optax's signatures and defaults.

Each pieces' docstring holds the math; these say only what each optimizer
adds. All of them are exactly the :func:`optax.chain` they return, so their
states are tuples of the pieces' states.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import optax

from adam_optax import _precision, _validate
from adam_optax.bias import bias_correct
from adam_optax.lr import scale_by_lr
from adam_optax.moments import scale_by_infinity_moments, scale_by_moments
from adam_optax.normalize import normalize
from adam_optax.running_max import running_max


def _chain(
  learning_rate: optax.ScalarOrSchedule,
  moments: optax.GradientTransformation,
  bias: optax.GradientTransformation,
  *,
  eps: chex.Numeric,
  eps_root: chex.Numeric,
  diagnostics: bool,
  before_normalize: tuple[optax.GradientTransformation, ...] = (),
  before_lr: tuple[optax.GradientTransformation, ...] = (),
) -> optax.GradientTransformationExtraArgs:
  """Algorithm 1's chain; with ``diagnostics``, ``normalize`` and ``scale_by_lr`` record.

  The flag changes what two pieces keep, never where a piece sits in the chain.
  """
  return optax.chain(
    moments,
    bias,
    *before_normalize,
    normalize(eps, eps_root, diagnostics=diagnostics),
    *before_lr,
    scale_by_lr(learning_rate, diagnostics=diagnostics),
  )


def adam(
  learning_rate: optax.ScalarOrSchedule,
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-8,
  eps_root: chex.Numeric = 0.0,
  mu_dtype: _precision.Storage | None = None,
  *,
  nesterov: bool = False,
  nu_dtype: _precision.Storage | None = None,
  diagnostics: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam: Algorithm 1 of the paper, as a chain of its four pieces.

  .. math::

    \theta_t = \theta_{t-1} - \alpha\,
      \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

  Exactly ``optax.chain(scale_by_moments(b1, b2), bias_correct(),
  normalize(eps, eps_root), scale_by_lr(learning_rate))``; see
  :func:`scale_by_moments`, :func:`bias_correct`, :func:`normalize` and
  :func:`scale_by_lr` for each line. The positional parameters are
  :func:`optax.adam`'s, in its order and with its defaults; the additions are
  keyword-only. Agrees with :func:`optax.adam` to the bit in float32.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, adam_optax as ao
    >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
    >>> tx = ao.adam(0.1)
    >>> params = jnp.zeros(2)
    >>> state = tx.init(params)
    >>> for _ in range(200):
    ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...     params = optax.apply_updates(params, updates)
    >>> bool(jnp.allclose(params, 3.0, atol=1e-2))
    True

  Args:
    learning_rate: step size :math:`\alpha` (number or schedule).
    b1: :math:`\beta_1`, decay of the first moment.
    b2: :math:`\beta_2`, decay of the second moment.
    eps: :math:`\epsilon`, added to the denominator.
    eps_root: added inside the square root of the denominator.
    mu_dtype: storage dtype of the first moment (default: the params').
    nesterov: use the Nesterov first moment (that is :func:`nadam`).
    nu_dtype: storage dtype of the second moment (default: the params' real
      dtype).
    diagnostics: have :func:`normalize` and :func:`scale_by_lr` record what
      the step used (:class:`NormalizeState`, :class:`ScaleByLrState`), so
      that :func:`diagnostics` can read the step, its bounds and the
      signal-to-noise ratio from the state. It adds two small arrays to the
      state and moves no piece; the updates are the same to the bit.

  Returns:
    The chain, an :class:`optax.GradientTransformationExtraArgs`.

  References:
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
    Algorithm 1.
  """
  return _chain(
    learning_rate,
    scale_by_moments(b1, b2, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    bias_correct(nesterov=nesterov),
    eps=eps,
    eps_root=eps_root,
    diagnostics=diagnostics,
  )


def adamw(
  learning_rate: optax.ScalarOrSchedule,
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-8,
  eps_root: chex.Numeric = 0.0,
  mu_dtype: _precision.Storage | None = None,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  *,
  nesterov: bool = False,
  nu_dtype: _precision.Storage | None = None,
  diagnostics: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW: :func:`adam` with weight decay decoupled from the moments.

  .. math::

    \theta_t = \theta_{t-1} - \alpha \left(
      \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}
      + \lambda\, \theta_{t-1} \right)

  The chain of :func:`adam` with :func:`optax.add_decayed_weights` inserted
  before :func:`scale_by_lr`, so the decay is scaled by the learning rate but
  not by :math:`1/\sqrt{\hat v_t}`. Agrees with :func:`optax.adamw`.

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> tx = ao.adamw(0.1, weight_decay=0.5)
    >>> params = jnp.array([2.0])
    >>> updates, _ = tx.update(jnp.array([1.0]), tx.init(params), params)
    >>> updates  # -0.1 * (sign(g) + 0.5 * 2)
    Array([-0.2], dtype=float32)

  Args:
    learning_rate: see :func:`adam`.
    b1: see :func:`adam`.
    b2: see :func:`adam`.
    eps: see :func:`adam`.
    eps_root: see :func:`adam`.
    mu_dtype: see :func:`adam`.
    weight_decay: :math:`\lambda` (number or schedule).
    mask: a tree of booleans like the params, or a function of the params
      returning one, selecting the leaves to decay (e.g. not biases).
    nesterov: see :func:`adam` (that is :func:`nadamw`).
    nu_dtype: see :func:`adam`.
    diagnostics: see :func:`adam`; the step it reads excludes the weight decay.

  Returns:
    The chain, an :class:`optax.GradientTransformationExtraArgs`.

  References:
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
  """
  _validate.check_finite("weight_decay", weight_decay)
  return _chain(
    learning_rate,
    scale_by_moments(b1, b2, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    bias_correct(nesterov=nesterov),
    eps=eps,
    eps_root=eps_root,
    diagnostics=diagnostics,
    before_lr=(optax.add_decayed_weights(weight_decay, mask),),
  )


def nadam(
  learning_rate: optax.ScalarOrSchedule,
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-8,
  eps_root: chex.Numeric = 0.0,
  mu_dtype: _precision.Storage | None = None,
  *,
  nesterov: bool = True,
  nu_dtype: _precision.Storage | None = None,
  diagnostics: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""NAdam: :func:`adam` with the Nesterov first moment of :func:`bias_correct`.

  Exactly ``adam(..., nesterov=True)``, as :func:`optax.nadam` is (and, as
  there, ``nesterov=False`` gives :func:`adam`).

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> tx = ao.nadam(0.1)
    >>> updates, _ = tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)))
    >>> updates
    Array([-0.1], dtype=float32)

  Args:
    learning_rate: see :func:`adam`.
    b1: see :func:`adam`.
    b2: see :func:`adam`.
    eps: see :func:`adam`.
    eps_root: see :func:`adam`.
    mu_dtype: see :func:`adam`.
    nesterov: see :func:`adam`.
    nu_dtype: see :func:`adam`.
    diagnostics: see :func:`adam` and, for NAdam's step, :func:`diagnostics`.

  Returns:
    The chain, an :class:`optax.GradientTransformationExtraArgs`.

  References:
    Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016.
  """
  return adam(
    learning_rate,
    b1,
    b2,
    eps,
    eps_root,
    mu_dtype,
    nesterov=nesterov,
    nu_dtype=nu_dtype,
    diagnostics=diagnostics,
  )


def nadamw(
  learning_rate: optax.ScalarOrSchedule,
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-8,
  eps_root: chex.Numeric = 0.0,
  mu_dtype: _precision.Storage | None = None,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  *,
  nesterov: bool = True,
  nu_dtype: _precision.Storage | None = None,
  diagnostics: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""NAdamW: :func:`adamw` with the Nesterov first moment, as :func:`optax.nadamw`.

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> tx = ao.nadamw(0.1, weight_decay=0.5)
    >>> params = jnp.array([2.0])
    >>> updates, _ = tx.update(jnp.array([1.0]), tx.init(params), params)
    >>> updates  # -0.1 * (sign(g) + 0.5 * 2)
    Array([-0.2], dtype=float32)

  Args:
    learning_rate: see :func:`adam`.
    b1: see :func:`adam`.
    b2: see :func:`adam`.
    eps: see :func:`adam`.
    eps_root: see :func:`adam`.
    mu_dtype: see :func:`adam`.
    weight_decay: see :func:`adamw`.
    mask: see :func:`adamw`.
    nesterov: see :func:`adam`.
    nu_dtype: see :func:`adam`.
    diagnostics: see :func:`nadam`.

  Returns:
    The chain, an :class:`optax.GradientTransformationExtraArgs`.

  References:
    Dozat, 2016; Loshchilov & Hutter, ICLR 2019.
  """
  return adamw(
    learning_rate,
    b1,
    b2,
    eps,
    eps_root,
    mu_dtype,
    weight_decay,
    mask,
    nesterov=nesterov,
    nu_dtype=nu_dtype,
    diagnostics=diagnostics,
  )


def adamax(
  learning_rate: optax.ScalarOrSchedule,
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-8,
  *,
  diagnostics: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaMax: Adam with the infinity norm in place of the second moment.

  .. math::

    \theta_t = \theta_{t-1} - \frac{\alpha}{1 - \beta_1^t}\, \frac{m_t}{u_t}

  The chain ``scale_by_infinity_moments(b1, b2, eps)``, ``bias_correct()``
  (which leaves :math:`u_t` alone), ``normalize(eps=0)`` (which divides by
  :math:`u_t`) and ``scale_by_lr``. The paper's
  :math:`|\Delta_t| \le \alpha` is approximate: a gradient decaying by
  :math:`\beta_2` per step exceeds it by about 0.9% with the defaults. Agrees
  with :func:`optax.adamax`.

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> tx = ao.adamax(0.1)
    >>> updates, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    >>> updates
    Array([-0.1], dtype=float32)

  Args:
    learning_rate: see :func:`adam`.
    b1: see :func:`adam`.
    b2: decay of the infinity norm.
    eps: added to :math:`|g_t|` inside the maximum.
    diagnostics: see :func:`adam`; the bounds are AdaMax's.

  Returns:
    The chain, an :class:`optax.GradientTransformationExtraArgs`.

  References:
    Kingma & Ba, 2015, section 7.1, Algorithm 2.
  """
  return _chain(
    learning_rate,
    scale_by_infinity_moments(b1, b2, eps),
    bias_correct(),
    eps=0.0,
    eps_root=0.0,
    diagnostics=diagnostics,
  )


def amsgrad(
  learning_rate: optax.ScalarOrSchedule,
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-8,
  eps_root: chex.Numeric = 0.0,
  mu_dtype: _precision.Storage | None = None,
  bias_correction_mu: bool = True,
  bias_correction_nu: bool = True,
  *,
  nu_dtype: _precision.Storage | None = None,
  diagnostics: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AMSGrad: :func:`adam` with :func:`running_max` before :func:`normalize`.

  .. math::

    \theta_t = \theta_{t-1} - \alpha\,
      \frac{\hat m_t}{\sqrt{\max_{s \le t} \hat v_s + \epsilon_{root}} + \epsilon}

  Agrees with :func:`optax.amsgrad` (which also bias-corrects by default).

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> tx = ao.amsgrad(0.1)
    >>> updates, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    >>> updates
    Array([-0.1], dtype=float32)

  Args:
    learning_rate: see :func:`adam`.
    b1: see :func:`adam`.
    b2: see :func:`adam`.
    eps: see :func:`adam`.
    eps_root: see :func:`adam`.
    mu_dtype: see :func:`adam`.
    bias_correction_mu: bias-correct the first moment.
    bias_correction_nu: bias-correct the second moment before the maximum
      (``False`` for both gives the original paper's AMSGrad).
    nu_dtype: storage dtype of the second moment and of its maximum.
    diagnostics: see :func:`adam`.

  Returns:
    The chain, an :class:`optax.GradientTransformationExtraArgs`.

  References:
    Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018.
  """
  return _chain(
    learning_rate,
    scale_by_moments(b1, b2, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
    bias_correct(mu=bias_correction_mu, nu=bias_correction_nu),
    eps=eps,
    eps_root=eps_root,
    diagnostics=diagnostics,
    before_normalize=(running_max(nu_dtype=nu_dtype),),
  )
