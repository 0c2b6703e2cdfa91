"""The paper's claims of section 6, each judged from this run's numbers.

A :class:`Claim` is a list of :class:`Requirement` s, each an ordering of two
settings on one statistic, at each setting's best learning rate for that
statistic: for "converges faster" (figures 1-3) the mean training loss over
all steps (the area under the paper's curves); for figure 4 the
whole-training-set loss after the first tenth of the steps and after the
last, as the paper's figure shows it after 10 and 100 epochs. Over seeds, a
setting's statistic has a mean and a spread (minimum to maximum); ``a`` is
*better* than ``b`` when all of ``a``'s seeds beat all of ``b``'s (the spreads do not
overlap), *worse* in the opposite case, and otherwise the two *overlap*.

A requirement ``better`` is met by *better*, contradicted by *worse*, and left
open by an overlap; a requirement ``not worse`` is contradicted only by
*worse*. A claim **holds** when every requirement is met, **does not hold**
when one is contradicted, and is **inconclusive** otherwise (the spreads
overlap where the claim needs a difference).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from adam_optax.experiments import report
from adam_optax.experiments.problems import PROBLEMS
from adam_optax.experiments.report import Record, Summary

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
FINAL = "final_train_loss"
EARLY = "first_checkpoint_train_loss"
MEAN = "mean_train_loss"
STATISTICS = {
  FINAL: "final training loss",
  EARLY: "training loss after the first tenth of the steps",
  MEAN: "mean training loss over all steps",
}
# A setting: an optimizer's name, or (variant, b1, b2) in the bias-correction study.
Key = str | tuple[str, float, float]


@dataclasses.dataclass(frozen=True)
class Requirement:
  """``a`` must be ``kind`` than ``b`` on ``statistic`` (lower is better)."""

  a: Key
  b: Key
  kind: Literal["better", "not worse"]
  statistic: str = MEAN


@dataclasses.dataclass(frozen=True)
class Claim:
  """One claim of the paper's section 6, about one problem."""

  figure: str
  problem: str
  text: str
  requirements: tuple[Requirement, ...]


def _beats_each(a: Key, others: Sequence[Key]) -> tuple[Requirement, ...]:
  return tuple(Requirement(a, b, "better") for b in others)


def _bias_correction() -> tuple[Requirement, ...]:
  early = tuple(
    Requirement(("adam", b1, 0.9999), ("adam_no_bias_correction", b1, 0.9999), "better", EARLY)
    for b1 in (0.0, 0.9)
  )
  rest = tuple(
    Requirement(("adam", b1, b2), ("adam_no_bias_correction", b1, b2), "not worse", FINAL)
    for b1 in (0.0, 0.9)
    for b2 in (0.99, 0.999, 0.9999)
  )
  return early + rest


CLAIMS = (
  Claim(
    "1 (left)",
    "logreg",
    "logistic regression: Adam converges as fast as SGD with Nesterov momentum, and faster "
    "than AdaGrad",
    (Requirement("adam", "adagrad", "better"), Requirement("adam", "sgd_nesterov", "not worse")),
  ),
  Claim(
    "1 (right)",
    "bow",
    "sparse bag-of-words features: Adam converges as fast as AdaGrad, and both beat SGD with "
    "Nesterov momentum",
    (
      Requirement("adam", "sgd_nesterov", "better"),
      Requirement("adagrad", "sgd_nesterov", "better"),
      Requirement("adam", "adagrad", "not worse"),
    ),
  ),
  Claim(
    "2",
    "mlp",
    "MLP with dropout: Adam converges faster than every other method",
    _beats_each("adam", ("sgd_nesterov", "adagrad", "rmsprop", "adadelta")),
  ),
  Claim(
    "3",
    "cnn",
    "ConvNet: Adam and SGD with Nesterov momentum converge faster than AdaGrad, Adam at least "
    "as fast as SGD",
    (
      Requirement("adam", "adagrad", "better"),
      Requirement("sgd_nesterov", "adagrad", "better"),
      Requirement("adam", "sgd_nesterov", "not worse"),
    ),
  ),
  Claim(
    "4",
    "vae",
    "VAE: without bias correction, β2 = 0.9999 trains worse early on; with it, Adam is never worse",
    _bias_correction(),
  ),
)


def _key(record: Record) -> Key:
  if PROBLEMS[record["problem"]].study == "bias_correction":
    return (record["optimizer"], record["b1"], record["b2"])
  return record["optimizer"]


def _name(key: Key) -> str:
  if isinstance(key, str):
    return key
  variant, b1, b2 = key
  return f"{variant} (β1 {b1:g}, β2 {b2:g})"


def _spread(summary: Summary, statistic: str) -> np.ndarray:
  """The statistic over seeds; a diverged run is infinitely bad."""
  return np.array([report.value(run, statistic) for run in summary.runs])


def relation(a: np.ndarray, b: np.ndarray) -> str:
  """``"better"`` if every ``a`` is below every ``b``, ``"worse"`` if above, else ``"overlap"``.

  Examples:
    >>> relation(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    'better'
    >>> relation(np.array([1.0, 3.5]), np.array([3.0, 4.0]))
    'overlap'
  """
  if a.max() < b.min():
    return "better"
  if a.min() > b.max():
    return "worse"
  return "overlap"


def _describe(values: np.ndarray) -> str:
  finite = values[np.isfinite(values)]
  if len(finite) < len(values):
    return f"diverged on {len(values) - len(finite)} of {len(values)} seeds"
  return f"{values.mean():.4g} [{values.min():.4g}–{values.max():.4g}]"


def judge(claim: Claim, all_records: Sequence[Record]) -> dict[str, Any] | None:
  """The verdict on ``claim`` from the records of its problem, or ``None`` if it did not run.

  Returns:
    A JSON-ready dict: the figure, problem, claim, the statistic, the
    verdict and, per requirement, both settings' mean, minimum and maximum
    over seeds, their relation and whether a best learning rate sat at the
    edge of its grid.
  """
  own = [r for r in all_records if r["problem"] == claim.problem]
  by_statistic = {
    statistic: {_key(s.record): s for s in report.summarize(own, statistic)}
    for statistic in {req.statistic for req in claim.requirements}
  }
  comparisons = []
  for req in claim.requirements:
    summaries = by_statistic[req.statistic]
    if req.a not in summaries or req.b not in summaries:
      return None
    a, b = (_spread(summaries[key], req.statistic) for key in (req.a, req.b))
    comparisons.append(
      {
        "a": _name(req.a),
        "b": _name(req.b),
        "required": req.kind,
        "relation": relation(a, b),
        "statistic": req.statistic,
        "a_values": [report.number(v) for v in a],
        "b_values": [report.number(v) for v in b],
        "a_summary": _describe(a),
        "b_summary": _describe(b),
        "edge": any(summaries[key].at_edge for key in (req.a, req.b)),
      }
    )
  contradicted = any(c["relation"] == "worse" for c in comparisons)
  open_ = any(c["required"] == "better" and c["relation"] == "overlap" for c in comparisons)
  verdict = FAILS if contradicted else INCONCLUSIVE if open_ else HOLDS
  seeds = len(next(iter(by_statistic.values()))[claim.requirements[0].a].runs)
  return {
    "figure": claim.figure,
    "problem": claim.problem,
    "claim": claim.text,
    "statistic": f"mean [min–max] over {report.plural('seed', seeds)} at each setting's "
    "best learning rate for the statistic",
    "verdict": verdict,
    "comparisons": comparisons,
  }


def verdicts(all_records: Sequence[Record]) -> list[dict[str, Any]]:
  """The verdict on every claim of :data:`CLAIMS` whose problem and settings ran."""
  judged = (judge(claim, all_records) for claim in CLAIMS)
  return [verdict for verdict in judged if verdict is not None]


_SIGN = {"better": "<", "worse": ">", "overlap": "≈"}


def markdown(judged: Sequence[dict[str, Any]]) -> str:
  """The section "What this run shows": one line per claim, with its numbers."""
  lines = [
    "## What this run shows",
    "",
    "One line per claim of the paper's section 6, each judged from this run's numbers: a",
    'training loss (lower is better; for "converges faster" the mean over all steps, the',
    "area under the paper's curves), mean [min–max] over seeds at each setting's best",
    "learning rate for it. A claim **holds** if every ordering it needs is seen on every",
    "seed (the spreads do not overlap), **does not hold** if one is reversed on every seed,",
    "and is **inconclusive** otherwise (the spreads overlap where it needs a difference).",
    "",
  ]
  if not judged:
    lines.append("No claim could be judged: a claim needs its problem and the optimizers it names.")
  for verdict in judged:
    shown = verdict["comparisons"]
    if verdict["problem"] == "vae":  # the decisive rows: the early loss at beta2 = 0.9999
      decisive = [c for c in shown if c["required"] == "better" or c["relation"] == "worse"]
      shown = decisive
    evidence = "; ".join(
      f"{STATISTICS[c['statistic']]}: {c['a']} {c['a_summary']} {_SIGN[c['relation']]} "
      f"{c['b']} {c['b_summary']}" + (" (a best lr at the grid's edge)" if c["edge"] else "")
      for c in shown
    )
    lines.append(
      f"- **Figure {verdict['figure']}**, {verdict['claim']}: **{verdict['verdict']}**. "
      f"{evidence[0].upper()}{evidence[1:]}."
    )
  return "\n".join(lines) + "\n"
