r"""Round-robin timing: every method of a tree under the same load, ratios per round.

On a shared machine the load changes by the second, so methods timed one after
another in their own blocks see different machines. Here every method of a
tree is compiled and warmed first; then, per kind of figure, each round times
a few calls of every method in turn (the order rotated by one each round, so
that no method always follows the same one). A method's time is the median of
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

KINDS = ("wall", "device", "real")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Contender:
  """One method on one tree, compiled and ready to be timed.

  Built by keyword (its fields are keyword-only).

  Attributes:
    method: the method's name.
    bytes_per_step: bytes a step must read and write (params, grads, state).
    peak_bytes: peak memory of the step (see ``memory_source`` in the report).
    compile_s: seconds to compile the dispatched step (``None``: not compiled).
    real_compile_s: seconds to compile the real training step.
    calls: kind of figure (:data:`KINDS`) -> one call, carry to carry; the
      ``device`` call makes the report's ``scan_steps`` steps.
    fresh: makes a first carry (each kind threads its own: they are donated).
  """

  method: str
  bytes_per_step: int
  peak_bytes: int
  compile_s: float | None
  real_compile_s: float | None
  calls: Mapping[str, Callable[[Any], Any]]
  fresh: Callable[[], Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Measurement:
  """What the benchmark measures of one method on one tree (keyword-only fields).

  Attributes:
    method: the method's name.
    bytes_per_step: bytes a step must read and write (params, grads, state).
    wall_ms: median wall time of one dispatched step.
    device_ms: median device time per step (steps inside one ``lax.scan``).
    real_ms: median wall time of a step that also makes the gradients.
    peak_bytes: peak memory of the step (see ``memory_source`` in the report).
    compile_s: seconds to compile the dispatched step (``None``: not compiled).
    real_compile_s: seconds to compile the real training step.
    round_ms: kind -> the method's median milliseconds per step in each round.
  """

  method: str
  bytes_per_step: int
  wall_ms: float
  device_ms: float
  real_ms: float
  peak_bytes: int
  compile_s: float | None
  real_compile_s: float | None
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
    shift = r % len(names)
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


def measure(
  contenders: Sequence[Contender],
  rounds: int,
  repeats: int,
  scan_steps: int,
  on_round: Callable[[str, int], None] | None = None,
) -> list[Measurement]:
  """Times every contender round-robin, one kind of figure after another.

  ``wall`` and ``real`` time ``repeats`` calls per round, ``device`` one call
  (already ``scan_steps`` steps) per round. Only one kind's carries are alive
  at a time. ``on_round(kind, r)`` is called before round ``r`` of each kind.
  """
  steps = {"wall": 1, "device": scan_steps, "real": 1}
  per_round = {"wall": repeats, "device": 1, "real": repeats}
  ms: dict[str, dict[str, list[list[float]]]] = {}
  for kind in KINDS:
    seconds = round_robin(
      {c.method: c.calls[kind] for c in contenders},
      {c.method: c.fresh() for c in contenders},
      rounds,
      per_round[kind],
      on_round=None if on_round is None else functools.partial(on_round, kind),
    )
    ms[kind] = {
      name: [[s * 1e3 / steps[kind] for s in samples] for samples in per_method]
      for name, per_method in seconds.items()
    }
  results = []
  for c in contenders:
    calls = {kind: ms[kind][c.method] for kind in KINDS}
    median_ms = {
      kind: statistics.median(t for samples in calls[kind] for t in samples) for kind in KINDS
    }
    results.append(
      Measurement(
        method=c.method,
        bytes_per_step=c.bytes_per_step,
        wall_ms=median_ms["wall"],
        device_ms=median_ms["device"],
        real_ms=median_ms["real"],
        peak_bytes=c.peak_bytes,
        compile_s=c.compile_s,
        real_compile_s=c.real_compile_s,
        round_ms={kind: [statistics.median(samples) for samples in calls[kind]] for kind in KINDS},
      )
    )
  return results
