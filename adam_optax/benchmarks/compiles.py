"""Compiling the benchmark's programs: each phase timed, and a budget of seconds per tree.

A jitted step reaches the device in three phases, timed apart because they
grow for different reasons: **trace** (Python runs the step once on abstract
values: per-leaf Python work, ours and optax's), **lower** (the traced program
becomes StableHLO) and **compile** (XLA optimizes it and emits machine code: on
a GPU one kernel per fusion, each through LLVM and ptxas, which is what takes
minutes on thousands of leaves).

A tree's compiles share a budget. A compile starts only while some of the
budget is left, and is waited for only as long as the budget lasts; one that
outlasts it is *abandoned*: it runs on in a background thread (XLA cannot be
interrupted), its time is reported as a lower bound, and the tree's later
compiles are skipped. The figures of what was compiled are still taken, so a
slow tree reports its compile times instead of holding up the whole run.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

COMPILED, ABANDONED, SKIPPED = "compiled", "abandoned", "skipped"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompileTime:
  """How the compile of one program went (keyword-only fields).

  Attributes:
    outcome: ``"compiled"``, ``"abandoned"`` (still compiling when the budget
      ran out) or ``"skipped"`` (not started: the budget was spent).
    seconds: the wall time waited for it: its total when compiled, a lower
      bound when abandoned, 0 when skipped.
    trace_s: seconds to trace (``None`` unless compiled).
    lower_s: seconds to lower to StableHLO (``None`` unless compiled).
    xla_s: seconds for XLA to compile (``None`` unless compiled).
  """

  outcome: str
  seconds: float
  trace_s: float | None = None
  lower_s: float | None = None
  xla_s: float | None = None


def _phases(jitted: Any, args: tuple[Any, ...], into: dict[str, Any]) -> None:
  """Traces, lowers and compiles ``jitted`` for ``args``, timing each phase into ``into``.

  What it raises is kept in ``into["error"]``, for the caller's thread to raise.
  """
  try:
    start = time.perf_counter()
    traced = jitted.trace(*args)
    into["trace_s"] = time.perf_counter() - start
    start = time.perf_counter()
    lowered = traced.lower()
    into["lower_s"] = time.perf_counter() - start
    start = time.perf_counter()
    into["compiled"] = lowered.compile()
    into["xla_s"] = time.perf_counter() - start
  except BaseException as error:  # re-raised in the caller's thread
    into["error"] = error


class Budget:
  """The compile budget of one tree: ``seconds`` of compiling in all (``None``: no limit).

  Compiles run in a worker thread only under a limit (so that the wait can
  end); without one, in the caller's thread. Threads of abandoned compiles are
  kept in :attr:`abandoned`: a process that still has one running when it ends
  must end with ``os._exit``, or the interpreter aborts under XLA's feet.
  """

  def __init__(self, seconds: float | None) -> None:
    self.seconds = seconds
    self.spent = 0.0
    self.exhausted = False
    self.abandoned: list[threading.Thread] = []

  def compile(self, jitted: Any, args: tuple[Any, ...]) -> tuple[Any | None, CompileTime]:
    """Compiles ``jitted`` for ``args`` if the budget allows: (compiled or ``None``, its time)."""
    if self.exhausted or (self.seconds is not None and self.spent >= self.seconds):
      self.exhausted = True
      return None, CompileTime(outcome=SKIPPED, seconds=0.0)
    found: dict[str, Any] = {}
    start = time.perf_counter()
    if self.seconds is None:
      _phases(jitted, args, found)
    else:
      worker = threading.Thread(target=_phases, args=(jitted, args, found), daemon=True)
      worker.start()
      worker.join(self.seconds - self.spent)
      if worker.is_alive():
        self.abandoned.append(worker)
        self.exhausted = True
    waited = time.perf_counter() - start
    self.spent += waited
    if self.exhausted:
      return None, CompileTime(outcome=ABANDONED, seconds=waited)
    if "error" in found:
      raise found["error"]
    phases = {k: found[k] for k in ("trace_s", "lower_s", "xla_s")}
    return found["compiled"], CompileTime(outcome=COMPILED, seconds=sum(phases.values()), **phases)

  def still_compiling(self) -> int:
    """How many abandoned compiles are still running."""
    return sum(worker.is_alive() for worker in self.abandoned)


def step_memory_bytes(compiled: Any) -> int:
  """Peak bytes of one compiled call by XLA's own accounting.

  Arguments, plus outputs that do not reuse a donated argument, plus
  temporaries: with donation this is params + grads + state and whatever
  else the step allocates.
  """
  stats = compiled.memory_analysis()
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    - stats.alias_size_in_bytes
    + stats.temp_size_in_bytes
  )
