"""``adam-optax bench``: one Adam step against optax.adam, torch and the roofline.

An Adam step reads p, g, m, v and writes p, m, v: 28 bytes per float32
parameter. The roofline is that traffic at the copy bandwidth measured in the
same run (a donated jitted multiply). For each tree (one large leaf, a
GPT-2-small-shaped tree, 2,000 leaves of 4,096, and the GPT-2 tree in
bfloat16 with float32 moments) and each method (optax.adam, ao.adam, the flat
fast path of :mod:`adam_optax.flat`, torch's Adam where installed) it reports:
the wall time of one dispatched step, the device time per step (steps inside
one ``lax.scan``), the wall time of a real training step's shape (loss and
gradients made inside the step), the fraction of roofline (at the best copy
bandwidth measured before each tree), the peak memory, the compile time and
the speed-up over optax.adam, as a table and optionally as JSON and a plot.
The methods of a tree are timed round-robin under the same load, and ratios
are medians of per-round ratios (:mod:`adam_optax.benchmarks.rounds`); a
table gives, per tree, the time of each row with ``diagnostics=True`` over
the same method without (the design's budget: 1.02x), and a last one the
compile time of every program, split into trace, lower and XLA compile. A
tree's compiles share a budget (``--compile-budget``, 600 s by default;
:mod:`adam_optax.benchmarks.compiles`): what is still compiling when it runs
out is reported as a lower bound and left untimed.
On an accelerator (GPU, TPU) the trees have their full size; on CPU they are
scaled down (the GPT-2 tree 8x in width, the single leaf to 16M parameters).
While it runs, one line per compiled method and per round goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax

from adam_optax.benchmarks import compiles, jax_steps, report, rounds, timing, torch_step
from adam_optax.benchmarks.trees import TREE_NAMES, TreeSpec, tree_specs


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the flags of ``adam-optax bench`` to ``parser``."""
  parser.add_argument("--quick", action="store_true", help="tiny trees, few repeats (seconds)")
  parser.add_argument(
    "--trees",
    nargs="+",
    choices=TREE_NAMES,
    default=list(TREE_NAMES),
    metavar="TREE",
    help=f"trees to run, from {', '.join(TREE_NAMES)} (default: all)",
  )
  parser.add_argument(
    "--rounds", type=int, help="rounds of round-robin timing per figure (default 10; 3 quick)"
  )
  parser.add_argument(
    "--repeats", type=int, help="timed calls of each method per round (default 2; 1 quick)"
  )
  parser.add_argument(
    "--scan-steps", type=int, help="steps per lax.scan for the device time (default 10; 2 quick)"
  )
  parser.add_argument(
    "--compile-budget",
    type=float,
    default=600.0,
    metavar="SECONDS",
    help="seconds of compiling per tree (default 600); a program still compiling when they run "
    "out is abandoned and reported as a lower bound, and the tree's later programs are skipped",
  )
  parser.add_argument("--no-torch", action="store_true", help="skip torch.optim.Adam")
  parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
  parser.add_argument("--plot", metavar="PATH", help="write a PNG plot of the report")


def progress_printer(start: float) -> Callable[[str], None]:
  """A function that prints ``message`` to stderr after the minutes and seconds since ``start``."""

  def say(message: str) -> None:
    minutes, seconds = divmod(int(time.perf_counter() - start), 60)
    print(f"[bench {minutes:02d}:{seconds:02d}] {message}", file=sys.stderr, flush=True)

  return say


def tree_scale(platform: str, quick: bool) -> str:
  """The scale of the trees (:func:`~adam_optax.benchmarks.trees.tree_specs`) on ``platform``.

  ``quick`` for ``--quick``; else full size on accelerators, scaled down on CPU.
  """
  if quick:
    return "quick"
  return "cpu" if platform == "cpu" else "full"


def _measure_tree(
  spec: TreeSpec,
  platform: str,
  with_torch: bool,
  budget: compiles.Budget,
  n_rounds: int,
  repeats: int,
  scan_steps: int,
  say: Callable[[str], None],
) -> list[rounds.Measurement]:
  """Compiles (within ``budget``) and times every method on ``spec`` round-robin."""
  contenders = [
    jax_steps.prepare(name, method, spec, scan_steps)
    for name, method in jax_steps.methods(spec).items()
  ]
  if with_torch:
    say(f"{spec.name}: preparing torch.optim.Adam")
    contenders.append(torch_step.prepare(spec, platform, scan_steps))
  return rounds.measure(
    contenders,
    budget,
    n_rounds,
    repeats,
    scan_steps,
    report.BASELINE,
    lambda message: say(f"{spec.name}: {message}"),
  )


def _tree_report(
  spec: TreeSpec, results: list[rounds.Measurement], bandwidth: float, budget: compiles.Budget
) -> dict[str, Any]:
  """One tree's part of the report: the tree, its compile budget, and a row per method."""
  by_name = {r.method: r for r in results}
  return {
    "name": spec.name,
    "params": spec.size,
    "leaves": len(spec.shapes),
    "param_dtype": spec.dtype.name,
    "moment_dtype": spec.moment_dtype.name,
    "left_out": jax_steps.left_out(spec),
    "compile_budget_s": budget.seconds,
    "compile_spent_s": budget.spent,
    "results": [
      report.row(
        r,
        bandwidth,
        by_name.get(report.BASELINE),
        by_name.get(jax_steps.OVERHEAD_REFERENCE.get(r.method)),
      )
      for r in results
    ],
  }


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
  """Runs the benchmark; prints the table; returns 0."""
  load_at_start = list(os.getloadavg())
  n_rounds = args.rounds if args.rounds is not None else (3 if args.quick else 10)
  repeats = args.repeats if args.repeats is not None else (1 if args.quick else 2)
  scan_steps = args.scan_steps if args.scan_steps is not None else (2 if args.quick else 10)
  if n_rounds < 1 or repeats < 1 or scan_steps < 1:
    parser.error("--rounds, --repeats and --scan-steps must be at least 1")
  if not args.compile_budget > 0:  # also NaN
    parser.error(f"--compile-budget must be positive seconds, not {args.compile_budget}")
  say = progress_printer(time.perf_counter())
  device = jax.devices()[0]
  platform = device.platform
  scale = tree_scale(platform, args.quick)
  specs = tree_specs(scale)
  say(f"{platform} ({report.device_kind(device)}), {scale} trees: {', '.join(args.trees)}")
  torch_skipped = "--no-torch" if args.no_torch else torch_step.unavailable(platform)
  if torch_skipped is not None:
    say(f"torch.optim.Adam skipped: {torch_skipped}")
  biggest = max(spec.size for spec in specs.values())
  bandwidths = []  # measured before each tree; other load only lowers it, so take the best
  measured = []
  for index, tree_name in enumerate(args.trees):
    spec = specs[tree_name]
    say(f"tree {index + 1}/{len(args.trees)} {tree_name}: measuring the copy bandwidth")
    bandwidths.append(timing.copy_bandwidth(max(4 * biggest, 1 << 20), max(3 * repeats, 5)))
    budget = compiles.Budget(args.compile_budget)
    results = _measure_tree(
      spec, platform, torch_skipped is None, budget, n_rounds, repeats, scan_steps, say
    )
    measured.append((spec, results, budget))
  bandwidth = max(bandwidths)
  memory_source = (
    "XLA memory_analysis of the compiled step (arguments + outputs not aliased + temporaries)"
  )
  if torch_skipped is None:
    memory_source += "; torch: " + (
      "cuda max_memory_allocated" if platform == "gpu" else "tensor bytes"
    )
  result = {
    "schema": report.SCHEMA,
    "context": report.context(platform, load_at_start),
    "quick": args.quick,
    "rounds": n_rounds,
    "repeats": repeats,
    "scan_steps": scan_steps,
    "copy_bandwidth_GBps": bandwidth / 1e9,
    "copy_bandwidth_samples_GBps": [b / 1e9 for b in bandwidths],
    "memory_source": memory_source,
    "torch_skipped": torch_skipped,
    "trees": [_tree_report(spec, results, bandwidth, budget) for spec, results, budget in measured],
  }
  if platform != "cpu":
    stats = device.memory_stats() or {}
    result["device_peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
  print(report.table(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        result, f, indent=2, allow_nan=False, default=lambda x: None if math.isnan(x) else x
      )
  if args.plot:
    report.plot(result, args.plot)
  still = sum(budget.still_compiling() for _, _, budget in measured)
  if still:
    # The interpreter would abort at exit under a thread inside XLA: end without it.
    say(f"{still} abandoned compile(s) still running: ending the process without them")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
  return 0
