r"""Diagnostics: what Adam's step does, recorded in the optimizer state.

:func:`diagnose` wraps the piece that turns :class:`Moments` into the
direction of the step (:func:`normalize`), so it sees both ends: the
bias-corrected moments :math:`\hat m_t`, :math:`\hat v_t` with :math:`t`,
:math:`\beta_1`, :math:`\beta_2` on the way in, and the direction
:math:`u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)` on the
way out; the step is :math:`\Delta_t = -\alpha_t u_t`. A piece at the end of
a chain could not see :math:`\beta_1`, :math:`\beta_2` and :math:`t` (each
piece of :func:`optax.chain` sees only its own state and its input), so one
wrapper records both ends. :func:`diagnostics` reads the numbers back.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from adam_optax import _bounds, _precision
from adam_optax._pieces import require_moments
from adam_optax._search import find_states
from adam_optax.moments import Moments

# A coordinate is "above" a bound only when it exceeds it by more than this
# relative slack: the step and the bound are float32 results of a few dozen
# roundings (the moving averages, the bias correction, the root), each within
# about one ulp (1.2e-7), so an exact tie can land up to a few ulp on either
# side. 1e-5 is about 80 ulp: ties count as within, real excesses do not hide.
SLACK = 1e-5

# The longest run of one float32 sum (see _leaf_max_and_sums): its rounding
# error stays near 1e-7 relative where one run over 16.8M elements is 2% off.
ROW = 8192


class DiagnosticsState(NamedTuple):
  r"""State of :func:`diagnose`: the numbers of the last step, float32 scalars.

  Attributes:
    step_max: :math:`\max_i |\Delta_{t,i}|` over all coordinates of all leaves.
    step_mean: the mean of :math:`|\Delta_{t,i}|`.
    bound_paper: the paper's approximate bound :math:`\alpha_t (1-\beta_1) /
      \sqrt{1-\beta_2}` if :math:`1-\beta_1 > \sqrt{1-\beta_2}`, else
      :math:`\alpha_t` (AdaMax: :math:`\alpha_t`).
    bound_strict: the bound that holds for every gradient stream (see
      :func:`diagnose`).
    above_paper: the fraction of coordinates whose step exceeds
      ``bound_paper`` (by more than the relative ``SLACK``, 1e-5).
    above_strict: the same for ``bound_strict``; 0 unless the chain is not
      Algorithm 1 (e.g. moments not bias-corrected but declared so).
    snr_max: :math:`\max_i |u_{t,i}|`, the largest signal-to-noise ratio
      :math:`|\hat m_t| / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`.
    snr_mean: its mean over all coordinates.
    bias_correction_mu: :math:`1 - \beta_1^t` (1 when not corrected).
    bias_correction_nu: :math:`1 - \beta_2^t` (1 when not corrected, AdaMax).
    grad_norm: :math:`\|g_t\|_2` over the whole tree.
    mu_norm: :math:`\|\hat m_t\|_2`.
    nu_norm: :math:`\|\sqrt{\hat v_t}\|_2 = (\sum_i \hat v_{t,i})^{1/2}`
      (AdaMax: :math:`\|u_t\|_2`).
    alpha: the step size :math:`\alpha_t` (a schedule's current value).
    direction: :math:`u_t` of the last step, per coordinate (param-shaped;
      :math:`\Delta_t = -\alpha_t u_t`), to see which coordinates sit at a
      bound. Kept in the state so that with the state donated the step writes
      :math:`u_t` in place, where XLA would otherwise allocate a temporary for
      it every step (both the update and the reductions read it).
    inner_state: the state of the wrapped direction piece.
  """

  step_max: chex.Array
  step_mean: chex.Array
  bound_paper: chex.Array
  bound_strict: chex.Array
  above_paper: chex.Array
  above_strict: chex.Array
  snr_max: chex.Array
  snr_mean: chex.Array
  bias_correction_mu: chex.Array
  bias_correction_nu: chex.Array
  grad_norm: chex.Array
  mu_norm: chex.Array
  nu_norm: chex.Array
  alpha: chex.Array
  direction: chex.ArrayTree
  inner_state: optax.OptState


RECORDED: tuple[str, ...] = DiagnosticsState._fields[:-2]


def _written_into(buffers: chex.ArrayTree, values: chex.ArrayTree) -> chex.ArrayTree:
  """``values``, as the new contents of ``buffers`` (same shapes; cast to their dtypes).

  A whole-array ``dynamic_update_slice`` is ``values`` itself, but it reads the
  old buffers, so ``jax.jit`` keeps them as arguments and a donated one holds
  the result in place.
  """

  def leaf(buffer: chex.Array, value: chex.Array) -> chex.Array:
    zeros = (0,) * jnp.ndim(buffer)
    return jax.lax.dynamic_update_slice(buffer, value.astype(buffer.dtype), zeros)

  return jax.tree.map(leaf, buffers, values)


def _frozen(value: Any) -> Any:
  """Cuts gradients through arrays; keeps Python numbers as they are.

  Python floats stay Python floats so that ``1 - b1`` is computed exactly as
  the moments compute it.
  """
  return jax.lax.stop_gradient(value) if isinstance(value, jax.Array) else value


def _alpha(learning_rate: optax.ScalarOrSchedule, count: chex.Array) -> chex.Array:
  """The step size of step ``count``: a schedule sees ``count - 1``, as in ``scale_by_lr``."""
  value = learning_rate(count - 1) if callable(learning_rate) else learning_rate
  return jnp.abs(jnp.asarray(_frozen(value), jnp.float32))


def _size(tree: chex.ArrayTree) -> int:
  return max(sum(jnp.size(x) for x in jax.tree.leaves(tree)), 1)


def _squared(x: chex.Array) -> chex.Array:
  """:math:`|x|^2` in float32, for real and complex ``x``."""
  x = _precision.upcast(x)
  squared = x * x if jnp.isrealobj(x) else jnp.real(x) ** 2 + jnp.imag(x) ** 2
  return squared.astype(jnp.float32)


def _explicitly_sharded(x: chex.Array) -> bool:
  """Whether ``x``'s type names mesh axes (``jax.sharding.AxisType.Explicit``): no reshapes then."""
  spec = getattr(jax.typeof(x).sharding, "spec", None)
  return spec is not None and any(axis is not None for axis in spec)


def _variadic(leaves: tuple[chex.Array, ...], axes: tuple[int, ...]) -> tuple[chex.Array, ...]:
  """The maximum of the first of ``leaves`` and the sums of the others, over ``axes``."""
  zeros = tuple(jnp.zeros([], jnp.float32) for _ in leaves)

  def combine(x: tuple[chex.Array, ...], y: tuple[chex.Array, ...]) -> tuple[chex.Array, ...]:
    return (jnp.maximum(x[0], y[0]), *(a + b for a, b in zip(x[1:], y[1:], strict=True)))

  return jax.lax.reduce(leaves, zeros, combine, axes)


def _leaf_max_and_sums(leaves: tuple[chex.Array, ...]) -> chex.Array:
  """:func:`_max_and_sums` of one leaf, as a vector ``[max, sum, sum, ...]``.

  A float32 sum run in one sequence over millions of elements drifts (2% low
  at 16.8M elements), so a leaf longer than ``ROW`` is reduced row by row and
  the rows' results are then combined: each partial sum runs over at most
  ``ROW`` elements (and XLA:CPU spreads the rows over its threads).
  """
  size = jnp.size(leaves[0])
  rows = size // ROW
  if rows < 2 or _explicitly_sharded(leaves[0]):
    return jnp.stack(_variadic(leaves, tuple(range(jnp.ndim(leaves[0])))))
  flat = tuple(jnp.ravel(x) for x in leaves)
  head = _variadic(tuple(x[: rows * ROW].reshape(rows, ROW) for x in flat), (1,))
  tail = _variadic(tuple(x[rows * ROW :] for x in flat), (0,))
  largest = jnp.maximum(jnp.max(head[0]), tail[0])
  return jnp.stack([largest, *(jnp.sum(h) + t for h, t in zip(head[1:], tail[1:], strict=True))])


def _max_and_sums(largest: chex.ArrayTree, *summands: chex.ArrayTree) -> tuple[chex.Array, ...]:
  """The maximum of ``largest`` and the sum of each of ``summands``, over all leaves.

  One variadic reduction per leaf (per row of a long leaf) reads its inputs
  once, where a reduction per number would read them once each.
  """
  per_leaf = [
    _leaf_max_and_sums(leaves)
    for leaves in zip(*(jax.tree.leaves(t) for t in (largest, *summands)), strict=True)
  ]
  if not per_leaf:
    return tuple(jnp.zeros([], jnp.float32) for _ in range(1 + len(summands)))
  table = jnp.stack(per_leaf)
  return (jnp.max(table[:, 0]), *jnp.sum(table[:, 1:], axis=0))


def _record(
  moments: Moments, direction: optax.Updates, alpha: chex.Array, **declared: bool
) -> dict[str, chex.Array]:
  """The recorded numbers of one step (see :class:`DiagnosticsState`)."""
  mu_hat, nu_hat, grad, direction = jax.lax.stop_gradient(
    (moments.mu, moments.nu, moments.grad, direction)
  )
  b1, b2, count, order = _frozen(moments.b1), _frozen(moments.b2), moments.count, moments.order
  snr = jax.tree.map(lambda u: jnp.abs(_precision.upcast(u)).astype(jnp.float32), direction)
  size = _size(snr)
  paper = _bounds.paper_bound(b1, b2, order=order)
  strict = _bounds.strict_bound(b1, b2, count, order=order, **declared)

  def above(bound: chex.Array) -> chex.ArrayTree:
    return jax.tree.map(lambda s: (s > bound * (1 + SLACK)).astype(jnp.float32), snr)

  # v-hat is the square of the root whose norm is recorded; AdaMax's u_t is the root.
  root_squared = jax.tree.map((lambda v: v.astype(jnp.float32)) if order == 2 else _squared, nu_hat)
  snr_max, snr_sum, paper_count, strict_count, grad_squared, mu_squared, nu_squared = _max_and_sums(
    snr,
    snr,
    above(paper),
    above(strict),
    jax.tree.map(_squared, grad),
    jax.tree.map(_squared, mu_hat),
    root_squared,
  )
  corrected_mu = declared["mu"] or declared["nesterov"]
  corrected_nu = declared["nu"] and order == 2
  return {
    "step_max": alpha * snr_max,
    "step_mean": alpha * snr_sum / size,
    "bound_paper": alpha * paper,
    "bound_strict": alpha * strict,
    "above_paper": paper_count / size,
    "above_strict": strict_count / size,
    "snr_max": snr_max,
    "snr_mean": snr_sum / size,
    "bias_correction_mu": jnp.asarray(1 - b1**count if corrected_mu else 1.0, jnp.float32),
    "bias_correction_nu": jnp.asarray(1 - b2**count if corrected_nu else 1.0, jnp.float32),
    "grad_norm": jnp.sqrt(grad_squared),
    "mu_norm": jnp.sqrt(mu_squared),
    "nu_norm": jnp.sqrt(nu_squared),
    "alpha": alpha,
  }


def diagnose(
  direction: optax.GradientTransformation,
  *,
  learning_rate: optax.ScalarOrSchedule,
  nesterov: bool = False,
  mu: bool = True,
  nu: bool = True,
) -> optax.GradientTransformation:
  r"""Records the step size, its bounds and the signal-to-noise ratio every step.

  Wraps ``direction`` (normally :func:`normalize`), which maps
  :class:`Moments` to :math:`u_t`, passes its output on unchanged, and stores
  in a :class:`DiagnosticsState`, on device, the step
  :math:`|\Delta_t| = \alpha_t |u_t|` (max and mean over all coordinates), the
  signal-to-noise ratio :math:`|u_t| = |\hat m_t| / (\sqrt{\hat v_t +
  \epsilon_{root}} + \epsilon)` (with ``normalize``'s own :math:`\epsilon`), the
  bias-correction factors, the global norms of :math:`g_t`, :math:`\hat m_t`,
  :math:`\sqrt{\hat v_t}`, and two bounds with the fraction of coordinates
  above each: the paper's approximate one and the strict one

  .. math::

    |\Delta_t| \le \alpha_t \frac{(1 - \beta_1) \sqrt{1 - \beta_2^t}}
    {(1 - \beta_1^t) \sqrt{1 - \beta_2}} \sqrt{\frac{1 - \gamma^t}{1 - \gamma}},
    \qquad \gamma = \beta_1^2 / \beta_2,

  which Cauchy–Schwarz proves for every gradient stream (for NAdam's and
  AdaMax's moments the analogous sums; ``adam_optax._bounds`` derives them).
  The sparse stream (zeros, then one gradient) approaches the paper's bound
  and a growing one exceeds it, which ``above_paper`` shows; ``above_strict``
  reads 0. Decoupled weight decay applied after this piece (``ao.adamw``) is
  not part of the recorded step.

  :math:`\beta_1`, :math:`\beta_2` and :math:`t` are read from the
  :class:`Moments`; what the moments do not carry is declared here:
  ``learning_rate`` (the value or schedule given to :func:`scale_by_lr`; a
  schedule is read at :math:`t - 1`, as ``scale_by_lr`` reads it) and how
  :func:`bias_correct` made :math:`\hat m_t`, :math:`\hat v_t` (its arguments).
  The optimizers pass all of it for ``diagnostics=True``. Read the numbers
  with :func:`diagnostics`. Nothing flows back: gradients through the
  recorded numbers are stopped, and the updates are those of ``direction``.

  Cost: the numbers come from one variadic reduction per leaf (the maximum
  and sum of :math:`|u_t|`, the two counts, the three squared norms), which
  reads its inputs once: a second pass over memory next to the memory-bound
  step. :math:`u_t` itself is kept in the state (``direction``, one more
  param-shaped array), so that a donated state takes it in place.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_optax as ao
    >>> from adam_optax.diagnosis import diagnose, diagnostics
    >>> tx = optax.chain(ao.scale_by_moments(), ao.bias_correct(),
    ...                  diagnose(ao.normalize(), learning_rate=0.1),
    ...                  ao.scale_by_lr(0.1))
    >>> _, state = tx.update(jnp.array([3.0, -1.0]), tx.init(jnp.zeros(2)))
    >>> stats = diagnostics(state)
    >>> float(stats["step_max"]), float(stats["above_strict"])  # |Δ_1| = α
    (0.1, 0.0)

  Args:
    direction: the transformation from :class:`Moments` to :math:`u_t`.
    learning_rate: :math:`\alpha`, as given to :func:`scale_by_lr`.
    nesterov: as given to :func:`bias_correct` (NAdam's first moment).
    mu: as given to :func:`bias_correct`: :math:`\hat m_t` is bias-corrected.
    nu: as given to :func:`bias_correct`: :math:`\hat v_t` is bias-corrected.

  Returns:
    An :class:`optax.GradientTransformation` from :class:`Moments` to
    ``direction``'s output; its state is :class:`DiagnosticsState`.

  Raises:
    TypeError: at update, when the input is not :class:`Moments`.

  References:
    Kingma & Ba, 2015, section 2.1 (the bound, the signal-to-noise ratio and
    annealing) and Algorithm 1 lines 9-11.
  """
  declared = {"nesterov": nesterov, "mu": mu, "nu": nu}

  def init_fn(params: optax.Params) -> DiagnosticsState:
    zeros = {name: jnp.zeros([], jnp.float32) for name in RECORDED}
    return DiagnosticsState(
      **zeros,
      direction=jax.tree.map(jnp.zeros_like, params),
      inner_state=direction.init(params),
    )

  def update_fn(
    updates: Moments, state: DiagnosticsState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, DiagnosticsState]:
    moments = require_moments("ao.diagnose", updates)
    out, inner_state = direction.update(moments, state.inner_state, params)
    kept = _written_into(state.direction, jax.lax.stop_gradient(out))
    # Read back what was kept, unless keeping it rounded (mixed precision).
    read = jax.tree.map(lambda k, o: k if k.dtype == o.dtype else o, kept, out)
    alpha = _alpha(learning_rate, moments.count)
    return out, DiagnosticsState(
      **_record(moments, read, alpha, **declared), direction=kept, inner_state=inner_state
    )

  return optax.GradientTransformation(init_fn, update_fn)


def diagnostics(opt_state: optax.OptState) -> dict[str, chex.Array]:
  """The recorded numbers of the last step, as a flat dict of scalars.

  Finds every :class:`DiagnosticsState` in ``opt_state``, wherever
  :func:`optax.chain`, :func:`optax.inject_hyperparams`,
  :class:`optax.MultiSteps` or ``nnx.Optimizer`` put it. Keys are the field
  names of :class:`DiagnosticsState` (``"step_max"``, ``"snr_mean"``, ...);
  when the state holds several, each key is prefixed with the state's path
  and ``/``. Works under ``jax.jit`` (call it inside a ``lax.scan`` body to
  collect every step) and on batched states from ``jax.vmap`` (each value then
  has the batch shape). Before the first step every value is 0.

  Examples:
    >>> import jax.numpy as jnp, adam_optax as ao
    >>> from adam_optax.diagnosis import diagnostics
    >>> tx = ao.adam(1e-3, diagnostics=True)
    >>> _, state = tx.update(jnp.ones(3), tx.init(jnp.zeros(3)))
    >>> round(float(diagnostics(state)["bound_paper"]), 6)  # 1e-3 * 0.1 / sqrt(1e-3)
    0.003162

  Args:
    opt_state: an optimizer state (any pytree) holding :class:`DiagnosticsState`.

  Returns:
    A dict from name to float32 scalar array.

  Raises:
    ValueError: when ``opt_state`` holds no :class:`DiagnosticsState`.

  References:
    Kingma & Ba, 2015, section 2.1.
  """
  found = find_states(opt_state, DiagnosticsState)
  if not found:
    raise ValueError(
      "ao.diagnostics found no DiagnosticsState in the optimizer state: build "
      "the optimizer with diagnostics=True (e.g. ao.adam(1e-3, diagnostics=True)) "
      "or put ao.diagnose(ao.normalize(), learning_rate=...) in the chain."
    )
  prefixed = len(found) > 1
  return {
    (f"{path}/{name}" if prefixed else name): jnp.asarray(getattr(state, name))
    for path, state in found
    for name in RECORDED
  }
