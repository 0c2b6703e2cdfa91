"""The progress bar of ``adam-optax compare``: the programs training, and a meaningful ETA.

The work of a program is its floating-point operations (runs x steps x one
run's step, counted by XLA, :func:`~adam_optax.experiments.train.step_flops`)
plus a fixed :data:`PROGRAM_OVERHEAD` for its tracing and compilation, which
dominates the cheap problems; the ETA extrapolates the average rate of the
whole run so far (no smoothing), so a program that compiles does not make it
jump.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from tqdm import tqdm

from adam_optax.experiments import data, train

# The compilation of one program, in GFLOP of training it is worth (about 5 s of
# compiling against about 15 GFLOP/s of training on 2 shared CPU cores).
PROGRAM_OVERHEAD = 75.0


class Progress:
  """A progress bar in units of work, naming the programs being trained.

  Args:
    datasets: the data of each problem, by name (to count a step's operations).
  """

  def __init__(self, datasets: dict[str, data.Dataset]) -> None:
    self.datasets = datasets
    self.flops: dict[str, float] = {}
    self.running: dict[int, str] = {}
    self.started: set[int] = set()
    self.lock = threading.Lock()
    self.bar = tqdm(
      total=0.0,
      file=sys.stderr,
      dynamic_ncols=True,
      smoothing=0.0,
      bar_format="{l_bar}{bar}| [{elapsed}<{remaining}]",
    )

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.bar.close()

  def _training(self, program: Any) -> float:
    """The program's training work in GFLOP: runs x steps x one run's step."""
    name = program.problem.name
    if name not in self.flops:
      self.flops[name] = train.step_flops(program.problem, self.datasets[name])
    return program.grid.size * program.steps * self.flops[name] / 1e9

  def add(self, program: Any) -> None:
    """Counts the work of ``program`` (a ``programs.Program``) in the total."""
    with self.lock:
      self.bar.total += self._training(program) + PROGRAM_OVERHEAD
      self.bar.refresh()

  def start(self, key: int, program: Any) -> None:
    """Names ``program`` in the bar while it trains."""
    with self.lock:
      self.running[key] = f"{program.problem.name}/{program.optimizer.name}"
      self.bar.set_description(", ".join(self.running.values()), refresh=True)

  def finish(self, key: int) -> None:
    """Stops naming the program ``key``."""
    with self.lock:
      self.running.pop(key, None)
      self.bar.set_description(", ".join(self.running.values()), refresh=True)

  def advance(self, key: int, program: Any, steps: int) -> None:
    """Adds ``steps`` steps of ``program``'s runs (and its compilation, after its first chunk)."""
    with self.lock:
      work = self._training(program) * steps / program.steps
      if key not in self.started:
        self.started.add(key)
        work += PROGRAM_OVERHEAD
      self.bar.update(min(work, self.bar.total - self.bar.n))  # never past the total
