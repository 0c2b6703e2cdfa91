"""``adam-optax compare``: the verdicts on the paper's claims, grid widening, ``--states``."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import adam_optax as ao
from adam_optax import cli
from adam_optax.experiments import optimizers, programs, train, verdicts
from adam_optax.experiments.problems import PROBLEMS


def _records(losses: dict[str, list[float]], lrs: tuple[float, ...] = (0.1,)) -> list[dict]:
  """Logistic-regression records: each optimizer's losses over seeds, at every lr."""
  return [
    {
      "problem": "logreg",
      "optimizer": name,
      "learning_rate": lr,
      "seed": seed,
      "final_train_loss": loss * (1 + abs(lr - lrs[-1])),  # the last lr is the best
      "train_loss_curve": [loss * (1 + abs(lr - lrs[-1]))] * 3,
      "checkpoint_train_loss": [2 * loss, loss],
    }
    for name, values in losses.items()
    for lr in lrs
    for seed, loss in enumerate(values)
  ]


@pytest.mark.parametrize(
  ("losses", "verdict"),
  [
    ({"adam": [0.10, 0.11], "sgd_nesterov": [0.10, 0.12], "adagrad": [0.20, 0.21]}, "holds"),
    (
      {"adam": [0.30, 0.31], "sgd_nesterov": [0.10, 0.12], "adagrad": [0.20, 0.21]},
      "does not hold",
    ),
    ({"adam": [0.10, 0.25], "sgd_nesterov": [0.10, 0.12], "adagrad": [0.20, 0.21]}, "inconclusive"),
  ],
)
def test_a_claim_holds_fails_or_is_inconclusive_by_the_spreads(
  losses: dict[str, list[float]], verdict: str
) -> None:
  (judged,) = verdicts.verdicts(_records(losses))
  assert judged["figure"] == "1 (left)"
  assert judged["verdict"] == verdict
  first = judged["comparisons"][0]
  assert (first["a"], first["b"], first["required"]) == ("adam", "adagrad", "better")
  assert first["a_values"] == losses["adam"]
  text = verdicts.markdown([judged])
  assert f": **{verdict}**. Mean training loss over all steps: adam " in text
  assert "over 2 seeds" in judged["statistic"]


def test_a_claim_is_left_out_when_its_optimizers_did_not_run() -> None:
  assert verdicts.verdicts(_records({"adam": [0.1], "adagrad": [0.2]})) == []


def test_a_best_learning_rate_at_the_edge_widens_the_grid_then_is_flagged() -> None:
  logreg = PROBLEMS["logreg"].bind((8, 8, 1), 10, paper_scale=False)
  grid = train.make_grid([0, 1], learning_rate=(0.1, 0.316))
  program = programs.Program(logreg, optimizers.OPTIMIZERS["adam"], grid, 10, widenings=1)
  records = _records({"adam": [0.2, 0.3]}, lrs=(0.1, 0.316))
  wider = programs.widened(program, records)
  assert wider is not None
  assert sorted(set(wider.grid.hyperparams["learning_rate"].tolist())) == pytest.approx([1.0, 3.16])
  assert wider.grid.seeds.tolist() == [0, 0, 1, 1]
  assert wider.widenings == 0
  assert programs.widened(wider, records) is None
  (judged,) = verdicts.verdicts(
    _records({"adam": [0.1], "sgd_nesterov": [0.1], "adagrad": [0.2]}, lrs=(0.1, 0.316))
  )
  assert all(c["edge"] for c in judged["comparisons"])


def test_widen_continues_the_grid_beyond_either_edge() -> None:
  grid = optimizers.log_grid(1e-2, points=3)
  assert grid == (0.00316, 0.01, 0.0316)
  assert optimizers.widen(grid, best=0.0316) == (0.1, 0.316)
  assert optimizers.widen(grid, best=0.00316) == (0.001, 0.000316)
  assert optimizers.widen(grid, best=0.01) == ()


@pytest.mark.skipif(hasattr(ao, "Quantized"), reason="ao.Quantized has landed")
def test_low_bit_states_before_quantized_lands_are_a_one_line_error(
  tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["compare", "--quick", "--states", "8bit", "--out", str(tmp_path / "out")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert "--states 8bit needs ao.Quantized" in err
  assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(ao, "Quantized"), reason="ao.Quantized has not landed yet")
@pytest.mark.parametrize("states", ["8bit", "4bit"])
def test_low_bit_states_train_the_adam_family(tmp_path: Path, states: str) -> None:
  flags = ["--quick", "--problems", "logreg", "--steps", "10", "--seeds", "1"]
  assert cli.main(["compare", *flags, "--states", states, "--out", str(tmp_path)]) == 0
  runs = json.loads((tmp_path / "results.json").read_text())["runs"]
  assert {r["states"] for r in runs} == {states}
  assert all(r["final_train_loss"] is not None for r in runs)


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_every_problem_builds_at_the_papers_scale(name: str) -> None:
  # Shapes only (no compilation): the paper's sizes on MNIST (and CIFAR-10 for the CNN).
  shape = (32, 32, 3) if name == "cnn" else (10_000,) if name == "bow" else (28, 28, 1)
  classes = 2 if name == "bow" else 10
  problem = PROBLEMS[name].bind(shape, classes, paper_scale=True)
  params = nnx.state(nnx.eval_shape(lambda: problem.make_model(nnx.Rngs(0))))
  sizes = dict(problem.paper_sizes)
  count = sum(leaf.size for leaf in jax.tree.leaves(params))
  assert count >= sizes.get("hidden", 1) * 10
  assert problem.default_steps(50_000) == problem.paper_epochs * 391
  assert problem.differences(problem.default_steps(50_000), 50_000) == list(problem.notes)


def test_low_bit_states_reach_the_adam_family_only(
  tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
  # A stand-in for ao.Quantized (a plain storage dtype) checks the wiring before it lands.
  asked = []

  def quantized(bits: int) -> object:
    asked.append(bits)
    return jnp.float32

  monkeypatch.setattr(ao, "Quantized", quantized, raising=False)
  flags = ["--quick", "--problems", "logreg", "--optimizers", "adam,sgd_nesterov"]
  flags += ["--steps", "10", "--seeds", "1", "--states", "4bit", "--out", str(tmp_path)]
  assert cli.main(["compare", *flags]) == 0
  assert asked == [4]  # once, for Adam; SGD keeps its own state
  runs = json.loads((tmp_path / "results.json").read_text())["runs"]
  assert {r["states"] for r in runs} == {"4bit"}
