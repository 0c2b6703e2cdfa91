"""``adam-optax compare``: the verdict on each part of each claim, from recorded results.

Small hand-made records (no training) for every kind of outcome: a part
holds, does not hold, is inconclusive, rests on a diverged run or on a best
learning rate at the grid's edge; the margin's edges; figure 4's step-size
counts; and the text of "What this run shows".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from adam_optax import cli
from adam_optax.experiments import (
  claims,
  compare,
  comparisons,
  data,
  optimizers,
  programs,
  report,
  train,
)
from adam_optax.experiments import verdicts as v
from adam_optax.experiments.problems import PROBLEMS

SEEDS = (0, 1, 2)


def _run(problem: str, optimizer: str, lr: float, seed: int, area: float | None, **fields) -> dict:
  """One record whose log-loss area is ``area`` (a flat curve) and final loss ``final``."""
  final = fields.pop("final", area)
  early = fields.pop("early", final)
  return {
    "problem": problem,
    "optimizer": optimizer,
    "learning_rate": lr,
    "seed": seed,
    "states": "float32",
    "final_train_loss": final,
    "train_loss_curve": [area] * 4,
    "checkpoint_train_loss": [early, final],
    **fields,
  }


def _records(
  problem: str, losses: dict[str, list], lrs: tuple[float, ...] = (0.01, 0.1, 1.0)
) -> list[dict]:
  """Each optimizer's (area, final) per seed at its middle learning rate, worse elsewhere."""
  out = []
  for name, per_seed in losses.items():
    for seed, pair in zip(SEEDS, per_seed, strict=False):
      area, final = pair if isinstance(pair, tuple) else (pair, pair)
      for lr in lrs:
        worse = 1.0 if lr == lrs[len(lrs) // 2] else 3.0  # the middle lr is the best
        scaled = (None if x is None else x * worse for x in (area, final))
        a, f = scaled
        out.append(_run(problem, name, lr, seed, a, final=f))
  return out


def _judged(problem: str, losses: dict[str, list], **kwargs) -> dict:
  (claim,) = [c for c in claims.CLAIMS if c.problem == problem]
  judged = v.judge(claim, _records(problem, losses, **kwargs))
  assert judged is not None
  return judged


def _parts(judged: dict) -> list[str]:
  return [part["verdict"] for part in judged["parts"]]


# Figure 1 (left): "Adam faster than AdaGrad", "Adam at least as fast as SGD-Nesterov".
@pytest.mark.parametrize(
  ("adam", "adagrad", "sgd", "expected"),
  [
    ([0.10] * 3, [0.20] * 3, [0.105] * 3, ["holds", "holds"]),  # sgd 5% lower: within 10%
    ([0.10] * 3, [0.105] * 3, [0.05] * 3, ["does not hold", "does not hold"]),
    ([0.10, 0.10, 0.20], [0.15] * 3, [0.10] * 3, ["inconclusive", "inconclusive"]),
    # Adam diverged at every learning rate: one below the grid might train.
    ([None] * 3, [0.2] * 3, [0.1] * 3, ["inconclusive", "inconclusive"]),
  ],
  ids=["holds", "fails", "inconclusive", "diverges"],
)
def test_each_part_is_judged_on_its_own(
  adam: list, adagrad: list, sgd: list, expected: list[str]
) -> None:
  judged = _judged("logreg", {"adam": adam, "adagrad": adagrad, "sgd_nesterov": sgd})
  assert _parts(judged) == expected
  holds = expected.count("holds")
  assert judged["verdict"] == f"{holds} of 2 parts hold"
  first = judged["parts"][0]
  assert first["reference"] == "§6.1, fig. 1 (left)"
  assert first["text"] == "Adam converges faster than AdaGrad"
  (pair,) = first["pairs"]
  area, final = pair["statistics"]
  assert (area["statistic"], final["statistic"]) == (report.AREA, report.FINAL)
  assert len(area["ratios"]) == len(SEEDS)
  if adam[0] is None:
    assert area["ratio"] == "adam diverged on 3 of 3 seeds"
    assert (area["zones"], area["edge"], area["edge_decides"]) == (["higher"] * 3, ["adam"], True)


def test_the_final_loss_checks_the_area_curves_that_cross_are_inconclusive() -> None:
  # Adam's curve is lower on average (area) than SGD-Nesterov's but ends higher: they cross.
  # Against AdaGrad it is lower on average and ends within the margin: faster, both converge.
  losses = {
    "adam": [(0.10, 0.02)] * 3,
    "adagrad": [(0.3, 0.021)] * 3,
    "sgd_nesterov": [(0.2, 0.01)] * 3,
  }
  judged = _judged("logreg", losses)
  assert _parts(judged) == ["holds", "inconclusive"]
  area, final = judged["parts"][1]["pairs"][0]["statistics"]
  assert (area["zones"], final["zones"], final["crossings"]) == (["lower"] * 3, ["higher"] * 3, 3)
  assert final["verdict"] is None  # it checks, it does not judge
  assert "the curves cross on 3 of 3 seeds" in judged["parts"][1]["evidence"]
  assert judged["adam_faster_than"] == {"adagrad": "holds", "sgd_nesterov": "inconclusive"}


def test_similarity_is_two_sided() -> None:
  # Figure 1 (right): "Adam and AdaGrad about equally fast"; Adam far faster is not "equal".
  base = {"sgd_nesterov": [0.5] * 3}
  equal = _judged("bow", {**base, "adam": [0.20] * 3, "adagrad": [0.21] * 3})
  faster = _judged("bow", {**base, "adam": [0.10] * 3, "adagrad": [0.21] * 3})
  slower = _judged("bow", {**base, "adam": [0.40] * 3, "adagrad": [0.21] * 3})
  assert [_parts(j)[0] for j in (equal, faster, slower)] == ["holds", *["does not hold"] * 2]


@pytest.mark.parametrize(
  ("ratio", "kind", "expected"),
  [
    (1.1, "not worse", "holds"),  # exactly 1 + margin: still "as fast"
    (1.1 * (1 + 1e-9), "not worse", "does not hold"),
    (1 / 1.1, "better", "does not hold"),  # exactly 1 / (1 + margin): not yet "faster"
    (1 / 1.1 * (1 - 1e-9), "better", "holds"),
    (1.1, "similar", "holds"),
    (1 / 1.1, "similar", "holds"),
    (1.1 * (1 + 1e-9), "similar", "does not hold"),
    (1 / 1.1 * (1 - 1e-9), "similar", "does not hold"),
  ],
)
def test_the_margin_s_edges(ratio: float, kind: str, expected: str) -> None:
  records = [_run("logreg", "a", 0.1, s, 1.0, final=ratio) for s in SEEDS]
  records += [_run("logreg", "b", 0.1, s, 1.0, final=1.0) for s in SEEDS]
  summaries = {s.record["optimizer"]: s for s in report.summarize(records, report.FINAL)}
  compared = comparisons.compare(kind, "a", "b", report.FINAL, summaries, margin=0.1)
  assert compared["verdict"] == expected
  assert compared["ratios"] == [report.number(ratio)] * 3


def test_zones_outcomes_and_ratios() -> None:
  assert comparisons.ratios({0: 1.0, 1: np.inf}, {0: np.inf, 1: np.inf}).tolist()[0] == 0.0
  both_diverged = comparisons.zone(float("nan"), 0.1)
  for kind in ("better", "not worse", "similar"):
    assert comparisons.outcome(kind, [both_diverged] * 3) == "inconclusive"
    assert comparisons.outcome(kind, []) == "inconclusive"
  assert comparisons.crossings(["lower", "higher", "within"], ["higher", "lower", "higher"]) == 2
  assert comparisons.every(["holds", "inconclusive", "does not hold"]) == "does not hold"


def test_a_verdict_a_best_lr_at_the_edge_could_reverse_is_inconclusive() -> None:
  # AdaGrad's best is its largest lr: beyond it, it could be faster. Adam "faster than
  # AdaGrad" rests on that edge; SGD's verdict does not.
  lrs = (0.01, 0.1, 1.0)
  records = _records("logreg", {"adam": [0.1] * 3, "sgd_nesterov": [0.1] * 3}, lrs)
  records += [_run("logreg", "adagrad", lr, s, 0.3 / lr) for lr in lrs for s in SEEDS]
  (claim,) = [c for c in claims.CLAIMS if c.problem == "logreg"]
  judged = v.judge(claim, records)
  assert judged is not None
  assert _parts(judged) == ["inconclusive", "holds"]
  area = judged["parts"][0]["pairs"][0]["statistics"][0]
  assert (area["edge"], area["edge_decides"], area["zones"]) == (["adagrad"], True, ["lower"] * 3)
  assert judged["flags"] == [
    "a best learning rate at the grid's edge, which leaves 1 part inconclusive"
  ]
  # Adam at the edge and faster: a larger lr could only make it faster still.
  assert comparisons.rests_on_edge("better", "holds", ["lower"], a_edge=True, b_edge=False) is False
  assert comparisons.rests_on_edge("better", "does not hold", ["higher"], True, False) is True


def _vae(variant: str, b1: float, b2: float, lr: float, seed: int, early, final) -> dict:
  run = _run("vae", variant, lr, seed, final, final=final, early=early, b1=b1, b2=b2)
  run["test_accuracy"] = None
  return run


def _vae_records(unstable: str = "all", diverged: str = "none", worse: float = 1.0) -> list[dict]:
  """Every (b1, b2) at three step sizes; the uncorrected variant breaks at the largest."""
  out = []
  for b1 in (0.0, 0.9):
    for b2 in (0.99, 0.999, 0.9999):
      for seed in SEEDS:
        for lr, loss in ((0.001, 30.0), (0.01, 25.0), (0.1, 28.0)):
          adam_loss = None if diverged == "all" or (diverged == "some" and seed == 0) else loss
          if lr != 0.1:
            adam_loss = loss
          out.append(_vae("adam", b1, b2, lr, seed, adam_loss, adam_loss))
          blown = lr == 0.1 and (unstable == "all" or (unstable == "some" and seed == 0))
          uncorrected = None if blown and b2 == claims.NEAR_ONE else loss * worse
          out.append(_vae(claims.UNCORRECTED, b1, b2, lr, seed, uncorrected, uncorrected))
  return out


@pytest.mark.parametrize(
  ("records", "expected"),
  [
    (_vae_records(), ["holds", "holds", "holds"]),
    (_vae_records(unstable="none"), ["does not hold", "holds", "holds"]),
    (_vae_records(unstable="some"), ["inconclusive", "holds", "holds"]),
    (_vae_records(diverged="all"), ["inconclusive", "holds", "does not hold"]),
    (_vae_records(diverged="some"), ["holds", "holds", "inconclusive"]),
    (_vae_records(worse=1 / 1.02), ["holds", "does not hold", "holds"]),  # 2% > the 1% margin
    (_vae_records(worse=1 / 1.005), ["holds", "holds", "holds"]),  # 0.5%: within
  ],
  ids=["holds", "stable", "some-seeds", "adam-diverges", "adam-diverges-once", "worse", "within"],
)
def test_figure_4_counts_step_sizes_across_the_sweep(records: list, expected: list) -> None:
  (claim,) = [c for c in claims.CLAIMS if c.problem == "vae"]
  judged = v.judge(claim, records)
  assert judged is not None
  assert _parts(judged) == expected
  assert judged["margin"] == claims.VAE_MARGIN
  unstable, _, never = judged["parts"]
  if expected[0] == "holds":
    assert "unstable at 0.1 of 3 step sizes" in unstable["evidence"]
  if expected[2] == "holds":
    assert never["evidence"] == "0 of 54 runs diverged"


def test_a_claim_whose_optimizers_did_not_run_says_why() -> None:
  judged = v.verdicts(_records("logreg", {"adam": [0.1] * 3}))
  assert [j["verdict"] for j in judged] == [None]
  assert judged[0]["missing"] == ["adagrad", "sgd_nesterov"]
  text = v.markdown(judged)
  assert "no verdict. Its parts compare adagrad, sgd_nesterov, which this run did not train" in text
  assert "a --quick run trains Adam alone" in text


def test_what_this_run_shows_opens_with_the_answer_the_parts_and_the_margins() -> None:
  records = _records("logreg", {"adam": [0.1] * 3, "adagrad": [0.2] * 3, "sgd_nesterov": [0.1] * 3})
  records += _records("bow", {"adam": [0.1] * 3, "adagrad": [0.2] * 3, "sgd_nesterov": [0.3] * 3})
  bases = {"bow": v.Basis("synthetic words", synthetic=True, epochs=19.2, paper_epochs=160)}
  judged = v.verdicts(records, bases)
  text = v.markdown(judged)
  lines = text.splitlines()
  assert lines[0] == "## What this run shows"
  assert lines[2].startswith('**"Adam performs better in every experiment"**')
  assert "? **No**, not in this run: Adam converges faster" in lines[2]
  said = "in 1 of the 2 experiments that compare optimizers (figure 1 (right) (synthetic data))"
  assert said in lines[2]
  assert "; figure 1 (left): not faster than sgd_nesterov." in lines[2]
  assert lines[4].startswith("- **Figure 1 (left)** (§6.1, L2-regularized logistic regression): ")
  assert "**2 of 2 parts hold**." in lines[4]
  assert lines[5].endswith("*On synthetic data.*")
  assert "**2 of 3 parts hold**, 1 does not." in lines[5]
  assert lines[7].startswith("**Margins, fixed before the run**")
  assert "10% for the classifiers" in lines[7]
  assert "Rests on data: synthetic words; synthetic data; 19.2 of the paper's 160 epochs." in text
  assert "| Adam converges faster than AdaGrad | §6.1, fig. 1 (left) | **holds** |" in text
  assert "log-loss area 0.5 [0.5–0.5] (lower)" in text
  json.dumps(judged, allow_nan=False)  # results.json takes them as they are


def test_a_best_learning_rate_at_the_edge_widens_the_grid_then_is_flagged() -> None:
  logreg = PROBLEMS["logreg"].bind((8, 8, 1), 10, paper_scale=False)
  grid = train.make_grid([0, 1], learning_rate=(0.1, 0.316))
  program = programs.Program(logreg, optimizers.OPTIMIZERS["adam"], grid, 10, widenings=1)
  records = [_run("logreg", "adam", lr, s, 1 / lr) for lr in (0.1, 0.316) for s in (0, 1)]
  wider = programs.widened(program, records)
  assert wider is not None
  assert sorted(set(wider.grid.hyperparams["learning_rate"].tolist())) == pytest.approx([1.0, 3.16])
  assert wider.grid.seeds.tolist() == [0, 0, 1, 1]
  assert wider.widenings == 0
  assert programs.widened(wider, records) is None


def test_the_vae_grid_widens_where_any_setting_s_best_sits_at_an_edge() -> None:
  vae = PROBLEMS["vae"].bind((8, 8, 1), 10, paper_scale=False)
  variant = optimizers.BIAS_CORRECTION_VARIANTS[claims.UNCORRECTED]
  grid = train.make_grid([0], learning_rate=(0.001, 0.01, 0.1), b1=(0.0, 0.9), b2=(0.99,))
  program = programs.Program(vae, variant, grid, 10, widenings=2)
  # b1 = 0: best at the smallest step size (early and late); b1 = 0.9: inside the grid.
  records = [
    _vae(claims.UNCORRECTED, b1, 0.99, lr, 0, loss, loss)
    for b1 in (0.0, 0.9)
    for lr, loss in zip(
      (0.001, 0.01, 0.1), (20.0, 25.0, 30.0) if b1 == 0 else (26.0, 25.0, 27.0), strict=True
    )
  ]
  wider = programs.widened(program, records)
  assert wider is not None
  hyper = {k: sorted(set(x.tolist())) for k, x in wider.grid.hyperparams.items()}
  assert hyper["learning_rate"] == pytest.approx([0.0001, 0.000316])  # below, for every b1
  assert hyper["b1"] == [0.0, pytest.approx(0.9)]
  assert hyper["b2"] == [pytest.approx(0.99)]
  assert wider.widenings == 1


def test_widen_continues_the_grid_beyond_either_edge() -> None:
  grid = optimizers.log_grid(1e-2, points=3)
  assert grid == (0.00316, 0.01, 0.0316)
  assert optimizers.widen(grid, best=0.0316) == (0.1, 0.316)
  assert optimizers.widen(grid, best=0.00316) == (0.001, 0.000316)
  assert optimizers.widen(grid, best=0.01) == ()


def test_seed_offset_and_states_reach_the_programs() -> None:
  parser = argparse.ArgumentParser()
  compare.add_arguments(parser)
  flags = ["--problems", "logreg", "--seeds", "2", "--seed-offset", "5", "--states", "8bit"]
  args = parser.parse_args(flags)
  planned = programs.plan(args, {"logreg": data.load_digits()})
  assert {p.optimizer.name: sorted(set(p.grid.seeds.tolist())) for p in planned} == {
    "adam": [5, 6],
    "sgd_nesterov": [5, 6],
    "adagrad": [5, 6],
  }
  assert {p.optimizer.name: p.states for p in planned} == {
    "adam": "8bit",
    "sgd_nesterov": "float32",  # only the Adam family is quantized
    "adagrad": "float32",
  }


@pytest.mark.parametrize("states", ["8bit", "4bit"])
def test_low_bit_states_train_the_adam_family_and_are_recorded_truthfully(
  tmp_path: Path, states: str
) -> None:
  flags = ["--quick", "--problems", "logreg", "--optimizers", "adam,sgd_nesterov"]
  flags += ["--steps", "10", "--seeds", "1", "--states", states, "--out", str(tmp_path)]
  assert cli.main(["compare", *flags]) == 0
  runs = json.loads((tmp_path / "results.json").read_text())["runs"]
  assert {(r["optimizer"], r["states"]) for r in runs} == {
    ("adam", states),
    ("sgd_nesterov", "float32"),
  }
  assert all(r["final_train_loss"] is not None for r in runs)
  bits = states[0]
  text = (tmp_path / "results.md").read_text()
  assert (
    f"Optimizer states: {bits}-bit blocks (ao.Quantized({bits})) for adam; float32 for " in text
  )
