"""The benchmark's report: the run's context, the table, the JSON and the plot."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform as platform_module
import sys
from importlib import metadata
from typing import Any

import jax

from adam_optax.benchmarks.compiles import ABANDONED, SKIPPED
from adam_optax.benchmarks.rounds import KINDS, Measurement, median_ratio

SCHEMA = "adam-optax-bench/2"
BASELINE = "optax.adam"
COLUMNS = (
  ("method", "method", "{}"),
  ("wall_ms", "wall ms", "{:.3f}"),
  ("device_ms", "device ms", "{:.3f}"),
  ("real_ms", "real ms", "{:.3f}"),
  ("roofline_fraction", "roofline", "{:.0%}"),
  ("peak_mib", "peak MiB", "{:.1f}"),
  ("compile_s", "compile s", "{:.2f}"),
  ("real_compile_s", "real compile s", "{:.2f}"),
  ("speedup_vs_optax", "vs optax", "{:.2f}x"),
)
# The compile columns: the program of each kind whose compile time they show.
_COMPILE_COLUMNS = {"compile_s": "wall", "real_compile_s": "real"}
#: The design's budget for diagnostics: at most this much slower than without.
DIAGNOSTICS_BUDGET = 0.02
_KIND_TITLES = {"wall": "wall", "device": "device", "real": "real step"}


def package_version(package: str) -> str | None:
  """The installed version of ``package``, or ``None`` if it is not installed."""
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def _cpu_model() -> str:
  """The CPU's model name (from /proc/cpuinfo on Linux)."""
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  except OSError:
    names = []
  return names[0] if names else platform_module.processor() or platform_module.machine()


def device_kind(device: jax.Device) -> str:
  """The device's model, e.g. ``NVIDIA H100 80GB HBM3``, ``TPU v5 lite`` or ``cpu``."""
  return getattr(device, "device_kind", str(device))


def context(platform: str, load_at_start: list[float]) -> dict[str, Any]:
  """The device, the versions, the date and the load that every figure is tied to.

  ``load_average`` is read now (the end of the run); ``load_at_start`` is the
  load average read at its start.
  """
  return {
    "platform": platform,
    "device": device_kind(jax.devices()[0]),
    "cpu": _cpu_model(),
    "cpu_count": os.cpu_count(),
    "load_average": list(os.getloadavg()),
    "load_average_start": load_at_start,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "versions": {
      "python": sys.version.split()[0],
      **{name: package_version(name) for name in ("jax", "jaxlib", "optax", "adam_optax", "torch")},
    },
  }


def _ratios(numerator: Measurement, denominator: Measurement) -> dict[str, float | None]:
  """Per kind, the median of per-round ratios (``None`` where either was not timed)."""
  return {
    kind: median_ratio(numerator.round_ms[kind], denominator.round_ms[kind])
    if kind in numerator.round_ms and kind in denominator.round_ms
    else None
    for kind in KINDS
  }


def row(
  result: Measurement,
  bandwidth: float,
  baseline: Measurement | None,
  reference: Measurement | None = None,
) -> dict[str, Any]:
  """One method's figures, with its fraction of roofline and its ratios.

  The roofline is the method's bytes per step at the measured copy
  bandwidth; the fraction divides it by the dispatched step's wall time.
  ``speedup`` holds, per kind of figure, optax.adam's time over this
  method's, the median over rounds of the per-round ratio (above 1: faster).
  With a ``reference`` (the same method without diagnostics), ``overhead``
  holds this method's time over the reference's, minus 1, taken the same way.
  ``compile_s`` and ``real_compile_s`` are the seconds spent compiling the
  dispatched and the real step (a lower bound where abandoned; ``None`` where
  skipped). A figure that was not measured is ``None``.
  """
  out = dataclasses.asdict(result)
  out["roofline_ms"] = result.bytes_per_step / bandwidth * 1e3
  out["roofline_fraction"] = None if result.wall_ms is None else out["roofline_ms"] / result.wall_ms
  out["peak_mib"] = None if result.peak_bytes is None else result.peak_bytes / 2**20
  for key, kind in _COMPILE_COLUMNS.items():
    took = result.compile.get(kind)
    out[key] = None if took is None or took["outcome"] == SKIPPED else took["seconds"]
  if baseline is not None:
    out["speedup"] = _ratios(baseline, result)
    out["speedup_vs_optax"] = out["speedup"]["wall"]
  if reference is not None:
    ratios = _ratios(result, reference)
    out["overhead"] = {
      "reference": reference.method,
      **{kind: None if r is None else r - 1 for kind, r in ratios.items()},
    }
  return out


def _cell(result: dict[str, Any], key: str, fmt: str) -> str:
  """One cell of a tree's table: ``-`` where not measured, ``>`` before a lower bound."""
  if result.get(key) is None:
    return "-"
  text = fmt.format(result[key])
  took = result.get("compile", {}).get(_COMPILE_COLUMNS.get(key))
  return f">{text}" if took is not None and took["outcome"] == ABANDONED else text


def aligned(cells: list[list[str]], text_columns: int = 1) -> list[str]:
  """Rows of cells as lines: the first ``text_columns`` left-aligned, the figures right-aligned."""
  widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
  return [
    "  ".join(
      c.ljust(w) if i < text_columns else c.rjust(w)
      for i, (c, w) in enumerate(zip(r, widths, strict=True))
    )
    for r in cells
  ]


def _diagnostics_overhead(trees: list[dict[str, Any]]) -> list[str]:
  """The diagnostics-on over diagnostics-off ratios of every tree, as a table.

  E.g. ``gpt2  ao.adam + diagnostics / ao.adam  1.043x (+4.3%)  ...``, one
  row per diagnostics row of each tree, and the rows left out.
  """
  cells = [["tree", "diagnostics on / off", *_KIND_TITLES.values()]]
  left_out = []
  for tree in trees:
    for result in tree["results"]:
      if "overhead" in result:
        overhead = result["overhead"]
        cells.append(
          [
            tree["name"],
            f"{result['method']} / {overhead['reference']}",
            *(
              "-" if overhead[k] is None else f"{1 + overhead[k]:.3f}x ({overhead[k]:+.1%})"
              for k in _KIND_TITLES
            ),
          ]
        )
    left_out += [f"{tree['name']}: {method} left out" for method in tree.get("left_out", {})]
  if len(cells) == 1:
    return []
  title = (
    "diagnostics on vs off, per tree: time with diagnostics=True over the same method "
    f"without (median of per-round ratios; budget {1 + DIAGNOSTICS_BUDGET:.2f}x)"
  )
  return ["", title, *aligned(cells, text_columns=2), *left_out]


def _compile_time(took: dict[str, Any] | None) -> str:
  """E.g. ``3.20 (0.41 + 0.12 + 2.67)``, ``>60.0 abandoned`` or ``skipped``."""
  if took is None:
    return "-"
  if took["outcome"] == SKIPPED:
    return "skipped"
  if took["outcome"] == ABANDONED:
    return f">{took['seconds']:.1f} abandoned"
  phases = " + ".join(f"{took[k]:.2f}" for k in ("trace_s", "lower_s", "xla_s"))
  return f"{took['seconds']:.2f} ({phases})"


def _compile_times(trees: list[dict[str, Any]]) -> list[str]:
  """Every program's compile time, split into trace + lower + XLA compile, as a table."""
  cells = [["tree", "method", *(f"{_KIND_TITLES[k]} program" for k in KINDS)]]
  for tree in trees:
    for result in tree["results"]:
      if result["compile"]:
        times = [_compile_time(result["compile"].get(kind)) for kind in KINDS]
        cells.append([tree["name"], result["method"], *times])
  budgets = ", ".join(
    f"{t['name']} {t['compile_spent_s']:.1f} of {t['compile_budget_s']:g} s" for t in trees
  )
  title = (
    "compile seconds per program: total (trace + lower + XLA compile); the device program is "
    f"the lax.scan; compiling spent per tree: {budgets}"
  )
  return ["", title, *aligned(cells, text_columns=2)]


def table(report: dict[str, Any]) -> str:
  """The report as a plain-text table, one block per tree."""
  ctx = report["context"]
  lines = [
    f"adam-optax bench on {ctx['device']} ({ctx['platform']}; host {ctx['cpu']}, "
    f"{ctx['cpu_count']} cores), {ctx['date']}",
    "versions: " + ", ".join(f"{k} {v}" for k, v in ctx["versions"].items() if v),
    f"copy bandwidth {report['copy_bandwidth_GBps']:.1f} GB/s (read+write); "
    f"load average {ctx['load_average_start'][0]:.2f} at the start, "
    f"{ctx['load_average'][0]:.2f} at the end; peak memory: {report['memory_source']}",
    f"round-robin: {report['rounds']} rounds, each timing {report['repeats']} calls of every "
    f"method (device: one lax.scan of {report['scan_steps']} steps); medians over calls, "
    "ratios the medians of per-round ratios",
  ]
  for tree in report["trees"]:
    lines.append("")
    lines.append(
      f"{tree['name']}: {tree['params']:,} {tree['param_dtype']} params in {tree['leaves']} "
      f"leaves, {tree['moment_dtype']} moments"
    )
    cells = [[title for _, title, _ in COLUMNS]]
    cells += [[_cell(result, key, fmt) for key, _, fmt in COLUMNS] for result in tree["results"]]
    lines += aligned(cells)
    for method, reason in tree.get("left_out", {}).items():
      lines.append(f"left out: {method} ({reason})")
  if report.get("torch_skipped"):
    lines += ["", f"torch.optim.Adam skipped: {report['torch_skipped']}"]
  lines += _diagnostics_overhead(report["trees"])
  lines += _compile_times(report["trees"])
  return "\n".join(lines)


def plot(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
  """Bars of each method's fraction of roofline and speed-up over optax.adam, per tree."""
  import matplotlib
  import matplotlib.ticker

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  trees = report["trees"]
  names = list(dict.fromkeys(r["method"] for t in trees for r in t["results"]))
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  x = np.arange(len(trees))
  width = 0.8 / len(names)
  for i, name in enumerate(names):
    for ax, key in zip(axes, ("roofline_fraction", "speedup_vs_optax"), strict=True):
      values = [
        next((r.get(key) or 0.0 for r in t["results"] if r["method"] == name), 0.0) for t in trees
      ]
      ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
  for ax, title in zip(
    axes, ("fraction of roofline (dispatched step)", "speed-up over optax.adam (wall)"), strict=True
  ):
    ax.set_xticks(x, [t["name"] for t in trees])
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_title(title)
  axes[1].yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
  axes[0].legend(fontsize=8)
  ctx = report["context"]
  versions = ", ".join(f"{k} {v}" for k, v in ctx["versions"].items() if v and k != "python")
  fig.suptitle(
    f"{ctx['device']} (host {ctx['cpu']}, {ctx['cpu_count']} cores), copy bandwidth "
    f"{report['copy_bandwidth_GBps']:.1f} GB/s, load average "
    f"{ctx['load_average_start'][0]:.2f} to {ctx['load_average'][0]:.2f}, "
    f"{ctx['date'][:10]}\n{versions}",
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
