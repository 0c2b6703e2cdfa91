r"""Diagnostics: what Adam's step does, computed from the state when read.

Almost everything worth watching in Adam's step is a function of what the
state already holds: the moments :math:`m_t`, :math:`v_t` and the count
:math:`t`, plus the hyper-parameters. So nothing param-sized is recorded:
with ``diagnostics=True`` the two pieces that use the remaining numbers
record them, as the step used them, in one small array each:
:func:`~adam_optax.normalize` its :math:`\epsilon`, :math:`\epsilon_{root}`,
the decay rates and how the moments were bias-corrected
(:class:`~adam_optax.NormalizeState`), and :func:`~adam_optax.scale_by_lr`
the step size :math:`\alpha_t` (:class:`~adam_optax.ScaleByLrState`).
:func:`diagnostics` recomputes :math:`\hat m_t`, :math:`\hat v_t` and the
direction :math:`u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`
from the stored moments when it is called: one pass over the moments per
read, none per step. Nothing is declared twice, so the readings cannot
describe another step than the one taken.
"""

from __future__ import annotations

import functools
import itertools

import chex
import jax.numpy as jnp
import optax

from adam_optax import _bounds, _fields, _precision
from adam_optax.moments import MomentsState
from adam_optax.normalize import RECORDED, NormalizeState

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


def _read(
  normalized_with: chex.Array,
  alpha: chex.Array,
  moments: _fields.Children,
  nu_max: _fields.Children | None,
) -> dict[str, chex.Array]:
  """The readings of one Adam chain: its records, its moments and any running maximum."""
  get = {name: normalized_with[..., index] for index, name in enumerate(RECORDED)}
  b1, b2, eps, eps_root = (get[k] for k in ("b1", "b2", "eps", "eps_root"))
  corrected_mu, corrected_nu, infinity = (
    get[k] != 0 for k in ("corrected_mu", "corrected_nu", "infinity_norm")
  )
  complements = (get["one_minus_b1"], get["one_minus_b2"])
  count = _fields.scalar(moments["count"])
  # 1 - b2 > 0 for every b2 the moments accept: a record still all zeros was never written.
  started = (count > 0) & (get["one_minus_b2"] > 0)
  # The same expressions as optax.tree.bias_correction, so float32 readings are the step's.
  correction_mu = jnp.where(corrected_mu & started, 1 - b1**count, 1.0)
  correction_nu = jnp.where(corrected_nu & started, 1 - b2**count, 1.0)
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
    corrected_mu=corrected_mu,
    corrected_nu=corrected_nu,
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
  # Before the first step that wrote the record there is no step to describe: every reading is 0.
  return {name: jnp.where(started, readings[name], 0.0).astype(jnp.float32) for name in READINGS}


def diagnostics(opt_state: optax.OptState) -> dict[str, chex.Array]:
  r"""Adam's last step, computed from the optimizer state: a flat dict of scalars.

  From the stored :math:`m_t`, :math:`v_t` (or AMSGrad's maximum), :math:`t`
  and what :func:`normalize` and :func:`scale_by_lr` recorded of the last step
  (:class:`NormalizeState`, :class:`ScaleByLrState`), it recomputes the direction
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
  for a batched state use ``jax.vmap(ao.diagnostics)``. Before the first step
  every value is 0.

  The keys say which parameters a reading describes, whatever else the state
  holds: a chain that updates every parameter gives the names above
  (``step_max``); a chain inside :func:`optax.multi_transform` (or
  :func:`optax.partition`) gives them after its label and ``/``
  (``"embeddings/step_max"``; labels of nested partitions joined by ``/``),
  whether or not the other labels' chains are diagnosed too. Two diagnosed
  chains that would give the same keys (two optimizer states side by side in
  one tree) are refused: read each part of the tree on its own.

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> tx = ao.adam(1e-3, diagnostics=True)
    >>> _, state = tx.update(jnp.ones(3), tx.init(jnp.zeros(3)))
    >>> round(float(ao.diagnostics(state)["bound_paper"]), 6)  # 1e-3 * 0.1 / sqrt(1e-3)
    0.003162

  Args:
    opt_state: an optimizer state (any pytree) holding a chain built with
      ``diagnostics=True``.

  Returns:
    A dict from name to float32 scalar array.

  Raises:
    ValueError: when ``opt_state`` holds no diagnosed chain, a diagnosed
      chain without its moments or its step size, or two chains with the same
      keys.

  References:
    Kingma & Ba, 2015, section 2.1 (the bound, the signal-to-noise ratio and
    annealing) and Algorithm 1 lines 9-11.
  """
  found: dict[str, tuple[str, dict[str, chex.Array]]] = {}
  for path, parent in _fields.nodes(opt_state):
    direction = _fields.sibling(parent, NormalizeState._fields)
    if direction is None:
      continue
    where = _fields.path_name(path) or "<root>"
    moments = _fields.sibling(parent, MomentsState._fields)
    # By its alpha alone: an empty inner_state is left out of nnx.state and of checkpoints.
    step_size = _fields.sibling(parent, ("alpha",))
    if moments is None or step_size is None:
      missing = "moments state (count, mu, nu)" if moments is None else "recorded step size"
      raise ValueError(
        f"ao.diagnostics found the record of ao.normalize(..., diagnostics=True) at {where} "
        f"but no {missing} beside it: build ao.scale_by_moments, ao.normalize and "
        "ao.scale_by_lr(..., diagnostics=True) in one optax.chain."
      )
    prefix = "".join(f"{label}/" for label in _labels(path))
    if prefix in found:
      raise ValueError(
        f"ao.diagnostics found two diagnosed chains, at {found[prefix][0]} and {where}, "
        f"whose readings would share the keys {prefix}step_max, ...: call ao.diagnostics on "
        "each of those parts of the state on its own."
      )
    readings = _read(
      _fields.scalar(direction["normalized_with"]),
      _fields.scalar(step_size["alpha"]),
      moments,
      _fields.sibling(parent, ("nu_max",)),
    )
    found[prefix] = (where, {prefix + name: value for name, value in readings.items()})
  if not found:
    raise ValueError(
      "ao.diagnostics found no diagnosed chain in the optimizer state: build the "
      "optimizer with diagnostics=True (e.g. ao.adam(1e-3, diagnostics=True)), or a chain "
      "with ao.normalize(..., diagnostics=True) and ao.scale_by_lr(..., diagnostics=True)."
    )
  return {key: value for _, readings in found.values() for key, value in readings.items()}


def _labels(path: _fields.Path) -> tuple[str, ...]:
  """The partition labels on ``path``: the names right below an ``inner_states``.

  ``inner_states`` is the field of :func:`optax.partition`'s (and
  :func:`optax.multi_transform`'s) state that maps each label to its chain's state,
  in every form of the state (NamedTuple, dict, ``nnx.state``).
  """
  return tuple(str(name) for above, name in itertools.pairwise(path) if above == "inner_states")
