r"""Round-robin timing: every method of a tree under the same load, ratios per round.

On a shared machine the load changes by the second, so methods timed one after
another in their own blocks see different machines. Here, per kind of figure,
every method of a tree is compiled (:mod:`.compiles`, within the tree's budget)
and warmed first; then each round times a few calls of every method in turn
(the order rotated by one each round, so that no method always follows the
same one). A method's time is the median of
its calls; its ratio to another method is the median over rounds of the
per-round ratio

.. math::

  \rho = \operatorname{median}_r \frac{t_r^{\text{other}}}{t_r^{\text{method}}},

with :math:`t_r` a method's median call in round :math:`r`, which cancels
drifts slower than a round.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from adam_optax.benchmarks import compiles

KINDS = ("wall", "device", "real")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Program:
  """A JAX program of one kind of figure, to be compiled before it is timed.

  Attributes:
    jitted: the ``jax.jit``-wrapped function.
    args: the arguments to compile it for.
    call: ``call(compiled, carry) -> carry``, one timed call of the compiled program.
  """

  jitted: Any
  args: tuple[Any, ...]
  call: Callable[[Any, Any], Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Contender:
  """One method on one tree, ready to be compiled and timed (keyword-only fields).

  Attributes:
    method: the method's name.
    bytes_per_step: bytes a step must read and write (params, grads, state).
    fresh: makes a first carry (each kind threads its own: they are donated).
    programs: kind of figure (:data:`KINDS`) -> the JAX program to compile and
      time; the ``device`` one makes the report's ``scan_steps`` steps. Its
      ``wall`` program's memory is the method's peak.
    calls: kind -> a call needing no compile (torch), carry to carry.
    peak_bytes: the peak memory of a method without programs (torch).
  """

  method: str
  bytes_per_step: int
  fresh: Callable[[], Any]
  programs: Mapping[str, Program] = dataclasses.field(default_factory=dict)
  calls: Mapping[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)
  peak_bytes: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Measurement:
  """What the benchmark measures of one method on one tree (keyword-only fields).

  A figure whose program was not compiled within the tree's compile budget is
  ``None`` (and its kind is missing from ``round_ms``).

  Attributes:
    method: the method's name.
    bytes_per_step: bytes a step must read and write (params, grads, state).
    wall_ms: median wall time of one dispatched step.
    device_ms: median device time per step (steps inside one ``lax.scan``).
    real_ms: median wall time of a step that also makes the gradients.
    peak_bytes: peak memory of the step (see ``memory_source`` in the report).
    compile: kind -> its program's :class:`~.compiles.CompileTime` as a dict
      (empty for torch, which compiles nothing).
    round_ms: kind -> the method's median milliseconds per step in each round.
  """

  method: str
  bytes_per_step: int
  wall_ms: float | None
  device_ms: float | None
  real_ms: float | None
  peak_bytes: int | None
  compile: dict[str, dict[str, Any]]
  round_ms: dict[str, list[float]]


def round_robin(
  calls: Mapping[str, Callable[[Any], Any]],
  carries: Mapping[str, Any],
  rounds: int,
  repeats: int,
  warmup: int = 2,
  clock: Callable[[], float] = time.perf_counter,
  on_round: Callable[[int], None] | None = None,
) -> dict[str, list[list[float]]]:
  """Times ``carry = call(carry)`` of every method in turn, round after round.

  All methods are warmed up first (compilation, first touch of new buffers).
  Round ``r`` then times ``repeats`` calls of each method, starting at the
  ``r``-th method. Each call is waited for (``jax.block_until_ready``) and
  threads its own method's carry, so donated buffers stay live.

  Args:
    calls: method -> one call, taking and returning its carry.
    carries: method -> its first carry.
    rounds: the number of rounds.
    repeats: timed calls of each method per round.
    warmup: untimed calls of each method before the first round.
    clock: the timer, in seconds.
    on_round: called with ``r`` before round ``r`` (e.g. to report progress).

  Returns:
    method -> per round, the seconds of each of its timed calls.
  """
  carries = dict(carries)
  names = list(calls)
  for name in names:
    for _ in range(warmup):
      carries[name] = jax.block_until_ready(calls[name](carries[name]))
  seconds: dict[str, list[list[float]]] = {name: [] for name in names}
  for r in range(rounds):
    if on_round is not None:
      on_round(r)
    shift = r % max(len(names), 1)
    for name in names[shift:] + names[:shift]:
      samples = []
      for _ in range(repeats):
        start = clock()
        carries[name] = jax.block_until_ready(calls[name](carries[name]))
        samples.append(clock() - start)
      seconds[name].append(samples)
  return seconds


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
  """The median over rounds of ``numerator[r] / denominator[r]``.

  Examples:
    >>> median_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0])
    3.0
  """
  return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


def compile_order(contenders: Sequence[Contender], baseline: str) -> list[Contender]:
  """The order in which a tree's programs are compiled, so a spent budget drops the least.

  First the methods whose step takes one buffer per dtype (the fast path:
  their step compiles in a fraction of a second whatever the tree), then
  ``baseline`` (every ratio needs it), then the rest in the table's order.
  """
  flat = [c for c in contenders if c.method.startswith("ao fast path")]
  first = [*flat, *(c for c in contenders if c.method == baseline and c not in flat)]
  return first + [c for c in contenders if c not in first]


def _compile_kind(
  kind: str,
  contenders: Sequence[Contender],
  budget: compiles.Budget,
  baseline: str,
  say: Callable[[str], None],
) -> tuple[dict[str, Callable[[Any], Any]], dict[str, compiles.CompileTime], dict[str, Any]]:
  """Compiles the ``kind`` programs within ``budget``: (ready calls, compile times, compiled)."""
  calls = {c.method: c.calls[kind] for c in contenders if kind in c.calls}
  times, compiled_programs = {}, {}
  for c in compile_order(contenders, baseline):
    if kind not in c.programs:
      continue
    program = c.programs[kind]
    if not budget.exhausted:
      say(f"compiling the {kind} program of {c.method}")
    compiled, times[c.method] = budget.compile(program.jitted, program.args)
    if times[c.method].outcome != compiles.SKIPPED:
      say(f"{kind} program of {c.method}: {_described(times[c.method])}")
    if compiled is not None:
      calls[c.method] = functools.partial(program.call, compiled)
      compiled_programs[c.method] = compiled
  return calls, times, compiled_programs


def _described(took: compiles.CompileTime) -> str:
  """A compiled or abandoned program: ``compiled in 3.20 s (trace 0.41, ...)``, or why not."""
  if took.outcome == compiles.COMPILED:
    return (
      f"compiled in {took.seconds:.2f} s (trace {took.trace_s:.2f}, lower {took.lower_s:.2f}, "
      f"XLA {took.xla_s:.2f})"
    )
  return (
    f"still compiling after {took.seconds:.1f} s: abandoned; the tree's compile budget is "
    "spent, its later programs are not compiled"
  )


def measure(
  contenders: Sequence[Contender],
  budget: compiles.Budget,
  rounds: int,
  repeats: int,
  scan_steps: int,
  baseline: str,
  say: Callable[[str], None] = lambda _: None,
) -> list[Measurement]:
  """Compiles and times every contender round-robin, one kind of figure after another.

  Per kind: its programs are compiled within ``budget`` (in
  :func:`compile_order`), then every method with a call of that kind is timed:
  ``wall`` and ``real`` ``repeats`` calls per round, ``device`` one call
  (already ``scan_steps`` steps) per round. Only one kind's carries are alive
  at a time. ``say`` gets a line per compile and per round.
  """
  steps = {"wall": 1, "device": scan_steps, "real": 1}
  per_round = {"wall": repeats, "device": 1, "real": repeats}
  by_name = {c.method: c for c in contenders}
  times: dict[str, dict[str, Any]] = {c.method: {} for c in contenders}
  peaks = {c.method: c.peak_bytes for c in contenders}
  calls_ms: dict[str, dict[str, list[list[float]]]] = {c.method: {} for c in contenders}
  for kind in KINDS:
    calls, took, compiled = _compile_kind(kind, contenders, budget, baseline, say)
    for name, compile_time in took.items():
      times[name][kind] = dataclasses.asdict(compile_time)
    if kind == "wall":
      peaks |= {name: compiles.step_memory_bytes(c) for name, c in compiled.items()}
    order = [c.method for c in contenders if c.method in calls]  # the table's order
    seconds = round_robin(
      {name: calls[name] for name in order},
      {name: by_name[name].fresh() for name in order},
      rounds,
      per_round[kind],
      on_round=lambda r, kind=kind: say(f"timing {kind}, round {r + 1}/{rounds}"),
    )
    for name, per_method in seconds.items():
      calls_ms[name][kind] = [[t * 1e3 / steps[kind] for t in s] for s in per_method]
  results = []
  for c in contenders:
    timed = calls_ms[c.method]  # kind -> per round, the ms per step of each call
    median_ms = {kind: statistics.median(t for s in rs for t in s) for kind, rs in timed.items()}
    results.append(
      Measurement(
        method=c.method,
        bytes_per_step=c.bytes_per_step,
        wall_ms=median_ms.get("wall"),
        device_ms=median_ms.get("device"),
        real_ms=median_ms.get("real"),
        peak_bytes=peaks[c.method],
        compile=times[c.method],
        round_ms={kind: [statistics.median(s) for s in rs] for kind, rs in timed.items()},
      )
    )
  return results
