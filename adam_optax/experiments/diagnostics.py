r"""``adam-optax compare --diagnostics``: Adam's step watched while it trains.

The flags (:func:`add_arguments`, :func:`flag_error`) and what they do. With
``--diagnostics``, every optimizer that can record diagnostics (the Adam
family, :attr:`Optimizer.records_diagnostics`) is built by :func:`instrument`:
with ``diagnostics=True`` and followed by ``ao.average_params``, whose decay
:math:`\beta` is one more injected hyper-parameter (``average_beta``, so it
lands in every record). Each step records the curves of :data:`CURVES`, read
from the optimizer state with ``ao.diagnostics`` (:data:`METRICS`); after the
last step the test set is evaluated at the last iterate and at
``ao.averaged_params`` (:data:`EVALUATIONS`, the records'
``averaged_test_loss`` and ``averaged_test_accuracy``). :func:`markdown`
writes the ``results.md`` section and
:func:`~adam_optax.experiments.plots.diagnostics_figure` draws the curves.
Other optimizers run as without the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
from collections.abc import Mapping, Sequence

import chex
import numpy as np
import optax

import adam_optax as ao
from adam_optax.experiments import flags
from adam_optax.experiments.optimizers import OPTIMIZERS, Factory, Optimizer
from adam_optax.experiments.problems import PROBLEMS
from adam_optax.experiments.report import Summary, mean_std, table
from adam_optax.experiments.train import DEFAULT_METRICS, MetricFn, StepInfo

# Section 7.2 of the paper averages with beta = beta2 = 0.999, a memory of
# about 1,000 steps; runs here are a few hundred steps long, so the average
# remembers about the last 100 instead (1 / (1 - beta)).
DEFAULT_AVERAGE_BETA = 0.99
# The numbers of ao.diagnostics recorded at every step.
CURVES = (
  "snr_mean",
  "snr_max",
  "step_max",
  "step_mean",
  "bound_paper",
  "bound_strict",
  "above_paper",
  "above_strict",
  "alpha",
)
# The share of the steps at the start and at the end whose mean SNR is reported.
EDGE_SHARE = 0.1
# The bias-correction study's figure shows the paper's default decay rates
# (its table shows every b1, b2).
FIGURE_BETAS = {"b1": 0.9, "b2": 0.999}


def _recorded(name: str, info: StepInfo) -> chex.Array:
  return ao.diagnostics(info.opt_state)[name]


def _averaged(params: chex.ArrayTree, opt_state: optax.OptState) -> chex.ArrayTree:
  del params
  return ao.averaged_params(opt_state)


METRICS: Mapping[str, MetricFn] = {
  **DEFAULT_METRICS,
  **{name: functools.partial(_recorded, name) for name in CURVES},
}
EVALUATIONS = {"averaged": _averaged}


@dataclasses.dataclass(frozen=True)
class Diagnosed:
  """An Adam-family factory with diagnostics on, followed by ``ao.average_params``.

  Called with the factory's keyword hyper-parameters and ``average_beta``; its
  signature says so, because :func:`optax.inject_hyperparams` binds the
  hyper-parameters to the factory's signature. A frozen dataclass, so that
  equal wrappers are equal static arguments of ``jax.jit`` (one compiled
  program per problem and optimizer, as without).

  Attributes:
    factory: the optimizer factory; it takes ``diagnostics=True``.
  """

  factory: Factory

  def __post_init__(self) -> None:
    signature = inspect.signature(self.factory)
    parameters = [p for p in signature.parameters.values() if p.name != "diagnostics"]
    parameters.append(inspect.Parameter("average_beta", inspect.Parameter.KEYWORD_ONLY))
    object.__setattr__(self, "__signature__", signature.replace(parameters=parameters))

  def __call__(
    self, *, average_beta: chex.Numeric, **hyperparams: chex.Numeric
  ) -> optax.GradientTransformation:
    """``chain(factory(**hyperparams, diagnostics=True), ao.average_params(beta=...))``."""
    return optax.chain(
      self.factory(**hyperparams, diagnostics=True), ao.average_params(beta=average_beta)
    )


def instrument(optimizer: Optimizer) -> Optimizer:
  """``optimizer`` with diagnostics and averaging: its factory wrapped in :class:`Diagnosed`.

  Examples:
    >>> from adam_optax.experiments import optimizers
    >>> factory = instrument(optimizers.OPTIMIZERS["adam"]).factory
    >>> tx = factory(learning_rate=1e-3, average_beta=0.99)
    >>> len(tx.init({"w": np.zeros(2)}))  # ao.adam's state, then the average's
    2

  Args:
    optimizer: an optimizer whose ``records_diagnostics`` is true.

  Returns:
    The same optimizer, but for its factory, which also takes ``average_beta``.

  References:
    Kingma & Ba, 2015, section 2.1 (the step and its bound) and section 7.2
    (temporal averaging).
  """
  return dataclasses.replace(optimizer, factory=Diagnosed(optimizer.factory))


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Declares ``--diagnostics`` and ``--average-beta`` of ``adam-optax compare``."""
  family = ",".join(name for name, opt in OPTIMIZERS.items() if opt.records_diagnostics)
  parser.add_argument(
    "--diagnostics",
    action="store_true",
    help=(
      f"the Adam family ({family}, and the vae study) also records the signal-to-noise ratio "
      "and the step size against its bounds at every step, and is evaluated with averaged "
      "parameters too; writes <problem>_diagnostics.png and two more tables"
    ),
  )
  parser.add_argument(
    "--average-beta",
    type=flags.decay_rate,
    default=None,
    metavar="BETA",
    help=f"with --diagnostics: the decay of the params' average (default: {DEFAULT_AVERAGE_BETA})",
  )


def average_beta(args: argparse.Namespace) -> float:
  """The decay of the parameters' average that the flags ask for."""
  return DEFAULT_AVERAGE_BETA if args.average_beta is None else args.average_beta


def flag_error(args: argparse.Namespace, watched_problems: set[str]) -> str | None:
  """What is wrong with the flags, or ``None``.

  Args:
    args: the parsed flags of ``adam-optax compare``.
    watched_problems: the problems with a program that records diagnostics.

  Returns:
    ``--average-beta`` without ``--diagnostics``, or ``--diagnostics`` with a
    problem none of whose optimizers records diagnostics, as a one-line error.
  """
  if not args.diagnostics:
    return None if args.average_beta is None else "--average-beta needs --diagnostics"
  unwatched = [name for name in args.problems if name not in watched_problems]
  if not unwatched:
    return None
  family = [name for name, opt in OPTIMIZERS.items() if opt.records_diagnostics]
  return (
    f"--diagnostics: no optimizer chosen for {', '.join(unwatched)} records diagnostics; "
    f"add one of {','.join(family)} to --optimizers"
  )


def watched(summaries: Sequence[Summary]) -> list[Summary]:
  """The summaries whose runs recorded diagnostics (their records' ``diagnostics`` field)."""
  return [s for s in summaries if s.runs[0].get("diagnostics", False)]


def figure_settings(summaries: Sequence[Summary]) -> list[Summary]:
  """The settings drawn: all, but only those at :data:`FIGURE_BETAS` where b1, b2 vary."""
  return [s for s in summaries if all(s.record.get(k, v) == v for k, v in FIGURE_BETAS.items())]


def _setting(summary: Summary) -> str:
  record = summary.record
  study = PROBLEMS[record["problem"]].study == "bias_correction"
  betas = f" (β1 {record['b1']:g}, β2 {record['b2']:g})" if study else ""
  return f"{record['optimizer']}{betas}"


def _edges(summary: Summary) -> tuple[float, float]:
  """The mean SNR over the first and over the last :data:`EDGE_SHARE` of the steps."""
  snr = summary.curves("snr_mean")
  edge = max(1, round(EDGE_SHARE * snr.shape[1]))
  return float(np.mean(snr[:, :edge])), float(np.mean(snr[:, -edge:]))


def _averaging_row(summary: Summary) -> list[str]:
  classifier = summary.runs[0]["test_accuracy"] is not None
  cells = []
  for name in ("test_accuracy", "averaged_test_accuracy"):
    cells.append(mean_std(summary.values(name), scale=100) if classifier else "–")
  cells += [mean_std(summary.values(name)) for name in ("test_loss", "averaged_test_loss")]
  return cells


def _step_row(summary: Summary) -> list[str]:
  alpha = summary.curves("alpha")
  first, last = _edges(summary)
  step = np.nanmax(summary.curves("step_max") / alpha, axis=1).mean()
  paper = np.nanmean(summary.curves("bound_paper") / alpha)
  strict = np.nanmean(summary.curves("bound_strict")[:, -1] / alpha[:, -1])
  above = [
    np.nanmax(summary.curves(name), axis=1).mean() for name in ("above_paper", "above_strict")
  ]
  cells = [f"{first:.3g}", f"{last:.3g}", f"{step:.3g}", f"{paper:.3g}", f"{strict:.3g}"]
  return cells + [f"{100 * share:.3g}" for share in above]


def markdown(summaries: Sequence[Summary]) -> str:
  """The ``results.md`` section on diagnostics and averaging; ``""`` without diagnostics.

  Args:
    summaries: every setting at its best learning rate; those without
      diagnostics are left out.

  Returns:
    Two tables over the watched settings: the test accuracy and loss with and
    without averaging, and the signal-to-noise ratio and step size against
    the bounds.
  """
  rows = watched(summaries)
  if not rows:
    return ""
  beta = rows[0].runs[0]["average_beta"]
  first = [[s.record["problem"], _setting(s), f"{s.record['learning_rate']:g}"] for s in rows]
  share = f"{EDGE_SHARE:.0%}"
  lines = [
    "## Accuracy with and without averaging (`--diagnostics`)",
    "",
    "The Adam-family optimizers above, at the same best learning rates; mean ± standard",
    "deviation over seeds. Averaged: the test set evaluated at the exponential moving average",
    f"of the iterates with β = {beta:g}, bias-corrected (`ao.average_params`, the paper's",
    "section 7.2), instead of the last iterate. The VAE has no accuracy: compare its test loss",
    "(negative ELBO, nats; lower is better).",
    "",
  ]
  header = ["problem", "optimizer", "best lr", "test accuracy (%)", "averaged"]
  header += ["test loss", "averaged"]
  lines += table(header, [cells + _averaging_row(s) for cells, s in zip(first, rows, strict=True)])
  lines += [
    "",
    "## Step size and signal-to-noise ratio (`--diagnostics`)",
    "",
    "Means over seeds of the window means of the curves in `results.json`. SNR: the mean over",
    "coordinates of |m̂| / (√v̂ + ε), over the first and the last",
    f"{share} of the steps. Max step: the largest |Δ| of a coordinate in one step (window",
    "mean), over the whole run; it is α times the largest SNR. Bounds: the paper's approximate",
    "bound and the strict bound at the last step, all in units of α. Above: the largest share",
    "of coordinates (%) whose step exceeds each bound in one step (window mean).",
    "",
  ]
  header = ["problem", "optimizer", "best lr", f"SNR, first {share}", f"SNR, last {share}"]
  header += ["max step / α", "paper bound / α", "strict bound / α", "above paper (%)"]
  header += ["above strict (%)"]
  lines += table(header, [cells + _step_row(s) for cells, s in zip(first, rows, strict=True)])
  return "\n".join(lines) + "\n"
