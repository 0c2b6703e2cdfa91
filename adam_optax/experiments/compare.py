"""``adam-optax compare``: the paper's optimizer comparison on the bundled digits.

For each problem and optimizer, every seed and learning rate of the sweep is
trained at once (one vmapped, jit-compiled program, see
:mod:`~adam_optax.experiments.train`); the best learning rate (lowest mean
final training loss) is kept, as in the paper's figures. The VAE runs the
bias-correction study of figure 4 instead: Adam with and without bias
correction over b1, b2 and the step size.

Writes ``DIR/results.json`` (one record per run), ``DIR/results.md`` (mean ±
std over seeds at the best learning rate) and ``DIR/<problem>.png``, all
renamed into place only once everything is done; prints the summary table.
With ``--diagnostics`` the Adam-family runs also record the signal-to-noise
ratio and the step size against its bounds at every step, and evaluate the
moving average of their parameters
(:mod:`~adam_optax.experiments.diagnostics`): ``results.md`` gets two more
tables and each problem a ``DIR/<problem>_diagnostics.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from tqdm import tqdm

from adam_optax.experiments import data, diagnostics, optimizers, plots, report, train
from adam_optax.experiments.problems import PROBLEMS, Problem

DEFAULT_SEEDS = 3
DEFAULT_OUT = Path("runs/compare")
# --quick: a smoke run of every problem (Adam only, and the VAE study), in seconds.
QUICK_STEPS = 30
QUICK_SEEDS = 2
QUICK_OPTIMIZERS = ("adam",)
# Programs trained at once: one compiles while the other trains (2 CPU cores).
WORKERS = 2


def _names(registry: Mapping[str, Any], kind: str) -> Callable[[str], list[str]]:
  """An argparse type: a comma-separated list of names from ``registry``."""

  def parse(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in registry]
    if unknown or not names:
      raise argparse.ArgumentTypeError(
        f"unknown {kind} {', '.join(map(repr, unknown)) or repr(text)}; "
        f"choose from {','.join(registry)}"
      )
    return list(dict.fromkeys(names))

  return parse


def _positive_int(text: str) -> int:
  """An argparse type: an integer >= 1."""
  try:
    value = int(text)
  except ValueError:
    value = None
  if value is None or value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def _one_line_error(parser: argparse.ArgumentParser) -> Callable[[str], NoReturn]:
  """``parser.error`` without the usage lines: one line on stderr, exit code 2."""

  def error(message: str) -> NoReturn:
    parser.exit(2, f"{parser.prog}: error: {message}\n")

  return error


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Declares the flags of ``adam-optax compare``; its errors are one line."""
  parser.error = _one_line_error(parser)  # type: ignore[method-assign]
  steps = ", ".join(f"{p.name} {p.steps}" for p in PROBLEMS.values())
  parser.add_argument(
    "--problems",
    type=_names(PROBLEMS, "problem"),
    default=list(PROBLEMS),
    help=f"comma-separated problems (default: all of {','.join(PROBLEMS)})",
  )
  parser.add_argument(
    "--optimizers",
    type=_names(optimizers.OPTIMIZERS, "optimizer"),
    default=None,
    help=(
      f"comma-separated optimizers for logreg, mlp and cnn (default: all of "
      f"{','.join(optimizers.OPTIMIZERS)}; with --quick: {','.join(QUICK_OPTIMIZERS)}); "
      "vae always compares Adam with and without bias correction"
    ),
  )
  parser.add_argument(
    "--steps",
    type=_positive_int,
    default=None,
    help=f"training steps per run (default: {steps}; with --quick: {QUICK_STEPS})",
  )
  parser.add_argument(
    "--seeds",
    type=_positive_int,
    default=None,
    help=f"number of seeds, 0..N-1 (default: {DEFAULT_SEEDS}; with --quick: {QUICK_SEEDS})",
  )
  parser.add_argument(
    "--out",
    type=Path,
    default=DEFAULT_OUT,
    metavar="DIR",
    help=f"output directory (default: {DEFAULT_OUT})",
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help="a smoke run: fewer steps, seeds and optimizers (explicit flags still win)",
  )
  diagnostics.add_arguments(parser)


@dataclasses.dataclass(frozen=True)
class Program:
  """One compiled program: a problem, an optimizer and its grid of runs."""

  problem: Problem
  optimizer: optimizers.Optimizer
  grid: train.Grid
  steps: int
  metrics: Mapping[str, train.MetricFn] = dataclasses.field(
    default_factory=lambda: train.DEFAULT_METRICS
  )
  evaluations: Mapping[str, train.ParamsFn] = dataclasses.field(default_factory=dict)


def _program(
  args: argparse.Namespace,
  problem: Problem,
  optimizer: optimizers.Optimizer,
  steps: int,
  **axes: Sequence[float],
) -> Program:
  """One program; with ``--diagnostics``, an Adam-family one records and averages."""
  seeds = range(args.seeds or (QUICK_SEEDS if args.quick else DEFAULT_SEEDS))
  if not (args.diagnostics and optimizer.records_diagnostics):
    return Program(problem, optimizer, train.make_grid(seeds, **axes), steps)
  beta = diagnostics.average_beta(args)
  return Program(
    problem,
    diagnostics.instrument(optimizer),
    train.make_grid(seeds, **axes, average_beta=(beta,)),
    steps,
    diagnostics.METRICS,
    diagnostics.EVALUATIONS,
  )


def plan(args: argparse.Namespace) -> list[Program]:
  """The programs that the flags ask for, in order."""
  names = args.optimizers or (list(QUICK_OPTIMIZERS) if args.quick else list(optimizers.OPTIMIZERS))
  programs = []
  for problem in (PROBLEMS[name] for name in args.problems):
    steps = args.steps or (QUICK_STEPS if args.quick else problem.steps)
    if problem.study == "bias_correction":
      for variant in optimizers.BIAS_CORRECTION_VARIANTS.values():
        programs.append(
          _program(
            args,
            problem,
            variant,
            steps,
            learning_rate=variant.learning_rates,
            b1=optimizers.BIAS_CORRECTION_B1,
            b2=optimizers.BIAS_CORRECTION_B2,
          )
        )
    else:
      for name in names:
        optimizer = optimizers.OPTIMIZERS[name]
        programs.append(
          _program(args, problem, optimizer, steps, learning_rate=optimizer.learning_rates)
        )
  return programs


def _check_writable(out: Path, parser: argparse.ArgumentParser) -> None:
  """Creates ``out`` and writes a probe file there, or exits with a one-line error."""
  try:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out):
      pass
  except OSError as error:
    parser.error(f"cannot write to --out {str(out)!r}: {error.strerror or error}")


def _markdown(summaries: list[report.Summary]) -> str:
  """The ``results.md`` text: the summary tables, then any diagnostics section."""
  section = diagnostics.markdown(summaries)
  return report.markdown(summaries) + (f"\n{section}" if section else "")


def _writers(
  all_records: list[report.Record], summaries: list[report.Summary]
) -> dict[str, report.Writer]:
  """The output files: results.json, results.md, one PNG per problem and any diagnostics PNGs."""
  writers: dict[str, report.Writer] = {
    "results.json": lambda path: path.write_text(
      json.dumps(all_records, indent=1, allow_nan=False) + "\n"
    ),
    "results.md": lambda path: path.write_text(_markdown(summaries)),
  }
  for name in dict.fromkeys(r["problem"] for r in all_records):
    problem = PROBLEMS[name]
    if problem.study == "bias_correction":
      own = [r for r in all_records if r["problem"] == name]
      figure = plots.bias_correction_figure(problem.title, own)
    else:
      figure = plots.curves_figure(
        problem.title, [s for s in summaries if s.record["problem"] == name]
      )
    writers[f"{name}.png"] = functools.partial(plots.save_png, figure)
    watched = diagnostics.watched([s for s in summaries if s.record["problem"] == name])
    if watched:
      figure = plots.diagnostics_figure(problem.title, diagnostics.figure_settings(watched))
      writers[f"{name}_diagnostics.png"] = functools.partial(plots.save_png, figure)
  return writers


def train_all(
  programs: list[Program], digits: data.Digits, *, workers: int = WORKERS
) -> list[report.Record]:
  """Trains the programs, ``workers`` at a time, with a progress bar; returns their records.

  Each worker thread traces, compiles and runs whole programs; XLA compiles
  and runs with the GIL released, so one program compiles while another
  trains. The records come back in the order of ``programs`` whatever the
  order in which they finish. On an exception (a ``KeyboardInterrupt``
  included) the programs not started are cancelled, the running ones stop
  after their current chunk, and the exception propagates.
  """
  stop = threading.Event()
  total = sum(train.chunk_count(p.steps, train.DEFAULT_CHUNKS) for p in programs)
  with (
    tqdm(total=total, unit="chunk", file=sys.stderr, dynamic_ncols=True) as bar,
    concurrent.futures.ThreadPoolExecutor(workers) as pool,
  ):

    def advance() -> None:
      if stop.is_set():
        raise KeyboardInterrupt
      bar.update(1)

    def one(program: Program) -> list[report.Record]:
      if stop.is_set():
        raise KeyboardInterrupt
      bar.set_description(f"{program.problem.name}/{program.optimizer.name}", refresh=False)
      result = train.train(
        program.problem,
        program.optimizer.factory,
        program.grid,
        digits,
        program.steps,
        metrics=program.metrics,
        evaluations=program.evaluations,
        on_chunk=advance,
      )
      name = program.optimizer.name
      return report.records(program.problem.name, name, program.grid, program.steps, result)

    futures = [pool.submit(one, program) for program in programs]
    try:
      return [record for future in futures for record in future.result()]
    except BaseException:
      stop.set()
      for future in futures:
        future.cancel()
      raise


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
  """Runs the comparison; returns 0, or 130 when interrupted (nothing written)."""
  programs = plan(args)
  error = diagnostics.flag_error(args, {p.problem.name for p in programs if p.evaluations})
  if error:
    parser.error(error)
  _check_writable(args.out, parser)
  digits = data.load_digits()
  started = time.perf_counter()
  try:
    all_records = train_all(programs, digits)
    summaries = report.summarize(all_records)
    writers = _writers(all_records, summaries)
    report.write_atomically(args.out, writers)
  except KeyboardInterrupt:
    print(f"adam-optax compare: interrupted; nothing written to {args.out}", file=sys.stderr)
    return 130
  print(_markdown(summaries))
  elapsed = time.perf_counter() - started
  print(f"{len(all_records)} runs in {elapsed:.0f} s; wrote {', '.join(writers)} to {args.out}")
  return 0
