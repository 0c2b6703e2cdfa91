r"""The step-size bounds of section 2.1 of the paper, and a strict one.

The paper bounds Adam's effective step :math:`\Delta_t = \alpha\, \hat m_t /
\sqrt{\hat v_t}` (with :math:`\epsilon = 0`) by

.. math::

  |\Delta_t| \lessapprox \alpha \frac{1 - \beta_1}{\sqrt{1 - \beta_2}}
  \text{ if } 1 - \beta_1 > \sqrt{1 - \beta_2}, \text{ else } \alpha,

reached by the most severe sparsity (zero gradients for a long time, then one
non-zero). It is approximate: a steadily growing gradient exceeds it (by about
17% after 300 steps with the default decay rates). Cauchy–Schwarz on
:math:`\hat m_t = \sum_{k=0}^{t-1} w_k\, g_{t-k}` against
:math:`v_t = (1 - \beta_2) \sum_k \beta_2^k g_{t-k}^2` gives a bound that holds
for every gradient stream:

.. math::

  \frac{|\hat m_t|}{\sqrt{\hat v_t}} \le
  \sqrt{\frac{b_t}{1 - \beta_2} \sum_{k=0}^{t-1} \frac{w_k^2}{\beta_2^k}},

where :math:`b_t` is the factor :math:`\hat v_t = v_t / b_t` was divided by.
Adam's weights :math:`w_k = (1-\beta_1)\beta_1^k / (1-\beta_1^t)` give the
closed form (with :math:`\gamma = \beta_1^2 / \beta_2`)

.. math::

  |\Delta_t| \le \alpha \frac{(1 - \beta_1) \sqrt{1 - \beta_2^t}}
  {(1 - \beta_1^t) \sqrt{1 - \beta_2}} \sqrt{\frac{1 - \gamma^t}{1 - \gamma}},

tight for the stream :math:`g_{t-k} \propto (\beta_1/\beta_2)^k` and finite for
every :math:`t` (it grows with :math:`t` when :math:`\gamma \ge 1`). An
:math:`\epsilon > 0` only shrinks the step, so the bound still holds. For
AdaMax, :math:`u_t \ge \beta_2^k |g_{t-k}|` gives
:math:`|\hat m_t| / u_t \le \sum_k w_k / \beta_2^k`: the paper's
:math:`|\Delta_t| \le \alpha` is approximate too (a gradient decaying like
:math:`\beta_2^t` exceeds it by up to
:math:`(1-\beta_1)/(1-\beta_1/\beta_2) - 1`, 0.9% with the defaults).

Everything here is in units of :math:`\alpha` (the bound on
:math:`|\hat m_t| / \sqrt{\hat v_t}`), and is computed with the same
expressions as the moments and the bias correction (``1 - b1`` and
``1 - b1**t`` on the same values), so the bound and the step see the same
rounding.

References:
  Kingma & Ba, 2015, sections 2.1 and 7.1.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp


def geometric_sum(ratio: chex.Numeric, count: chex.Array) -> chex.Array:
  r""":math:`\sum_{k=0}^{t-1} r^k` for :math:`r \in [0, \infty]`, :math:`t \ge 1`.

  Computed as ``expm1(t log r) / expm1(log r)``, accurate for :math:`r` near 1;
  :math:`r = 1` gives :math:`t`, :math:`r = \infty` gives 1 at :math:`t = 1` and
  :math:`\infty` after.
  """
  ratio = jnp.asarray(ratio, jnp.float32)
  t = jnp.asarray(count, jnp.float32)
  log_ratio = jnp.log(ratio)
  # Both branches are evaluated; the where picks the finite one.
  closed_form = jnp.expm1(t * log_ratio) / jnp.expm1(log_ratio)
  infinite = jnp.where(t <= 1, 1.0, jnp.inf)
  return jnp.where(ratio == 1, t, jnp.where(jnp.isinf(ratio), infinite, closed_form))


def _ratio(numerator: chex.Numeric, b2: chex.Numeric) -> chex.Array:
  """``numerator / b2``, with 0 when the numerator is 0 (even for ``b2 = 0``)."""
  numerator = jnp.asarray(numerator, jnp.float32)
  b2 = jnp.asarray(b2, jnp.float32)
  return jnp.where(numerator == 0, 0.0, numerator / b2)


def strict_bound(
  b1: chex.Numeric,
  b2: chex.Numeric,
  count: chex.Array,
  *,
  infinity_norm: chex.Array | bool = False,
  corrected_mu: chex.Array | bool = True,
  corrected_nu: chex.Array | bool = True,
  complements: tuple[chex.Numeric, chex.Numeric] | None = None,
) -> chex.Array:
  r"""The bound on :math:`|\hat m_t| / \sqrt{\hat v_t}` that holds for every stream.

  The flags may be traced booleans (as a state restored from a checkpoint
  holds them); both forms are computed and the flags select.

  Args:
    b1: :math:`\beta_1` as the moments used it.
    b2: :math:`\beta_2` as the moments used it.
    count: the step :math:`t \ge 1`.
    infinity_norm: the second moment is AdaMax's :math:`u_t`, not :math:`v_t`.
    corrected_mu: the first moment was divided by :math:`1 - \beta_1^t`.
    corrected_nu: the second moment was divided by :math:`1 - \beta_2^t`
      (ignored for AdaMax).
    complements: :math:`(1 - \beta_1, 1 - \beta_2)` as the moments computed
      them (for Python floats, in double precision before rounding), when
      ``b1``, ``b2`` are their float32 roundings; default ``1 - b1``, ``1 - b2``.

  Returns:
    A float32 scalar, :math:`+\infty` when no bound exists (``b2 = 0 < b1``
    after the first step).

  References:
    Kingma & Ba, 2015, section 2.1 (this module's docstring derives it).
  """
  first, root = complements or (1 - b1, 1 - b2)
  weight = jnp.where(corrected_mu, first / (1 - b1**count), first)
  infinity = weight * geometric_sum(_ratio(b1, b2), count)
  second = jnp.where(corrected_nu, 1 - b2**count, 1.0)
  squared = weight**2 * geometric_sum(_ratio(b1**2, b2), count)
  finite = jnp.sqrt(squared * second / root)
  return jnp.where(infinity_norm, infinity, finite).astype(jnp.float32)


def paper_bound(
  b1: chex.Numeric,
  b2: chex.Numeric,
  *,
  infinity_norm: chex.Array | bool = False,
  complements: tuple[chex.Numeric, chex.Numeric] | None = None,
) -> chex.Array:
  r"""The paper's approximate bound on :math:`|\hat m_t| / \sqrt{\hat v_t}`.

  :math:`(1-\beta_1)/\sqrt{1-\beta_2}` when :math:`1-\beta_1 > \sqrt{1-\beta_2}`,
  else 1; for AdaMax (``infinity_norm``) 1. ``complements`` as for
  :func:`strict_bound`.

  References:
    Kingma & Ba, 2015, section 2.1 and section 7.1.
  """
  first, second = complements or (1 - b1, 1 - b2)
  first, root = jnp.asarray(first, jnp.float32), jnp.sqrt(jnp.asarray(second, jnp.float32))
  adam = jnp.where(first > root, first / root, 1.0)
  return jnp.where(infinity_norm, 1.0, adam).astype(jnp.float32)
