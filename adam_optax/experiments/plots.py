"""Figures: the paper's loss curves (figures 1-3) and bias-correction grid (figure 4).

And, for ``--diagnostics``, the signal-to-noise ratio and the step size against
its bounds over training (the paper's section 2.1).

The figures are plain :class:`matplotlib.figure.Figure` objects drawn on the
Agg canvas, without pyplot: no global backend or figure state, nothing to
close, and a notebook shows them as they are.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from adam_optax.experiments.optimizers import BIAS_CORRECTION_VARIANTS, OPTIMIZERS
from adam_optax.experiments.problems import PROBLEMS
from adam_optax.experiments.report import Record, Summary, floats, plural

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


def curves_figure(title: str, summaries: Sequence[Summary], metric: str = "train_loss") -> Figure:
  """Training loss against iterations, one line per optimizer at its best learning rate.

  The line is the mean over seeds, the band their minimum to maximum; the
  curves are window means of the minibatch values; the y axis is logarithmic.

  Args:
    title: the figure title.
    summaries: one per optimizer, all of one problem.
    metric: the per-step metric to plot (``<metric>_curve`` in the records).

  Returns:
    The figure.
  """
  figure = Figure(figsize=(6.4, 4.4), layout="constrained")
  ax = figure.add_subplot()
  for summary in summaries:
    steps = summary.runs[0]["curve_steps"]
    curves = summary.curves(metric)
    (line,) = ax.plot(steps, np.nanmean(curves, axis=0), label=_label(summary.record), lw=1.5)
    low, high = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
    ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, lw=0)
  ax.set_yscale("log")
  ax.set_xlabel("iterations")
  ax.set_ylabel(f"{metric.replace('_', ' ')} (minibatch)")
  ax.set_title(
    f"{title}\nmean and min–max band over {plural('seed', len(summaries[0].runs))}", fontsize=10
  )
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  return figure


def _mean_checkpoint_losses(all_records: Sequence[Record]) -> dict[tuple, np.ndarray]:
  """Mean over seeds of the checkpoint losses, by (variant, b1, b2, learning rate)."""
  groups: dict[tuple, list[np.ndarray]] = {}
  for r in all_records:
    key = (r["optimizer"], r["b1"], r["b2"], r["learning_rate"])
    groups.setdefault(key, []).append(floats(r["checkpoint_train_loss"]))
  return {key: np.mean(losses, axis=0) for key, losses in groups.items()}


def bias_correction_figure(title: str, all_records: Sequence[Record]) -> Figure:
  """Loss against log10 step size, with and without bias correction (figure 4).

  One panel per (b1, b2). In each, red is Adam with bias correction and green
  without, as in the paper; dashed with open markers is the whole-training-set
  loss after the first checkpoint, solid with filled markers after the last
  (the paper's "10 epochs" and "100 epochs"); each point is the mean over
  seeds. Settings that diverged or left the chart are crosses on its top edge.

  Args:
    title: the figure title.
    all_records: the VAE records (both variants, every b1, b2, lr and seed).

  Returns:
    The figure.
  """
  losses = _mean_checkpoint_losses(all_records)
  b1s, b2s, lrs = (sorted({key[i] for key in losses}) for i in (1, 2, 3))
  checkpoints = all_records[0]["checkpoint_steps"]
  # Early: dashed with open markers; late: solid with filled ones (one if one checkpoint).
  styles = {0: ("--", "white"), len(checkpoints) - 1: ("-", None)}
  finite = np.concatenate([v[np.isfinite(v)] for v in losses.values()])
  bottom, top = 0.95 * finite.min(), 1.05 * min(finite.max(), 2 * np.median(finite))
  figure = Figure(figsize=(3.2 * len(b2s), 2.8 * len(b1s)), layout="constrained")
  axes = figure.subplots(len(b1s), len(b2s), sharex=True, sharey=True, squeeze=False)
  log_lrs = np.log10(lrs)
  for (i, b1), (j, b2) in ((row, col) for row in enumerate(b1s) for col in enumerate(b2s)):
    ax = axes[i, j]
    for variant, optimizer in BIAS_CORRECTION_VARIANTS.items():
      color = VARIANT_COLORS[variant]
      for index, (style, face) in styles.items():
        values = np.array([losses[variant, b1, b2, lr][index] for lr in lrs])
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
        off = ~(values <= top)
        ax.plot(log_lrs[off], np.full(off.sum(), top), "x", color=color, ms=7)
    ax.set_title(f"β1={b1:g}, β2={b2:g}", fontsize=9)
    ax.set_ylim(bottom, 1.02 * top)
    ax.grid(True, alpha=0.3)
    if i == len(b1s) - 1:
      ax.set_xlabel("log10(step size)")
    if j == 0:
      ax.set_ylabel("loss (−ELBO, nats)")
  axes[0, 0].legend(fontsize=7, handlelength=4)
  seeds = plural("seed", len({r["seed"] for r in all_records}))
  figure.suptitle(f"{title}: mean over {seeds}; × diverged or off the chart", fontsize=10)
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
