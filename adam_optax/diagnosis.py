r"""Diagnostics: what Adam's step does, computed from the state when read.

Almost everything worth watching in Adam's step is a function of what the
state already holds: the moments :math:`m_t`, :math:`v_t` and the count
:math:`t`, plus the hyper-parameters. So nothing param-sized is recorded:
:func:`diagnose` keeps only the scalars the moments state lacks (the step
size :math:`\alpha_t` of this step, :math:`\beta_1`, :math:`\beta_2`,
:math:`\epsilon`, :math:`\epsilon_{root}` and how the moments were
bias-corrected), and :func:`diagnostics` recomputes
:math:`\hat m_t`, :math:`\hat v_t` and the direction
:math:`u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)` from the
stored moments when it is called: one pass over the moments per read, none
per step.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from adam_optax import _bounds, _fields, _precision, _validate
from adam_optax._pieces import require_moments
from adam_optax.moments import Moments, MomentsState

# A coordinate is "above" a bound only when it exceeds it by more than this
# relative slack: the step and the bound are float32 results of a few dozen
# roundings (the moving averages, the bias correction, the root), each within
# about one ulp (1.2e-7), so an exact tie can land up to a few ulp on either
# side. 1e-5 is about 80 ulp: ties count as within, real excesses do not hide.
SLACK = 1e-5

#: The names :func:`diagnostics` returns, in order.
READINGS: tuple[str, ...] = (
  "step_max",
  "step_mean",
  "bound_paper",
  "bound_strict",
  "above_paper",
  "above_strict",
  "snr_max",
  "snr_mean",
  "bias_correction_mu",
  "bias_correction_nu",
  "mu_norm",
  "nu_norm",
  "alpha",
)


class DiagnosticsState(NamedTuple):
  r"""State of :func:`diagnose`: what the moments state does not hold, as scalars.

  Attributes:
    alpha: the step size :math:`\alpha_t` of the last step (a schedule's value).
    b1: :math:`\beta_1` as the moments used it.
    b2: :math:`\beta_2` as the moments used it.
    one_minus_b1: :math:`1 - \beta_1` as the moments computed it (for a
      Python float, in double precision and then rounded, which float32
      ``1 - b1`` would not reproduce).
    one_minus_b2: :math:`1 - \beta_2` likewise.
    eps: :math:`\epsilon` of :func:`normalize`.
    eps_root: :math:`\epsilon_{root}` of :func:`normalize`.
    corrected_mu: whether :math:`\hat m_t = m_t / (1 - \beta_1^t)`.
    corrected_nu: whether :math:`\hat v_t = v_t / (1 - \beta_2^t)`.
    infinity_norm: whether the second moment is AdaMax's :math:`u_t`.
  """

  alpha: chex.Array
  b1: chex.Array
  b2: chex.Array
  one_minus_b1: chex.Array
  one_minus_b2: chex.Array
  eps: chex.Array
  eps_root: chex.Array
  corrected_mu: chex.Array
  corrected_nu: chex.Array
  infinity_norm: chex.Array


def _float(value: Any) -> chex.Array:
  """A float32 scalar, with gradients cut (a learning rate may be meta-learned)."""
  return jax.lax.stop_gradient(jnp.asarray(value, jnp.float32))


def diagnose(
  learning_rate: optax.ScalarOrSchedule,
  eps: chex.Numeric = 1e-8,
  eps_root: chex.Numeric = 0.0,
) -> optax.GradientTransformation:
  r"""Keeps what :func:`diagnostics` needs beside the moments: a few scalars.

  Placed after :func:`bias_correct` (and :func:`running_max`) and before
  :func:`normalize`, it passes the :class:`Moments` on unchanged and stores a
  :class:`DiagnosticsState`: :math:`\alpha_t`, :math:`\beta_1`,
  :math:`\beta_2` (read from the moments), :math:`\epsilon`,
  :math:`\epsilon_{root}` (declared here: give the values given to
  :func:`normalize`) and how the moments were bias-corrected. Every
  optimizer builds it for ``diagnostics=True``. It adds ten scalars to the
  state and no work on param-sized arrays to the step.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_optax as ao
    >>> tx = optax.chain(ao.scale_by_moments(), ao.bias_correct(),
    ...                  ao.diagnose(0.1), ao.normalize(), ao.scale_by_lr(0.1))
    >>> _, state = tx.update(jnp.array([3.0, -1.0]), tx.init(jnp.zeros(2)))
    >>> stats = ao.diagnostics(state)
    >>> float(stats["step_max"]), float(stats["above_strict"])  # |Δ_1| = α
    (0.1, 0.0)

  Args:
    learning_rate: :math:`\alpha`, as given to :func:`scale_by_lr` (a
      schedule is read at :math:`t - 1`, as ``scale_by_lr`` reads it).
    eps: :math:`\epsilon`, as given to :func:`normalize`.
    eps_root: :math:`\epsilon_{root}`, as given to :func:`normalize`.

  Returns:
    An :class:`optax.GradientTransformation` from :class:`Moments` to the
    same :class:`Moments`; its state is :class:`DiagnosticsState`.

  Raises:
    ValueError: at construction, for a concrete non-finite learning rate or
      negative ``eps``/``eps_root``.
    TypeError: at update, when the input is not :class:`Moments`.

  References:
    Kingma & Ba, 2015, section 2.1 and Algorithm 1 lines 9-11.
  """
  _validate.check_finite("learning_rate", learning_rate)
  _validate.check_non_negative("eps", eps)
  _validate.check_non_negative("eps_root", eps_root)

  def init_fn(params: optax.Params) -> DiagnosticsState:
    del params
    # One array per field: a state whose fields share a buffer cannot be donated.
    flags = ("corrected_mu", "corrected_nu", "infinity_norm")
    return DiagnosticsState(
      **{
        name: jnp.zeros([], bool if name in flags else jnp.float32)
        for name in DiagnosticsState._fields
      }
    )

  def update_fn(
    updates: Moments, state: DiagnosticsState, params: optax.Params | None = None
  ) -> tuple[Moments, DiagnosticsState]:
    del state, params
    moments = require_moments("ao.diagnose", updates)
    alpha = learning_rate(moments.count - 1) if callable(learning_rate) else learning_rate
    return moments, DiagnosticsState(
      alpha=jnp.abs(_float(alpha)),
      b1=_float(moments.b1),
      b2=_float(moments.b2),
      one_minus_b1=_float(1 - moments.b1),
      one_minus_b2=_float(1 - moments.b2),
      eps=_float(eps),
      eps_root=_float(eps_root),
      corrected_mu=jnp.asarray(moments.corrected_mu),
      corrected_nu=jnp.asarray(moments.corrected_nu),
      infinity_norm=jnp.asarray(moments.order != 2),
    )

  return optax.GradientTransformation(init_fn, update_fn)


def _read(
  recorded: _fields.Children, moments: _fields.Children, nu_max: _fields.Children | None
) -> dict[str, chex.Array]:
  """The readings of one Adam chain from its diagnostics, moments and running-max states."""
  get = {name: _fields.scalar(recorded[name]) for name in DiagnosticsState._fields}
  b1, b2, alpha, eps, eps_root = (get[k] for k in ("b1", "b2", "alpha", "eps", "eps_root"))
  infinity = get["infinity_norm"]
  complements = (get["one_minus_b1"], get["one_minus_b2"])
  count = _fields.scalar(moments["count"])
  started = count > 0
  # The same expressions as optax.tree.bias_correction, so float32 readings are the step's.
  correction_mu = jnp.where(get["corrected_mu"] & started, 1 - b1**count, 1.0)
  correction_nu = jnp.where(get["corrected_nu"] & started, 1 - b2**count, 1.0)
  mu_hat = [m / correction_mu for m in _precision.stored_leaves(moments["mu"])]
  if nu_max is not None:  # AMSGrad: the maximum is kept as normalize divides by it.
    nu_hat = _precision.stored_leaves(nu_max["nu_max"])
  else:
    nu_hat = [v / correction_nu for v in _precision.stored_leaves(moments["nu"])]
  snr = [
    jnp.abs(m) / (jnp.where(infinity, v, jnp.sqrt(v + eps_root)) + eps)
    for m, v in zip(mu_hat, nu_hat, strict=True)
  ]
  paper = _bounds.paper_bound(b1, b2, infinity_norm=infinity, complements=complements)
  strict = _bounds.strict_bound(
    b1,
    b2,
    jnp.maximum(count, 1),
    infinity_norm=infinity,
    corrected_mu=get["corrected_mu"],
    corrected_nu=get["corrected_nu"],
    complements=complements,
  )
  # u_t read back from 16-bit moments is off by their rounding: half an ulp of m-hat and
  # a quarter of v-hat (under the root). A coordinate is above a bound only past that.
  slack = [
    SLACK + m + v / 2
    for m, v in zip(
      _precision.read_back_error(moments["mu"]),
      _precision.read_back_error(moments["nu"] if nu_max is None else nu_max["nu_max"]),
      strict=True,
    )
  ]
  size = max(sum(s.size for s in snr), 1)

  def total(values: list[chex.Array]) -> chex.Array:
    return sum((jnp.sum(x, dtype=jnp.float32) for x in values), jnp.zeros([], jnp.float32))

  def share_above(bound: chex.Array) -> chex.Array:
    return total([s > bound * (1 + e) for s, e in zip(snr, slack, strict=True)]) / size

  snr_max = functools.reduce(jnp.maximum, [jnp.max(s, initial=0.0) for s in snr], jnp.zeros([]))
  snr_mean = total(snr) / size
  root_squared = [jnp.where(infinity, v * v, v) for v in nu_hat]
  readings = {
    "step_max": alpha * snr_max,
    "step_mean": alpha * snr_mean,
    "bound_paper": alpha * paper,
    "bound_strict": alpha * strict,
    "above_paper": share_above(paper),
    "above_strict": share_above(strict),
    "snr_max": snr_max,
    "snr_mean": snr_mean,
    "bias_correction_mu": correction_mu,
    "bias_correction_nu": correction_nu,
    "mu_norm": jnp.sqrt(total([jnp.abs(m) ** 2 for m in mu_hat])),
    "nu_norm": jnp.sqrt(total(root_squared)),
    "alpha": alpha,
  }
  # Before the first step there is no step to describe: every reading is 0.
  return {name: jnp.where(started, readings[name], 0.0).astype(jnp.float32) for name in READINGS}


def diagnostics(opt_state: optax.OptState) -> dict[str, chex.Array]:
  r"""Adam's last step, computed from the optimizer state: a flat dict of scalars.

  From the stored :math:`m_t`, :math:`v_t` (or AMSGrad's maximum), :math:`t`
  and the scalars :func:`diagnose` kept, it recomputes the direction
  :math:`u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)` and
  returns, as float32 scalars:

  * ``step_max``, ``step_mean``: :math:`\max_i |\Delta_{t,i}|` and the mean, with
    :math:`\Delta_t = -\alpha_t u_t` (excluding decoupled weight decay);
  * ``bound_paper``: the paper's approximate bound
    :math:`\alpha_t (1-\beta_1)/\sqrt{1-\beta_2}` (or :math:`\alpha_t`);
  * ``bound_strict``: the bound Cauchy–Schwarz proves for every gradient stream,

    .. math::

      |\Delta_t| \le \alpha_t \frac{(1 - \beta_1) \sqrt{1 - \beta_2^t}}
      {(1 - \beta_1^t) \sqrt{1 - \beta_2}} \sqrt{\frac{1 - \gamma^t}{1 - \gamma}},
      \qquad \gamma = \beta_1^2 / \beta_2

    (``adam_optax._bounds`` derives it, and AdaMax's);
  * ``above_paper``, ``above_strict``: the fraction of coordinates above each
    (by more than a relative 1e-5, plus the rounding of 16-bit storage);
  * ``snr_max``, ``snr_mean``: the signal-to-noise ratio :math:`|u_t|`;
  * ``bias_correction_mu``, ``bias_correction_nu``: :math:`1-\beta_1^t`,
    :math:`1-\beta_2^t` (1 when not corrected);
  * ``mu_norm``, ``nu_norm``: :math:`\|\hat m_t\|_2` and
    :math:`\|\sqrt{\hat v_t}\|_2`; ``alpha``: :math:`\alpha_t`.

  With float32 moments the readings are the step's own numbers to the bit.
  With 16-bit storage they are computed from the rounded stored moments,
  while the step used them unrounded: each moment is within half an ulp of
  its storage dtype (:math:`2^{-9}` relative in bfloat16, :math:`2^{-12}` in
  float16), so :math:`u_t` is within about 1.5 times that. NAdam's step also
  adds :math:`(1-\beta_1) g_t / (1-\beta_1^t)`, and :math:`g_t` is not in the
  state: for NAdam the readings describe :math:`\hat m_t / \sqrt{\hat v_t}`,
  Adam's step from the same moments. The gradient's norm is not in the
  state either: compute ``optax.global_norm(grads)`` in the training step.

  The states are found by field name, as :func:`optax.tree_utils.tree_get`
  finds them: inside :func:`optax.chain`, :func:`optax.inject_hyperparams`,
  :class:`optax.MultiSteps`, :func:`optax.multi_transform`, in
  ``nnx.state(optimizer)`` and in a checkpoint restored without a target. It
  is jittable (call it inside a ``lax.scan`` body to collect every step);
  for a batched state use ``jax.vmap(ao.diagnostics)``. When the state holds
  several diagnosed chains, each key is prefixed with the chain's path and
  ``/``. Before the first step every value is 0.

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> tx = ao.adam(1e-3, diagnostics=True)
    >>> _, state = tx.update(jnp.ones(3), tx.init(jnp.zeros(3)))
    >>> round(float(ao.diagnostics(state)["bound_paper"]), 6)  # 1e-3 * 0.1 / sqrt(1e-3)
    0.003162

  Args:
    opt_state: an optimizer state (any pytree) of a chain built with
      ``diagnostics=True`` or holding :func:`diagnose`.

  Returns:
    A dict from name to float32 scalar array.

  Raises:
    ValueError: when ``opt_state`` holds no diagnosed chain.

  References:
    Kingma & Ba, 2015, section 2.1 (the bound, the signal-to-noise ratio and
    annealing) and Algorithm 1 lines 9-11.
  """
  found = []
  for path, parent in _fields.nodes(opt_state):
    recorded = _fields.sibling(parent, DiagnosticsState._fields)
    if recorded is None:
      continue
    moments = _fields.sibling(parent, MomentsState._fields)
    if moments is None:
      raise ValueError(
        f"ao.diagnostics found a DiagnosticsState at {path or '<root>'} but no moments state "
        "(count, mu, nu) beside it: put ao.diagnose in the same chain as ao.scale_by_moments."
      )
    found.append((path, _read(recorded, moments, _fields.sibling(parent, ("nu_max",)))))
  if not found:
    raise ValueError(
      "ao.diagnostics found no diagnosed chain in the optimizer state: build the "
      "optimizer with diagnostics=True (e.g. ao.adam(1e-3, diagnostics=True)) or put "
      "ao.diagnose(learning_rate) before ao.normalize() in the chain."
    )
  if len(found) == 1:
    return found[0][1]
  return {f"{path}/{name}": value for path, readings in found for name, value in readings.items()}
