"""The programs of ``adam-optax compare``: what the flags ask to train, and what follows.

A :class:`Program` is one problem, one optimizer and its grid of seeds x
hyper-parameters, compiled and trained as one (see
:mod:`~adam_optax.experiments.train`). :func:`plan` makes them from the flags;
:func:`widened` makes the one that extends a grid whose best learning rate
sits at an edge; :func:`differences` lists what a run still does otherwise
than the paper.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import adam_optax as ao
from adam_optax.experiments import data, diagnostics, optimizers, report, train
from adam_optax.experiments.problems import PROBLEMS, Problem

DEFAULT_SEEDS = 2
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
    states: the ``--states`` of the records.
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
  seeds = range(args.seeds or (QUICK_SEEDS if args.quick else DEFAULT_SEEDS))
  optimizer = stored(optimizer, args.states)
  widenings = WIDENINGS if problem.study == "optimizers" and not args.quick else 0
  if not (args.diagnostics and optimizer.records_diagnostics):
    grid = train.make_grid(seeds, **axes)
    return Program(problem, optimizer, grid, steps, states=args.states, widenings=widenings)
  grid = train.make_grid(seeds, **axes, average_beta=(diagnostics.average_beta(args),))
  instrumented = diagnostics.instrument(optimizer)
  return Program(problem, instrumented, grid, steps, True, args.states, widenings)


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
  """The program of the learning rates beyond the grid's edge, if the best sits there."""
  if program.widenings == 0:
    return None
  (summary,) = report.summarize(records)
  extra = optimizers.widen(summary.learning_rates, summary.record["learning_rate"], WIDEN_POINTS)
  if not extra:
    return None
  hyperparams = {"learning_rate": extra}
  if program.watched:
    hyperparams["average_beta"] = (float(program.grid.hyperparams["average_beta"][0]),)
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
