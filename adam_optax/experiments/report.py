"""Results of a comparison: one record per run, the best learning rates, files.

A *record* is a JSON-ready dict for one run (problem, optimizer, learning
rate, seed, ...). A *setting* is a record's identity without learning rate
and seed (problem, optimizer and, in the bias-correction study, ``b1`` and
``b2``). The statistics of a run (:data:`STATISTICS`, read by :func:`value`)
are what the verdicts compare: the area under the log training-loss curve,
the whole-training-set loss after the first tenth of the steps, and at the
end. :func:`summarize` keeps, for each setting, the learning rate with the
lowest mean of one of them over seeds, as the paper keeps the best setting
of each optimizer for its figures. Outputs are written to temporary files
and renamed into place at the end (:func:`write_atomically`), so an
interrupted run leaves nothing that looks complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adam_optax.experiments.problems import PROBLEMS
from adam_optax.experiments.train import Grid, TrainResult

# Loss curves longer than this are averaged over windows of equal length.
CURVE_POINTS = 250
# The statistics of a run (lower is better), by the name that value() reads.
AREA = "log_area_train_loss"
EARLY = "first_checkpoint_train_loss"
FINAL = "final_train_loss"
STATISTICS = {
  AREA: "log-loss area",
  EARLY: "loss after the first tenth",
  FINAL: "final training loss",
}
# Fields that, with "problem" and "optimizer", identify a setting.
SETTING_FIELDS = ("b1", "b2")

Record = dict[str, Any]


def number(value: Any, digits: int = 9) -> float | None:
  """A float for JSON, ``None`` for NaN or infinity (a diverged run).

  Rounded to ``digits`` significant digits: 9 keep every float32 exactly, 7
  give back the decimal a float32 hyper-parameter was made from (0.003, not
  0.003000000026077032).
  """
  value = float(value)
  return float(f"{value:.{digits}g}") if math.isfinite(value) else None


def _curve(values: np.ndarray) -> list[float | None]:
  return [number(v, digits=6) for v in values]


def floats(values: Sequence[float | None]) -> np.ndarray:
  """A float array of record values, NaN where a record holds ``None`` (diverged).

  Examples:
    >>> floats([1.0, None]).tolist()
    [1.0, nan]
  """
  return np.array([np.nan if v is None else v for v in values], dtype=float)


def window_means(curve: np.ndarray, points: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
  """Averages a per-step curve over consecutive windows of equal length.

  Examples:
    >>> steps, means = window_means(np.arange(10.0), points=4)
    >>> steps.tolist(), means.tolist()
    ([3, 6, 9, 10], [1.0, 4.0, 7.0, 9.0])

  Args:
    curve: values at steps ``1..n``, shape ``(..., n)``.
    points: at most this many windows.

  Returns:
    The step count at the end of each window and the window means (the last
    window may be shorter).
  """
  n = curve.shape[-1]
  width = -(-n // points)
  starts = np.arange(0, n, width)
  sums = np.add.reduceat(curve, starts, axis=-1)
  ends = np.minimum(starts + width, n)
  return ends, sums / (ends - starts)


def records(
  problem: str,
  optimizer: str,
  grid: Grid,
  steps: int,
  result: TrainResult,
  **fields: Any,
) -> list[Record]:
  """One JSON-ready record per run of a grid.

  Each has ``problem``, ``optimizer``, ``seed``, the ``fields`` given (the
  same in every run, e.g. ``diagnostics`` and ``states``), the grid's hyper-parameters
  (``learning_rate``, and ``b1``/``b2`` where swept), ``steps``,
  ``final_train_loss`` (full training set, no dropout), ``test_loss``,
  ``test_accuracy`` (``None`` for the VAE), the same two as
  ``<name>_test_loss`` and ``<name>_test_accuracy`` for each of the result's
  other evaluations (e.g. ``averaged_test_accuracy``), ``curve_steps`` with one
  ``<metric>_curve`` per recorded metric (window means of the per-step
  minibatch values), and ``checkpoint_steps``/``checkpoint_train_loss`` (the
  whole-training-set loss after the first and the last chunk). Diverged
  values are ``None``.
  """
  curve_steps = None
  curves = {}
  for name, values in result.curves.items():
    curve_steps, curves[name] = window_means(values)
  tests = {"test": result.test_metrics}
  tests.update({f"{name}_test": metrics for name, metrics in result.evaluations.items()})
  out = []
  for run in range(grid.size):
    record: Record = {"problem": problem, "optimizer": optimizer, "seed": int(grid.seeds[run])}
    record.update(fields)
    record.update({k: number(v[run], digits=7) for k, v in grid.hyperparams.items()})
    record.update(steps=steps, final_train_loss=number(result.train_metrics["loss"][run]))
    for prefix, metrics in tests.items():
      accuracy = metrics.get("accuracy")
      record[f"{prefix}_loss"] = number(metrics["loss"][run])
      record[f"{prefix}_accuracy"] = None if accuracy is None else number(accuracy[run])
    record.update(
      curve_steps=[int(s) for s in curve_steps],
      **{f"{name}_curve": _curve(values[run]) for name, values in curves.items()},
      checkpoint_steps=[int(s) for s in result.checkpoint_steps],
      checkpoint_train_loss=_curve(result.checkpoint_losses[run]),
    )
    out.append(record)
  return out


def setting(record: Record) -> tuple:
  """The setting a record belongs to: problem, optimizer and any b1, b2."""
  return (record["problem"], record["optimizer"], *(record.get(f) for f in SETTING_FIELDS))


def value(record: Record, field: str) -> float:
  r"""``record[field]``, or one of the statistics derived from a record.

  :data:`AREA` is the area under the log training-loss curve per step, given
  as the loss it averages to: :math:`\exp(\frac1n \sum_t \log L_t)` over the
  recorded curve (window means of the minibatch loss, as the figures draw
  it), the geometric mean of the curve. It is lower when a run converges
  faster, and, unlike the mean of the loss itself, not dominated by the first
  steps: the ratio of two runs' areas is the mean ratio of their curves,
  the average height between them on the figure's logarithmic axis.
  :data:`EARLY` is the whole-training-set loss after the first chunk of
  steps (a tenth). Infinite where the run diverged, so that it is never
  the best.

  Examples:
    >>> value({"train_loss_curve": [4.0, 1.0]}, AREA)
    2.0
    >>> value({"train_loss_curve": [4.0, None]}, AREA)
    inf
  """
  if field == AREA:
    curve = floats(record["train_loss_curve"])
    loss = float(np.exp(np.log(curve).mean())) if np.isfinite(curve).all() else None
  elif field == EARLY:
    loss = record["checkpoint_train_loss"][0]
  else:
    loss = record[field]
  return math.inf if loss is None else loss


def selection(problem: str) -> str:
  """The statistic whose best learning rate :func:`summarize` keeps for ``problem``'s tables.

  The log-loss area for the optimizer comparisons (figures 1-3: the fastest
  curve, as drawn); the final training loss for the bias-correction study
  (figure 4 draws the loss against the step size).
  """
  return FINAL if PROBLEMS[problem].study == "bias_correction" else AREA


@dataclasses.dataclass(frozen=True)
class Summary:
  """A setting at its best learning rate.

  Attributes:
    record: the setting's fields (problem, optimizer, b1, b2, learning_rate).
    runs: the records of the best learning rate, one per seed.
    diverged: how many runs of the setting (every learning rate and seed)
      ended with a non-finite loss.
    total: how many runs the setting has.
    learning_rates: every learning rate the setting tried, ascending.
  """

  record: Record
  runs: tuple[Record, ...]
  diverged: int
  total: int
  learning_rates: tuple[float, ...] = ()

  @property
  def at_edge(self) -> bool:
    """Whether the best learning rate is the smallest or largest tried (not bracketed)."""
    lrs = self.learning_rates
    return len(lrs) > 1 and self.record["learning_rate"] in (lrs[0], lrs[-1])

  def values(self, field: str) -> np.ndarray:
    """``field`` of every seed (NaN where diverged or absent)."""
    return floats([r.get(field) for r in self.runs])

  def curves(self, metric: str) -> np.ndarray:
    """``<metric>_curve`` of every seed, shape ``(seeds, points)`` (NaN where diverged)."""
    return np.stack([floats(r[f"{metric}_curve"]) for r in self.runs])


def summarize(all_records: Sequence[Record], field: str | None = None) -> list[Summary]:
  """For each setting, the learning rate with the lowest mean ``field`` over seeds.

  ``field`` is any field that :func:`value` reads; by default the
  :func:`selection` of each setting's problem. A diverged run counts as an
  infinite loss, so a learning rate is kept only if it trains on every seed,
  unless none does.

  Examples:
    >>> recs = [{"problem": "p", "optimizer": "o", "learning_rate": lr, "seed": s,
    ...          "final_train_loss": loss}
    ...         for lr, s, loss in [(0.1, 0, 1.0), (0.1, 1, None), (0.01, 0, 2.0), (0.01, 1, 2.0)]]
    >>> [s.record["learning_rate"] for s in summarize(recs, FINAL)]
    [0.01]
  """
  by_setting: dict[tuple, dict[float, list[Record]]] = {}
  for record in all_records:
    by_setting.setdefault(setting(record), {}).setdefault(record["learning_rate"], []).append(
      record
    )
  summaries = []
  for (problem, *_), runs_by_lr in by_setting.items():
    statistic = field or selection(problem)
    best_lr = min(runs_by_lr, key=lambda lr: np.mean([value(r, statistic) for r in runs_by_lr[lr]]))
    runs = tuple(sorted(runs_by_lr[best_lr], key=lambda r: r["seed"]))
    keep = ("problem", "optimizer", *SETTING_FIELDS, "learning_rate")
    every_run = [r for lr_runs in runs_by_lr.values() for r in lr_runs]
    diverged = sum(r["final_train_loss"] is None for r in every_run)
    record = {k: runs[0][k] for k in keep if k in runs[0]}
    lrs = tuple(sorted(runs_by_lr))
    summaries.append(Summary(record, runs, diverged, len(every_run), lrs))
  return summaries


def plural(noun: str, count: int) -> str:
  """``"1 seed"``, ``"3 seeds"``."""
  return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def mean_std(values: np.ndarray, scale: float = 1.0) -> str:
  """``"mean ± std"`` over seeds with 4 significant digits; ``"diverged"`` if any is NaN.

  Examples:
    >>> mean_std(np.array([0.1, 0.3])), mean_std(np.array([0.9611111] * 3), scale=100)
    ('0.2 ± 0.1', '96.11 ± 0')
  """
  if np.isnan(values).any():
    return "diverged"
  mean, std = scale * values.mean(), scale * values.std()
  std = std if std > 1e-6 * abs(mean) else 0.0  # equal values: no rounding noise
  return f"{mean:.4g} ± {std:.2g}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """The lines of a Markdown table.

  Examples:
    >>> table(["a", "b"], [["1", "2"]])
    ['| a | b |', '| --- | --- |', '| 1 | 2 |']
  """
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _problem_table(rows: Sequence[Summary]) -> list[str]:
  """The table of one problem: each setting at its best learning rate."""
  betas = PROBLEMS[rows[0].record["problem"]].study == "bias_correction"
  header = ["optimizer", *(["b1", "b2"] if betas else []), "best lr", "lrs tried"]
  header += [] if betas else [STATISTICS[AREA]]
  header += ["final train loss", "test loss" if betas else "test accuracy (%)", "diverged"]
  cells_of_rows = []
  for row in rows:
    cells = [row.record["optimizer"]]
    cells += [f"{row.record['b1']:g}", f"{row.record['b2']:g}"] if betas else []
    edge = " (edge)" if row.at_edge else ""
    lrs = row.learning_rates
    cells += [f"{row.record['learning_rate']:g}{edge}", f"{len(lrs)}: {lrs[0]:g}–{lrs[-1]:g}"]
    if not betas:
      cells.append(mean_std(floats([value(r, AREA) for r in row.runs])))
    cells.append(mean_std(row.values("final_train_loss")))
    cells.append(
      mean_std(row.values("test_loss")) if betas else mean_std(row.values("test_accuracy"), 100)
    )
    cells.append(f"{row.diverged}/{row.total}")
    cells_of_rows.append(cells)
  return table(header, cells_of_rows)


def markdown(summaries: Sequence[Summary]) -> str:
  """The tables of ``results.md``: per problem, mean ± std over seeds at the best learning rate."""
  lines = [
    "## Results by problem",
    "",
    "Mean ± standard deviation over seeds, at each setting's best learning rate (of its",
    "log-spaced grid): the lowest mean log-loss area for figures 1-3, the lowest mean final",
    'training loss for figure 4. "(edge)": the best is the smallest or largest learning rate',
    "tried even after widening the grid, so the optimum is not bracketed. Log-loss area: the",
    "geometric mean of the minibatch training-loss curve drawn in the figure. Final train",
    "loss: the whole training set after the last step, without dropout. Diverged: runs of",
    "the whole sweep (every learning rate and seed) that ended with a non-finite loss.",
  ]
  problems = dict.fromkeys(s.record["problem"] for s in summaries)
  for problem in problems:
    rows = [s for s in summaries if s.record["problem"] == problem]
    steps = rows[0].runs[0]["steps"]
    lines += ["", f"### {problem} ({plural('step', steps)}, {plural('seed', len(rows[0].runs))})"]
    lines += ["", *_problem_table(rows)]
  return "\n".join(lines) + "\n"


Writer = Callable[[Path], None]


def write_atomically(
  out_dir: Path, writers: Mapping[str, Writer], owned: Sequence[str] = ()
) -> list[str]:
  """Writes every file to a temporary name in ``out_dir``, then renames them all.

  ``writers[name](path)`` writes the content of ``out_dir / name`` to
  ``path``. Nothing is renamed until every file is written, and the
  temporary files are removed if anything fails (or is interrupted), so
  ``out_dir`` never holds a partial result under a final name. Once all
  are in place, the files named in ``owned`` but not written this time (an
  earlier run's figures) are removed; no other file is touched.

  Args:
    out_dir: an existing, writable directory.
    writers: the files to write, by name.
    owned: every file name a run may write.

  Returns:
    The names of the earlier files removed.
  """
  temporary: dict[str, Path] = {}
  umask = os.umask(0)
  os.umask(umask)
  try:
    for name, write in writers.items():
      handle, path = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".partial")
      os.close(handle)
      temporary[name] = Path(path)
      write(temporary[name])
      # mkstemp makes the file private; the result gets the usual permissions.
      temporary[name].chmod(0o666 & ~umask)
    for name, path in temporary.items():
      os.replace(path, out_dir / name)
    stale = [name for name in owned if name not in writers and (out_dir / name).is_file()]
    for name in stale:
      (out_dir / name).unlink()
    return stale
  finally:
    for path in temporary.values():
      with contextlib.suppress(FileNotFoundError):
        path.unlink()
