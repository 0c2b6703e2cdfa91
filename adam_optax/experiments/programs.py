"""The programs of ``adam-optax compare``: what the flags ask to train, and what follows.

A :class:`Program` is one problem, one optimizer and its grid of seeds x
hyper-parameters, compiled and trained as one (see
:mod:`~adam_optax.experiments.train`). :func:`plan` makes them from the flags;
:func:`widened` makes the one that extends a grid whose best learning rate
sits at an edge; :func:`differences` lists what a run still does otherwise
than the paper, :func:`bases` what each verdict rests on, and :func:`storage`
how each optimizer stored its state.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import adam_optax as ao
from adam_optax.experiments import claims, data, diagnostics, optimizers, report, train, verdicts
from adam_optax.experiments.problems import PROBLEMS, Problem

DEFAULT_SEEDS = 3
# --quick: a smoke run of every problem on the digits (Adam only, and the VAE study).
QUICK_STEPS = 30
QUICK_SEEDS = 2
QUICK_OPTIMIZERS = ("adam",)
WIDENINGS = 2
WIDEN_POINTS = 2
STATES = {"float32": None, "8bit": 8, "4bit": 4}


@dataclasses.dataclass(frozen=True)
class Program:
  """One compiled program: a problem, an optimizer and its grid of runs.

  Attributes:
    problem: the problem, bound to its data.
    optimizer: the optimizer (its factory instrumented if ``watched``).
    grid: the runs.
    steps: training steps per run.
    watched: whether it records diagnostics and evaluates averaged parameters.
    states: how the optimizer stores its state: ``--states`` for the Adam
      family, ``"float32"`` for the others (their own states).
    widenings: how many more times its learning-rate grid may be widened.
  """

  problem: Problem
  optimizer: optimizers.Optimizer
  grid: train.Grid
  steps: int
  watched: bool = False
  states: str = "float32"
  widenings: int = 0

  def train(self, dataset: data.Dataset, on_chunk: Any) -> list[report.Record]:
    """Trains the grid; returns one record per run."""
    metrics = diagnostics.METRICS if self.watched else train.DEFAULT_METRICS
    result = train.train(
      self.problem,
      self.optimizer.factory,
      self.grid,
      dataset,
      self.steps,
      metrics=metrics,
      evaluations=diagnostics.EVALUATIONS if self.watched else {},
      on_chunk=on_chunk,
    )
    fields = {"diagnostics": self.watched, "states": self.states}
    return report.records(
      self.problem.name, self.optimizer.name, self.grid, self.steps, result, **fields
    )


def stored(optimizer: optimizers.Optimizer, states: str) -> optimizers.Optimizer:
  """``optimizer`` with its moments stored as ``--states`` asks (Adam family only)."""
  bits = STATES[states]
  if bits is None or not optimizer.stores_moments:
    return optimizer
  quantized = ao.Quantized(bits)
  factory = functools.partial(optimizer.factory, mu_dtype=quantized, nu_dtype=quantized)
  return dataclasses.replace(optimizer, factory=factory)


def make_program(
  args: argparse.Namespace,
  problem: Problem,
  optimizer: optimizers.Optimizer,
  steps: int,
  **axes: Sequence[float],
) -> Program:
  """One program; with ``--diagnostics``, an Adam-family one records and averages."""
  count = args.seeds or (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
  seeds = range(args.seed_offset, args.seed_offset + count)
  states = args.states if optimizer.stores_moments else "float32"
  optimizer = stored(optimizer, args.states)
  widenings = 0 if args.quick else WIDENINGS
  if not (args.diagnostics and optimizer.records_diagnostics):
    grid = train.make_grid(seeds, **axes)
    return Program(problem, optimizer, grid, steps, states=states, widenings=widenings)
  grid = train.make_grid(seeds, **axes, average_beta=(diagnostics.average_beta(args),))
  instrumented = diagnostics.instrument(optimizer)
  return Program(problem, instrumented, grid, steps, True, states, widenings)


def plan(args: argparse.Namespace, datasets: dict[str, data.Dataset]) -> list[Program]:
  """The programs that the flags ask for, in order."""
  programs = []
  for problem in (PROBLEMS[name] for name in args.problems):
    dataset = datasets[problem.name]
    problem = problem.bind(dataset.input_shape, dataset.classes, paper_scale=args.paper_scale)
    default_steps = problem.default_steps(len(dataset.y_train))
    steps = args.steps or (QUICK_STEPS if args.quick else default_steps)
    if problem.study == "bias_correction":
      for variant in optimizers.BIAS_CORRECTION_VARIANTS.values():
        programs.append(
          make_program(
            args,
            problem,
            variant,
            steps,
            learning_rate=optimizers.BIAS_CORRECTION_LEARNING_RATES,
            b1=optimizers.BIAS_CORRECTION_B1,
            b2=optimizers.BIAS_CORRECTION_B2,
          )
        )
      continue
    names = args.optimizers or (QUICK_OPTIMIZERS if args.quick else problem.optimizers)
    for name in names:
      optimizer = optimizers.OPTIMIZERS[name]
      programs.append(
        make_program(args, problem, optimizer, steps, learning_rate=optimizer.learning_rates)
      )
  return programs


def widened(program: Program, records: list[report.Record]) -> Program | None:
  """The program of the learning rates beyond the grid's edge, if a best sits there.

  A best for any statistic the problem's verdicts read
  (:func:`~adam_optax.experiments.claims.selecting`), of any setting of the
  program (each ``b1, b2`` of the bias-correction study); the other
  hyper-parameters keep their values.
  """
  if program.widenings == 0:
    return None
  extra: set[float] = set()
  for statistic in claims.selecting(program.problem.name):
    for summary in report.summarize(records, statistic):
      best = summary.record["learning_rate"]
      extra.update(optimizers.widen(summary.learning_rates, best, WIDEN_POINTS))
  if not extra:
    return None
  hyperparams = {
    name: sorted(extra) if name == "learning_rate" else sorted(set(values.tolist()))
    for name, values in program.grid.hyperparams.items()
  }
  seeds = sorted(set(program.grid.seeds.tolist()))
  grid = train.make_grid(seeds, **hyperparams)
  return dataclasses.replace(program, grid=grid, widenings=program.widenings - 1)


def differences(programs: list[Program], datasets: dict[str, data.Dataset]) -> dict[str, list[str]]:
  """Per problem: its data, and every remaining difference from the paper's experiment."""
  out: dict[str, list[str]] = {}
  for program in programs:
    problem = program.problem
    if problem.name in out:
      continue
    dataset = datasets[problem.name]
    lrs = len(set(program.grid.hyperparams["learning_rate"].tolist()))
    seeds = len(set(program.grid.seeds.tolist()))
    items = [f"data: {dataset.source}"]
    items += problem.differences(program.steps, len(dataset.y_train))
    items.append(
      f"learning rates: {lrs} log-spaced points per setting"
      + (", widened at an edge" if program.widenings else "")
      + f" (the paper: a dense search); {report.plural('seed', seeds)}"
    )
    out[problem.name] = items
  return out


def bases(programs: list[Program], datasets: dict[str, data.Dataset]) -> dict[str, verdicts.Basis]:
  """Per problem: what its verdict rests on (its data, whether synthetic, its epochs)."""
  out = {}
  for program in programs:
    problem = program.problem
    dataset = datasets[problem.name]
    epochs = program.steps * problem.batch_size / len(dataset.y_train)
    basis = verdicts.Basis(dataset.source, dataset.synthetic, epochs, problem.paper_epochs)
    out.setdefault(problem.name, basis)
  return out


def storage(all_records: list[report.Record]) -> str:
  """How each optimizer stored its state, as a sentence of ``results.md``.

  Examples:
    >>> storage([{"optimizer": "adam", "states": "8bit"},
    ...          {"optimizer": "sgd_nesterov", "states": "float32"}])
    'Optimizer states: 8-bit blocks (ao.Quantized(8)) for adam; float32 for sgd_nesterov.'
  """
  by_states: dict[str, list[str]] = {}
  for record in all_records:
    names = by_states.setdefault(record["states"], [])
    if record["optimizer"] not in names:
      names.append(record["optimizer"])
  listed = []
  for states, names in by_states.items():
    bits = STATES[states]
    what = f"{bits}-bit blocks (ao.Quantized({bits}))" if bits else "float32"
    listed.append(f"{what} for {', '.join(names)}")
  return f"Optimizer states: {'; '.join(listed)}."
