"""Two settings compared on one statistic, seed by seed, with a margin fixed in advance.

The ratio ``a / b`` of the statistic is taken seed by seed (a seed gives
every optimizer the same initialization and minibatches: a paired
comparison), and each seed's ratio falls :func:`zone` *lower*, *within* or
*higher* than the margin; :func:`outcome` says what the zones mean for a
claim of that kind, and :func:`rests_on_edge` whether a best learning rate at
its grid's edge could reverse it; :func:`crossings` counts the seeds where
two statistics disagree outright, and :func:`every` combines verdicts.

Why a margin on the ratio rather than an equivalence test over seeds: with
three seeds such a test has almost no power (its interval is as wide as the
seeds are few), and the paper's claims are about the curves a reader sees. A
factor 1.1 is 0.04 decade on the figures' logarithmic loss axis, under a
millimetre in the PNGs, so curves closer than that read as one; the VAE's
-ELBO stays far above 0 (most of it is the data's own entropy, which no
optimizer removes), so on its linear axis the same difference is about 1%.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adam_optax.experiments import report
from adam_optax.experiments.claims import FAILS, HOLDS, INCONCLUSIVE, Key, name_of
from adam_optax.experiments.report import Summary

LOWER, WITHIN, HIGHER, BOTH_DIVERGED = "lower", "within", "higher", "both diverged"
_HOLDING = {"better": {LOWER}, "not worse": {LOWER, WITHIN}, "similar": {WITHIN}}
_FAILING = {"better": {WITHIN, HIGHER}, "not worse": {HIGHER}, "similar": {LOWER, HIGHER}}


def zone(ratio: float, margin: float) -> str:
  """Where one seed's ratio ``a / b`` falls against the margin (NaN: both diverged).

  Examples:
    >>> [zone(r, 0.1) for r in (0.9, 1 / 1.1, 1.1, 1.2, float("nan"))]
    ['lower', 'within', 'within', 'higher', 'both diverged']
  """
  if np.isnan(ratio):
    return BOTH_DIVERGED
  if ratio < 1 / (1 + margin):
    return LOWER
  return HIGHER if ratio > 1 + margin else WITHIN


def outcome(kind: str, zones: Sequence[str]) -> str:
  """A comparison's verdict from every seed's zone.

  ``"better"`` holds if every seed is lower, ``"not worse"`` if none is
  higher, ``"similar"`` if every one is within; each fails if every seed is
  on the other side, and is inconclusive otherwise (or with no seed).

  Examples:
    >>> outcome("better", ["lower"] * 3), outcome("better", ["lower", "within", "lower"])
    ('holds', 'inconclusive')
    >>> outcome("not worse", ["within", "lower"]), outcome("similar", ["higher", "lower"])
    ('holds', 'does not hold')
  """
  seen = set(zones)
  if not seen:
    return INCONCLUSIVE
  if seen <= _HOLDING[kind]:
    return HOLDS
  return FAILS if seen <= _FAILING[kind] else INCONCLUSIVE


def rests_on_edge(
  kind: str, verdict: str, zones: Sequence[str], a_edge: bool, b_edge: bool
) -> bool:
  """Whether a best learning rate at its grid's edge could reverse ``verdict``.

  A setting at the edge can only get lower beyond it: that can reverse a
  verdict on ``a`` being low (holds) through ``b``, and one on ``a`` being
  high (fails) through ``a``.

  Examples:
    >>> rests_on_edge("better", "holds", ["lower"], a_edge=True, b_edge=False)
    False
    >>> rests_on_edge("better", "holds", ["lower"], a_edge=False, b_edge=True)
    True
  """
  if verdict == INCONCLUSIVE:
    return False
  if kind == "similar":
    if verdict == HOLDS:
      return a_edge or b_edge
    return (a_edge and HIGHER in zones) or (b_edge and LOWER in zones)
  return b_edge if verdict == HOLDS else a_edge


def ratios(a: Mapping[int, float], b: Mapping[int, float]) -> np.ndarray:
  """``a / b`` seed by seed (the seeds both have); a diverged run is ``inf``.

  Examples:
    >>> ratios({0: 1.0, 1: 2.0, 2: np.inf}, {0: 2.0, 1: np.inf, 2: np.inf}).tolist()
    [0.5, 0.0, nan]
  """
  seeds = sorted(set(a) & set(b))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.array([a[s] for s in seeds], float) / np.array([b[s] for s in seeds], float)


def crossings(judged: Sequence[str], check: Sequence[str]) -> int:
  """The seeds whose zones on two statistics are opposite: the curves cross.

  Examples:
    >>> crossings(["lower", "lower", "within"], ["higher", "within", "higher"])
    1
  """
  return sum({a, b} == {LOWER, HIGHER} for a, b in zip(judged, check, strict=True))


def every(verdicts: Sequence[str]) -> str:
  """Holds if every verdict holds, fails if one fails, else inconclusive.

  Examples:
    >>> every(["holds", "holds"]), every(["holds", "inconclusive", "does not hold"])
    ('holds', 'does not hold')
  """
  if all(v == HOLDS for v in verdicts):
    return HOLDS
  return FAILS if FAILS in verdicts else INCONCLUSIVE


def describe(a: Key, b: Key, va: np.ndarray, vb: np.ndarray) -> str:
  """The ratios ``va / vb`` as mean [min–max] over seeds, or which setting diverged where.

  Examples:
    >>> describe("a", "b", np.array([1.0, 2.0]), np.array([2.0, 2.0]))
    '0.75 [0.5–1]'
    >>> describe("a", "b", np.array([1.0, np.inf]), np.array([np.inf, 2.0]))
    'a diverged on 1 of 2 seeds; b diverged on 1 of 2 seeds'
  """
  diverged = [
    f"{name_of(key)} diverged on {np.isinf(v).sum()} of {len(v)} seeds"
    for key, v in ((a, va), (b, vb))
    if np.isinf(v).any()
  ]
  if diverged:
    return "; ".join(diverged)
  ratio = va / vb
  return f"{ratio.mean():.3g} [{ratio.min():.3g}–{ratio.max():.3g}]"


def compare(
  kind: str, a: Key, b: Key, statistic: str, summaries: Mapping[Key, Summary], margin: float
) -> dict[str, Any]:
  """One pair on one statistic: the ratios over seeds, their zones and the verdict."""
  sa, sb = summaries[a], summaries[b]
  va, vb = ({r["seed"]: report.value(r, statistic) for r in s.runs} for s in (sa, sb))
  ratio = ratios(va, vb)
  seeds = sorted(set(va) & set(vb))
  zones = [zone(r, margin) for r in ratio]
  verdict = outcome(kind, zones)
  decides = rests_on_edge(kind, verdict, zones, sa.at_edge, sb.at_edge)
  return {
    "statistic": statistic,
    "a_learning_rate": sa.record["learning_rate"],
    "b_learning_rate": sb.record["learning_rate"],
    "a_values": [report.number(v) for v in va.values()],
    "b_values": [report.number(v) for v in vb.values()],
    "ratios": [report.number(r) for r in ratio],
    "ratio": describe(a, b, *(np.array([v[s] for s in seeds]) for v in (va, vb))),
    "zones": zones,
    "edge": [name_of(key) for key, s in ((a, sa), (b, sb)) if s.at_edge],
    "edge_decides": decides,
    "verdict": INCONCLUSIVE if decides else verdict,
  }
