"""Figure 4's step sizes, one by one: which diverge, and which are unstable without correction.

The paper's figure 4 draws the loss against the step size, with and without
bias correction; its point is that without correction, with β2 close to 1,
the larger step sizes become unstable. A best-step-size comparison cannot see
that, so these two parts of the claim
(:data:`~adam_optax.experiments.claims.CLAIMS`) count step sizes across the
whole sweep instead. A run *diverged* when a whole-training-set loss it
recorded (after the first tenth of the steps, or at the end) is not finite.
A step size is *unstable* without bias correction, on one seed, when that run
diverged while Adam with correction (same step size, ``b1``, ``b2`` and seed)
did not, or when either of its two losses is more than
:data:`~adam_optax.experiments.claims.INSTABILITY` above Adam's. A step size
counts when it is so on every seed where Adam with correction did not
diverge, and is *mixed* when on some.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adam_optax.experiments.claims import FAILS, HOLDS, INCONCLUSIVE, Key, Part, key_of, name_of
from adam_optax.experiments.report import EARLY, FINAL, Record, value

Runs = dict[float, dict[int, Record]]


def diverged(record: Record) -> bool:
  """Whether a run's loss after the first tenth or at the end is not finite."""
  return any(value(record, s) == float("inf") for s in (EARLY, FINAL))


def runs_of(records: Sequence[Record], key: Key) -> Runs:
  """The runs of one setting, by learning rate and seed."""
  out: Runs = {}
  for record in records:
    if key_of(record) == key:
      out.setdefault(record["learning_rate"], {})[record["seed"]] = record
  return out


def _every(flags: list[bool | None]) -> str:
  """``"all"`` if every seed's flag is true, ``"none"`` if every one is false, else ``"some"``.

  Seeds whose flag is ``None`` (not comparable) are left out; with none left, ``"some"``.
  """
  known = [flag for flag in flags if flag is not None]
  if not known:
    return "some"
  return "all" if all(known) else "none" if not any(known) else "some"


def _unstable(without: Record, with_: Record, threshold: float) -> bool | None:
  """One seed at one step size: unstable, stable, or ``None`` (Adam diverged too)."""
  if diverged(with_):
    return None
  if diverged(without):
    return True
  return any(value(without, s) > (1 + threshold) * value(with_, s) for s in (EARLY, FINAL))


def unstable_step_sizes(
  records: Sequence[Record], without: Key, with_: Key, threshold: float
) -> dict[float, str]:
  """Each step size both settings ran: ``"all"``, ``"some"`` or ``"none"`` of its seeds unstable.

  Examples:
    >>> run = lambda opt, lr, loss: {"problem": "vae", "optimizer": opt, "b1": 0.0, "b2": 0.9,
    ...   "learning_rate": lr, "seed": 0, "final_train_loss": loss,
    ...   "checkpoint_train_loss": [loss, loss]}
    >>> records = [run("a", 0.1, None), run("b", 0.1, 1.0), run("a", 0.01, 1.05),
    ...            run("b", 0.01, 1.0)]
    >>> unstable_step_sizes(records, ("a", 0.0, 0.9), ("b", 0.0, 0.9), threshold=0.1)
    {0.01: 'none', 0.1: 'all'}
  """
  a, b = runs_of(records, without), runs_of(records, with_)
  out = {}
  for lr in sorted(set(a) & set(b)):
    seeds = sorted(set(a[lr]) & set(b[lr]))
    out[lr] = _every([_unstable(a[lr][s], b[lr][s], threshold) for s in seeds])
  return out


def diverged_step_sizes(records: Sequence[Record], key: Key) -> dict[float, str]:
  """Each step size of a setting: ``"all"``, ``"some"`` or ``"none"`` of its seeds diverged."""
  runs = runs_of(records, key)
  return {lr: _every([diverged(r) for r in runs[lr].values()]) for lr in sorted(runs)}


def _listed(step_sizes: dict[float, str], status: str) -> str:
  return ", ".join(f"{lr:g}" for lr, s in step_sizes.items() if s == status)


def judge_unstable(
  part: Part, records: Sequence[Record], threshold: float
) -> tuple[list[str], str, list[dict[str, Any]]]:
  """Each pair's verdict on an ``"unstable"`` part, the evidence, and the step sizes.

  A pair holds when at least one step size is unstable on every seed, does
  not hold when none is on any seed, and is otherwise inconclusive.
  """
  outcomes, evidence, details = [], [], []
  for without, with_ in part.pairs:
    steps = unstable_step_sizes(records, without, with_, threshold)
    statuses = set(steps.values())
    outcomes.append(HOLDS if "all" in statuses else FAILS if statuses <= {"none"} else INCONCLUSIVE)
    some = f" (on some seeds: {_listed(steps, 'some')})" if "some" in statuses else ""
    evidence.append(
      f"{name_of(without)}: unstable at {_listed(steps, 'all') or 'none'} of {len(steps)} "
      f"step sizes{some}"
    )
    details.append({"without": name_of(without), "with": name_of(with_), "step_sizes": steps})
  return outcomes, "; ".join(evidence), details


def judge_never_diverges(
  part: Part, records: Sequence[Record]
) -> tuple[str, str, list[dict[str, Any]]]:
  """The verdict on a ``"never diverges"`` part, the evidence, and the diverged step sizes.

  Holds when no run of the settings diverged, does not hold when some step
  size diverged on every seed, and is otherwise inconclusive.
  """
  statuses: set[str] = set()
  runs = failed = 0
  details = []
  for key in part.settings:
    seeds_by_lr = runs_of(records, key)
    runs += sum(len(seeds) for seeds in seeds_by_lr.values())
    failed += sum(diverged(r) for seeds in seeds_by_lr.values() for r in seeds.values())
    steps = diverged_step_sizes(records, key)
    statuses |= set(steps.values())
    if set(steps.values()) != {"none"}:
      details.append({"setting": name_of(key), "step_sizes": steps})
  outcome = HOLDS if statuses <= {"none"} else FAILS if "all" in statuses else INCONCLUSIVE
  where = "; ".join(
    f"{d['setting']} at {', '.join(f'{lr:g}' for lr, s in d['step_sizes'].items() if s != 'none')}"
    for d in details
  )
  return outcome, f"{failed} of {runs} runs diverged" + (f": {where}" if where else ""), details
