"""Each part of each of the paper's claims of section 6, judged from one run's records.

The claims and their parts are in :mod:`~adam_optax.experiments.claims`. A
comparison part orders two settings, seed by seed against the claim's margin
(:mod:`~adam_optax.experiments.comparisons`), at each setting's best
learning rate. Figures 1-3 judge the *log-loss area* (the area under the log
of the training-loss curve drawn in the figure) at the learning rate with
the lowest area, and check it against the final training loss: where a seed
is lower on one and higher on the other, beyond the margin, the curves cross
and the verdict is inconclusive. Figure 4 judges the loss after the first
tenth of the steps and at the end (its two curves), each at its own best
step size, and both must hold. A part over several pairs holds if every
pair does and fails if one does. Figure 4's step-size counts are in
:mod:`~adam_optax.experiments.stability`. :func:`markdown` writes the section
"What this run shows" of ``results.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from adam_optax.experiments import report, stability
from adam_optax.experiments.claims import (
  CLAIMS,
  FAILS,
  HOLDS,
  INCONCLUSIVE,
  INSTABILITY,
  Claim,
  Key,
  Part,
  key_of,
  name_of,
)
from adam_optax.experiments.comparisons import compare, crossings, every
from adam_optax.experiments.report import STATISTICS, Record


@dataclasses.dataclass(frozen=True)
class Basis:
  """What a claim's verdict rests on besides the numbers.

  Attributes:
    data: where its data came from.
    synthetic: whether the data were generated.
    epochs: the epochs this run trained.
    paper_epochs: the epochs of the paper's figure.
  """

  data: str
  synthetic: bool = False
  epochs: float | None = None
  paper_epochs: int | None = None

  def flags(self) -> list[str]:
    """What limits a verdict on this basis: synthetic data, fewer epochs than the paper."""
    out = ["synthetic data"] if self.synthetic else []
    if self.epochs is not None and self.paper_epochs and self.epochs < 0.95 * self.paper_epochs:
      out.append(f"{self.epochs:.3g} of the paper's {self.paper_epochs} epochs")
    return out


def _pair(kind: str, a: Key, b: Key, claim: Claim, summaries: dict) -> dict[str, Any]:
  """One pair on the claim's statistics (each must hold), then on its check (must not cross)."""
  judged = [compare(kind, a, b, s, summaries[s], claim.margin) for s in claim.statistics]
  verdict = every([c["verdict"] for c in judged])
  if claim.check:
    checked = compare(kind, a, b, claim.check, summaries[claim.check], claim.margin)
    crossed = crossings(judged[0]["zones"], checked["zones"])
    judged.append({**checked, "verdict": None, "crossings": crossed})
    verdict = INCONCLUSIVE if crossed else verdict
  return {"a": name_of(a), "b": name_of(b), "verdict": verdict, "statistics": judged}


def _judge_part(claim: Claim, part: Part, own: Sequence[Record], summaries: dict) -> dict:
  """One part: its verdict, a one-line evidence and the details (JSON-ready)."""
  out: dict[str, Any] = {"text": part.text, "kind": part.kind, "reference": claim.reference}
  if part.kind == "unstable":
    verdicts, out["evidence"], out["pairs"] = stability.judge_unstable(part, own, INSTABILITY)
    out["verdict"] = every(verdicts)
    return out
  if part.kind == "never diverges":
    out["verdict"], out["evidence"], out["diverged"] = stability.judge_never_diverges(part, own)
    return out
  pairs = [_pair(part.kind, a, b, claim, summaries) for a, b in part.pairs]
  out["verdict"] = every([p["verdict"] for p in pairs])
  out["pairs"] = pairs
  out["evidence"] = _evidence(pairs)
  return out


def _pair_label(pair: dict) -> str:
  a, b = pair["a"], pair["b"]
  return a[a.index("(") + 1 : -1] if "(" in a else f"{a}/{b}"


def _evidence(pairs: Sequence[dict]) -> str:
  """The ratios of each pair (those that hold summed up when there are several)."""

  def said(pair: dict) -> str:
    cells = []
    for c in pair["statistics"]:
      zones = set(c["zones"])
      where = zones.pop() if len(zones) == 1 else "mixed"
      edge = ""
      if c["edge"] and c["verdict"] is not None:  # a check reads the same learning rates
        edge = f"; best lr of {', '.join(c['edge'])} at the grid's edge"
        edge += ", which could reverse it" if c["edge_decides"] else ""
      crossed = c.get("crossings")
      edge += f"; the curves cross on {crossed} of {len(c['zones'])} seeds" if crossed else ""
      cells.append(f"{STATISTICS[c['statistic']]} {c['ratio']} ({where}{edge})")
    return f"{_pair_label(pair)}: " + ", ".join(cells)

  if len(pairs) == 1:
    return said(pairs[0])
  held = [p for p in pairs if p["verdict"] == HOLDS]
  lines = [said(p) + f" → {p['verdict']}" for p in pairs if p["verdict"] != HOLDS]
  if held:
    lines.append(f"the other {len(held)} of {len(pairs)} hold")
  return "; ".join(lines)


def judge(
  claim: Claim, all_records: Sequence[Record], basis: Basis | None = None
) -> dict[str, Any] | None:
  """The verdict on every part of ``claim``, or ``None`` if its problem did not run.

  Returns:
    A JSON-ready dict: the figure, section, problem, margin, statistics,
    data and flags; ``verdict``, the claim's summary (``"2 of 3 parts
    hold"``), and ``parts``, each with its own verdict, evidence and numbers;
    for an optimizer comparison with Adam, ``adam_faster_than``: each other
    optimizer run and whether Adam is faster than it (a ``"better"``
    comparison). ``verdict`` is ``None`` and ``missing`` names the settings
    when the run did not train every setting the claim compares.
  """
  own = [r for r in all_records if r["problem"] == claim.problem]
  if not own:
    return None
  out: dict[str, Any] = {
    "figure": claim.figure,
    "section": claim.section,
    "problem": claim.problem,
    "topic": claim.topic,
    "margin": claim.margin,
    "statistics": list(claim.statistics),
    "check": claim.check,
    "data": basis.data if basis else None,
    "flags": basis.flags() if basis else [],
  }
  ran = {key_of(r) for r in own}
  needed = [k for p in claim.parts for pair in p.pairs for k in pair] + [
    k for p in claim.parts for k in p.settings
  ]
  missing = [name_of(k) for k in dict.fromkeys(needed) if k not in ran]
  if missing:
    return {**out, "verdict": None, "missing": missing, "parts": []}
  summaries = {
    s: {key_of(x.record): x for x in report.summarize(own, claim.select or s)}
    for s in (*claim.statistics, *([claim.check] if claim.check else []))
  }
  parts = [_judge_part(claim, part, own, summaries) for part in claim.parts]
  counts = {v: sum(p["verdict"] == v for p in parts) for v in (HOLDS, FAILS, INCONCLUSIVE)}
  edges = [c for p in parts for pair in p.get("pairs", []) for c in pair.get("statistics", [])]
  if any(c["edge"] for c in edges):
    decided = sum(
      p["verdict"] == INCONCLUSIVE
      and any(c["edge_decides"] for pair in p.get("pairs", []) for c in pair.get("statistics", []))
      for p in parts
    )
    undecided = f", which leaves {report.plural('part', decided)} inconclusive" if decided else ""
    out["flags"].append(f"a best learning rate at the grid's edge{undecided}")
  out.update(verdict=f"{counts[HOLDS]} of {len(parts)} parts hold", counts=counts, parts=parts)
  if claim.select and "adam" in ran:
    out["adam_faster_than"] = {
      name_of(other): _pair("better", "adam", other, claim, summaries)["verdict"]
      for other in sorted(ran - {"adam"})
    }
  return out


def verdicts(
  all_records: Sequence[Record], bases: Mapping[str, Basis] | None = None
) -> list[dict[str, Any]]:
  """The verdict on every claim of :data:`~adam_optax.experiments.claims.CLAIMS` whose problem ran.

  Args:
    all_records: the records of the run.
    bases: what each problem's data and length were, by problem name.
  """
  judged = (judge(c, all_records, (bases or {}).get(c.problem)) for c in CLAIMS)
  return [verdict for verdict in judged if verdict is not None]


NOTE = "one of the notes this project was built from"


def _figures(judged: Sequence[dict[str, Any]]) -> str:
  """``"figures 1 (left), 2"``; synthetic data marked."""
  names = [
    f"{j['figure']}" + (" (synthetic data)" if "synthetic data" in j["flags"] else "")
    for j in judged
  ]
  return ("figure " if len(names) == 1 else "figures ") + ", ".join(names)


def answer(judged: Sequence[dict[str, Any]]) -> str:
  """Whether "Adam performs better in every experiment", as this run measures it."""
  compared = [j for j in judged if j.get("adam_faster_than")]
  opening = f'**"Adam performs better in every experiment"**, as {NOTE} sums up section 6? '
  if not compared:
    return opening + "This run cannot say: it trained Adam with no other optimizer."
  faster = [j for j in compared if all(v == HOLDS for v in j["adam_faster_than"].values())]
  verdict = "**Yes**, in this run" if len(faster) == len(compared) else "**No**, not in this run"
  said = [
    f"{verdict}: Adam converges faster (a log-loss area lower beyond the margin, and curves "
    "that do not cross) than every other optimizer it was trained with in "
    f"{len(faster)} of the {len(compared)} experiments that compare optimizers"
    + (f" ({_figures(faster)})" if faster else "")
  ]
  for j in compared:
    if j in faster:
      continue
    by = {
      v: [name for name, w in j["adam_faster_than"].items() if w == v]
      for v in (FAILS, INCONCLUSIVE)
    }
    lost = [f"not faster than {', '.join(by[FAILS])}"] if by[FAILS] else []
    lost += [f"undecided against {', '.join(by[INCONCLUSIVE])}"] if by[INCONCLUSIVE] else []
    said.append(f"{_figures([j])}: {' and '.join(lost)}")
  said += [
    f"figure 4 compares Adam with itself without bias correction: {j['verdict']}"
    for j in judged
    if j["problem"] == "vae" and j["verdict"]
  ]
  return opening + "; ".join(said) + "."


def _summary_line(j: dict[str, Any]) -> str:
  head = f"- **Figure {j['figure']}** (§{j['section']}, {j['topic']})"
  if j["verdict"] is None:
    return (
      f"{head}: no verdict. Its parts compare {', '.join(j['missing'])}, which this run did not "
      "train (a --quick run trains Adam alone; --optimizers chooses others)."
    )
  counts = j["counts"]
  rest = [f"{counts[FAILS]} does not" if counts[FAILS] == 1 else f"{counts[FAILS]} do not"]
  rest = (rest if counts[FAILS] else []) + (
    [f"{counts[INCONCLUSIVE]} inconclusive"] if counts[INCONCLUSIVE] else []
  )
  marks = [f for f in j["flags"] if "synthetic" in f or "edge" in f]
  return (
    f"{head}: **{j['verdict']}**"
    + (", " + ", ".join(rest) if rest else "")
    + "."
    + "".join(f" *On {f}.*" for f in marks)
  )


def _margins(judged: Sequence[dict[str, Any]]) -> str:
  margins = sorted({(j["margin"], j["problem"] == "vae") for j in judged}, reverse=True)
  said = ", ".join(
    f"{m:.0%} for the VAE (figure 4)" if vae else f"{m:.0%} for the classifiers (figures 1-3)"
    for m, vae in margins
  )
  return (
    f"**Margins, fixed before the run** (in `adam_optax/experiments/claims.py`): {said}. A ratio "
    "of two settings' statistic within a factor 1 + margin either way counts as equal, so "
    '"at least as fast" and "never worse" hold unless the ratio is above 1 + margin, and '
    '"faster" needs it below 1 / (1 + margin), on every seed. Figure 4\'s instability: a run '
    f"that diverges, or whose loss after the first tenth or at the end is {INSTABILITY:.0%} "
    "above Adam's with bias correction at the same step size and seed. Why a fixed ratio and "
    "not an equivalence test over seeds: with three seeds such a test has almost no power, "
    "and the paper's claims are about the curves a reader sees. A factor 1.1 is 0.04 decade on "
    "the figures' logarithmic loss axis, under a millimetre in the PNGs; the VAE's loss stays "
    "far above 0 (most of it is the data's own entropy, which no optimizer removes), so on its "
    "linear axis the same difference is about 1%."
  )


METHOD = (
  "**How a part is judged.** Figures 1-3: on the *log-loss area*, the area under the logarithm "
  "of the training-loss curve drawn in the problem's PNG, per step, given as the loss it "
  "averages to (the curve's geometric mean): the ratio of two areas is the average gap between "
  "two curves on the figure's log axis (the mean of the loss itself would be dominated by the "
  "first steps). Each setting is read at its learning rate with the lowest mean area over "
  "seeds, the curve drawn. The *final training loss* (the whole training set after the last "
  "step, no dropout) checks it: where a seed is lower beyond the margin on one and higher on "
  "the other, the curves cross and the part is inconclusive. Figure 4: on the loss after the "
  "first tenth of the steps and at the end (its two curves), each at its own best step size "
  "(the starred minimum of each curve in vae.png), both needed. Ratios are taken seed by seed "
  "(a seed gives every optimizer the same initialization and minibatches), shown as mean "
  "[min–max] over seeds. A part over several settings holds if each does and fails if one "
  "does. A best learning rate at the edge of its grid (after widening the grid twice) could "
  "only be beaten beyond it: a verdict that this could reverse is inconclusive."
)


def markdown(judged: Sequence[dict[str, Any]]) -> str:
  """The section "What this run shows": the answer, each claim's parts, margins and method."""
  lines = ["## What this run shows", ""]
  if not judged:
    lines.append("No claim could be judged: this run trained none of the paper's problems.")
    return "\n".join(lines) + "\n"
  lines += [answer(judged), "", *(_summary_line(j) for j in judged), "", _margins(judged), ""]
  for j in judged:
    if j["verdict"] is None:
      continue
    lines += [f"### Figure {j['figure']}: {j['topic']} (§{j['section']})", ""]
    rests = ([f"data: {j['data']}"] if j["data"] else []) + j["flags"]
    lines += [f"Rests on {'; '.join(rests)}.", ""] if rests else []
    header = ["part (our paraphrase of the paper)", "tests", "verdict", "evidence: ratio [min–max]"]
    rows = [[p["text"], p["reference"], f"**{p['verdict']}**", p["evidence"]] for p in j["parts"]]
    lines += [*report.table(header, rows), ""]
  lines.append(METHOD)
  return "\n".join(lines) + "\n"
