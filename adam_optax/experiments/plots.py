"""Figures: the paper's loss curves (figures 1-3) and bias-correction grid (figure 4).

Each marks what the verdicts compare (:mod:`~adam_optax.experiments.verdicts`),
so that a reader can check one by eye: the learning rates kept, the log-loss
area as a level over its window and the final losses (figures 1-3); each
curve's best step size, the diverged step sizes and those unstable without
bias correction (figure 4); and, under the plot, each part's verdict.

And, for ``--diagnostics``, the signal-to-noise ratio and the step size against
its bounds over training (the paper's section 2.1).

The figures are plain :class:`matplotlib.figure.Figure` objects drawn on the
Agg canvas, without pyplot: no global backend or figure state, nothing to
close, and a notebook shows them as they are.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from adam_optax.experiments import stability
from adam_optax.experiments.claims import INSTABILITY, NEAR_ONE, UNCORRECTED
from adam_optax.experiments.optimizers import BIAS_CORRECTION_VARIANTS, OPTIMIZERS
from adam_optax.experiments.problems import PROBLEMS
from adam_optax.experiments.report import (
  AREA,
  EARLY,
  FINAL,
  Record,
  Summary,
  floats,
  plural,
  summarize,
  value,
)

# The paper's colours for figure 4: red with bias correction, green without.
VARIANT_COLORS = {"adam": "tab:red", "adam_no_bias_correction": "tab:green"}


def save_png(figure: Figure, path: Path | io.BytesIO) -> None:
  """Renders ``figure`` with the Agg backend into a PNG file at ``path``."""
  FigureCanvasAgg(figure).print_png(path)


def png_bytes(figure: Figure) -> bytes:
  """The PNG of ``figure``, e.g. for ``IPython.display.Image`` in a notebook."""
  buffer = io.BytesIO()
  save_png(figure, buffer)
  return buffer.getvalue()


def _label(record: Record) -> str:
  """The legend label of a setting: the optimizer's label, any b1, b2, and the learning rate."""
  if PROBLEMS[record["problem"]].study == "bias_correction":
    name = BIAS_CORRECTION_VARIANTS[record["optimizer"]].label
    name += f", β1={record['b1']:g}, β2={record['b2']:g}"
  else:
    name = OPTIMIZERS[record["optimizer"]].label
  return f"{name} (lr {record['learning_rate']:g})"


def _with_caption(size: tuple[float, float], verdict: dict | None) -> tuple[Figure, Figure]:
  """A figure, and the subfigure to plot in, above the verdict of each part (if any)."""
  lines = []
  if verdict and verdict.get("parts"):
    lines.append(f"Verdicts ({verdict['verdict']}; margin {verdict['margin']:.0%}):")
    for part in verdict["parts"]:
      said = f"• {part['text']}: {part['verdict'].upper()}. {part['evidence']}"
      lines += textwrap.wrap(said, width=int(15 * size[0]), subsequent_indent="   ")
  height = 0.16 * len(lines) + 0.1 if lines else 0.0
  figure = Figure(figsize=(size[0], size[1] + height), layout="constrained")
  if not lines:
    return figure, figure
  plot, caption = figure.subfigures(2, 1, height_ratios=[size[1], height])
  caption.text(0.01, 0.98, "\n".join(lines), va="top", ha="left", fontsize=7)
  return figure, plot


def curves_figure(
  title: str,
  summaries: Sequence[Summary],
  metric: str = "train_loss",
  verdict: dict | None = None,
) -> Figure:
  """Training loss against iterations, one line per optimizer at its best learning rate.

  The line is the mean over seeds, the band their minimum to maximum; the
  curves are window means of the minibatch values; the y axis is logarithmic.
  For the training loss, what the verdicts compare is drawn too: each
  curve's log-loss area as a dashed level over the steps it covers (its
  geometric mean, over seeds too) and the final whole-training-set loss as a
  diamond after the last step; "(edge)" marks a best learning rate at the
  edge of its grid.

  Args:
    title: the figure title.
    summaries: one per optimizer, all of one problem.
    metric: the per-step metric to plot (``<metric>_curve`` in the records).
    verdict: the problem's verdict (:func:`~adam_optax.experiments.verdicts.judge`),
      printed under the plot.

  Returns:
    The figure.
  """
  figure, plot = _with_caption((6.4, 4.4), verdict)
  ax = plot.add_subplot()
  marked = metric == "train_loss"
  for summary in summaries:
    steps = summary.runs[0]["curve_steps"]
    curves = summary.curves(metric)
    label = _label(summary.record) + (" (edge)" if summary.at_edge else "")
    (line,) = ax.plot(steps, np.nanmean(curves, axis=0), label=label, lw=1.5)
    low, high = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
    color = line.get_color()
    ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
    if marked:
      area = np.exp(np.mean(np.log([value(r, AREA) for r in summary.runs])))
      ax.hlines(area, steps[0], steps[-1], colors=color, linestyles="--", lw=1.0)
      final = np.mean(summary.values(FINAL))
      ax.plot([steps[-1]], [final], "D", color=color, mec="black", ms=6)
  ax.set_yscale("log")
  ax.set_xlabel("iterations")
  ax.set_ylabel(f"{metric.replace('_', ' ')} (minibatch)")
  ax.set_title(
    f"{title}\nmean and min–max band over {plural('seed', len(summaries[0].runs))}", fontsize=10
  )
  ax.grid(True, which="both", alpha=0.3)
  handles, _ = ax.get_legend_handles_labels()
  if marked:
    steps = summaries[0].runs[0]["curve_steps"]
    handles += [
      Line2D([], [], color="0.3", ls="--", label=f"log-loss area, steps 1–{steps[-1]}"),
      Line2D([], [], color="0.3", ls="", marker="D", mec="black", label="final loss (whole set)"),
    ]
  ax.legend(handles=handles, fontsize=8)
  return figure


def _mean_checkpoint_losses(all_records: Sequence[Record]) -> dict[tuple, np.ndarray]:
  """Mean over seeds of the checkpoint losses, by (variant, b1, b2, learning rate)."""
  groups: dict[tuple, list[np.ndarray]] = {}
  for r in all_records:
    key = (r["optimizer"], r["b1"], r["b2"], r["learning_rate"])
    groups.setdefault(key, []).append(floats(r["checkpoint_train_loss"]))
  return {key: np.mean(losses, axis=0) for key, losses in groups.items()}


def bias_correction_figure(
  title: str, all_records: Sequence[Record], verdict: dict | None = None
) -> Figure:
  """Loss against log10 step size, with and without bias correction (figure 4).

  One panel per (b1, b2). In each, red is Adam with bias correction and green
  without, as in the paper; dashed with open markers is the whole-training-set
  loss after the first checkpoint, solid with filled markers after the last
  (the paper's "10 epochs" and "100 epochs"); each point is the mean over
  seeds. What the verdicts compare is marked: a star on each curve's best
  step size; a cross on the top edge where a step size diverged on some seed
  (a triangle where its loss is off the chart); a green band where the
  variant without correction is unstable on every seed (a pale one: on some).

  Args:
    title: the figure title.
    all_records: the VAE records (both variants, every b1, b2, lr and seed).
    verdict: the problem's verdict, printed under the plot.

  Returns:
    The figure.
  """
  losses = _mean_checkpoint_losses(all_records)
  b1s, b2s, lrs = (sorted({key[i] for key in losses}) for i in (1, 2, 3))
  checkpoints = all_records[0]["checkpoint_steps"]
  # Early: dashed with open markers; late: solid with filled ones (one if one checkpoint).
  styles = {0: ("--", "white", EARLY), len(checkpoints) - 1: ("-", None, FINAL)}
  best = {
    index: {
      (s.record["optimizer"], s.record["b1"], s.record["b2"]): s.record["learning_rate"]
      for s in summarize(all_records, statistic)
    }
    for index, (_, _, statistic) in styles.items()
  }
  finite = np.concatenate([v[np.isfinite(v)] for v in losses.values()])
  bottom, top = 0.95 * finite.min(), 1.05 * min(finite.max(), 2 * np.median(finite))
  figure, plot = _with_caption((3.2 * len(b2s), 2.8 * len(b1s)), verdict)
  axes = plot.subplots(len(b1s), len(b2s), sharex=True, sharey=True, squeeze=False)
  log_lrs = np.log10(lrs)
  missing = np.full(len(checkpoints), np.nan)
  for (i, b1), (j, b2) in ((row, col) for row in enumerate(b1s) for col in enumerate(b2s)):
    ax = axes[i, j]
    steps = stability.unstable_step_sizes(
      all_records, (UNCORRECTED, b1, b2), ("adam", b1, b2), INSTABILITY
    )
    for lr, status in steps.items():
      if status != "none":
        shade = 0.25 if status == "all" else 0.08
        ax.axvspan(np.log10(lr) - 0.2, np.log10(lr) + 0.2, color="tab:green", alpha=shade, lw=0)
    for variant, optimizer in BIAS_CORRECTION_VARIANTS.items():
      color = VARIANT_COLORS[variant]
      for index, (style, face, _) in styles.items():
        values = np.array([losses.get((variant, b1, b2, lr), missing)[index] for lr in lrs])
        label = f"{optimizer.label}, after {plural('step', checkpoints[index])}"
        ax.plot(
          log_lrs,
          np.minimum(values, top),
          style,
          marker="o",
          ms=4,
          mfc=face or color,
          color=color,
          label=label,
        )
        chosen = best[index].get((variant, b1, b2))
        if chosen is not None and np.isfinite(values[lrs.index(chosen)]):
          ax.plot(
            np.log10(chosen),
            min(values[lrs.index(chosen)], top),
            "*",
            ms=11,
            color=color,
            mec="black",
            mew=0.6,
          )
      diverged = stability.diverged_step_sizes(all_records, (variant, b1, b2))
      crosses = [np.log10(lr) for lr, status in diverged.items() if status != "none"]
      ax.plot(crosses, np.full(len(crosses), top), "x", color=color, ms=7)
      late = np.array([losses.get((variant, b1, b2, lr), missing)[-1] for lr in lrs])
      off = np.isfinite(late) & (late > top)
      ax.plot(log_lrs[off], np.full(off.sum(), top), "^", color=color, ms=6)
    ax.set_title(f"β1={b1:g}, β2={b2:g}" + (" (near 1)" if b2 == NEAR_ONE else ""), fontsize=9)
    ax.set_ylim(bottom, 1.02 * top)
    ax.grid(True, alpha=0.3)
    if i == len(b1s) - 1:
      ax.set_xlabel("log10(step size)")
    if j == 0:
      ax.set_ylabel("loss (−ELBO, nats)")
  handles, _ = axes[0, 0].get_legend_handles_labels()
  handles += [
    Line2D([], [], color="0.3", ls="", marker="*", ms=10, mec="black", label="best step size"),
    Line2D([], [], color="0.3", ls="", marker="x", label="diverged (some seed)"),
    Patch(
      color="tab:green", alpha=0.25, label=f"unstable without correction (> {INSTABILITY:.0%})"
    ),
  ]
  plot.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=7, handlelength=3)
  seeds = plural("seed", len({r["seed"] for r in all_records}))
  plot.suptitle(f"{title}: mean over {seeds}; ▲ off the chart", fontsize=10)
  return figure


def diagnostics_figure(title: str, summaries: Sequence[Summary]) -> Figure:
  r"""The signal-to-noise ratio and the step size against its bounds, over training.

  Left: the mean over coordinates of the SNR :math:`|\hat m_t| / (\sqrt{\hat
  v_t} + \epsilon)` (solid) and its maximum (dotted); it falls as the
  gradients' mean vanishes near an optimum, the paper's annealing. Right: the
  largest step of a coordinate, :math:`\max_i |\Delta_{t,i}| / \alpha`
  (solid, the maximum SNR), under the strict bound (dashed) that holds for
  every gradient stream, with the paper's approximate bound (dotted). One
  colour per optimizer at its best learning rate; each line is the mean over
  seeds of window means; the y axes are logarithmic.

  Args:
    title: the figure title.
    summaries: the settings of one problem that recorded diagnostics.

  Returns:
    The figure.

  References:
    Kingma & Ba, 2015, section 2.1.
  """
  figure = Figure(figsize=(10.0, 4.4), layout="constrained")
  snr_ax, step_ax = figure.subplots(1, 2)
  for summary in summaries:
    steps = summary.runs[0]["curve_steps"]
    alpha = summary.curves("alpha")
    snr_mean, snr_max = (np.nanmean(summary.curves(n), axis=0) for n in ("snr_mean", "snr_max"))
    step, strict, paper = (
      np.nanmean(summary.curves(n) / alpha, axis=0)
      for n in ("step_max", "bound_strict", "bound_paper")
    )
    (line,) = snr_ax.plot(steps, snr_mean, lw=1.5, label=_label(summary.record))
    color = line.get_color()
    snr_ax.plot(steps, snr_max, ":", lw=1.0, color=color)
    step_ax.plot(steps, step, lw=1.5, color=color)
    step_ax.plot(steps, strict, "--", lw=1.0, color=color)
    step_ax.plot(steps, paper, ":", lw=1.0, color=color)
  snr_ax.set_title("signal-to-noise ratio |m̂| / (√v̂ + ε)", fontsize=9)
  snr_ax.set_ylabel("SNR")
  step_ax.set_title("largest step of a coordinate, and its bounds", fontsize=9)
  step_ax.set_ylabel("step / α")
  for ax in (snr_ax, step_ax):
    ax.set_yscale("log")
    ax.set_xlabel("iterations")
    ax.grid(True, which="both", alpha=0.3)
  snr_ax.legend(fontsize=8)
  styles = {"-": "mean SNR, max step", ":": "max SNR, paper's bound", "--": "strict bound"}
  handles = [Line2D([], [], color="0.3", ls=ls, label=label) for ls, label in styles.items()]
  step_ax.legend(handles=handles, fontsize=8)
  seeds = plural("seed", len(summaries[0].runs))
  figure.suptitle(f"{title}: signal-to-noise ratio and step size, mean over {seeds}", fontsize=10)
  return figure
