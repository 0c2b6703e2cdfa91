"""``adam-optax compare``: outputs, reproducibility, bad flags, interruption."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import adam_optax as ao
from adam_optax import cli
from adam_optax.experiments import compare, data, models, optimizers, report, sources, train
from adam_optax.experiments.problems import PROBLEMS

# Small runs on the digits: every problem with Adam (and the VAE's bias-correction study).
FLAGS = ["--quick", "--steps", "20", "--seeds", "2"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _compare(out: Path, *flags: str) -> int:
  return cli.main(["compare", *FLAGS, *flags, "--out", str(out)])


def test_writes_results_prints_the_table_and_repeats_exactly(
  tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
  # One test, so that under pytest-xdist one worker compiles the programs and the
  # second run (jit-cached) only replays them.
  assert _compare(tmp_path / "first") == 0
  printed = capsys.readouterr().out
  results = tmp_path / "first"
  payload = json.loads((results / "results.json").read_text())
  records = payload["runs"]
  vae_lrs = len(optimizers.BIAS_CORRECTION_LEARNING_RATES)
  lrs = optimizers.GRID_POINTS
  # 4 classifiers x lrs x 2 seeds + VAE 2 variants x 2 b1 x 3 b2 x lrs x 2 seeds.
  assert len(records) == 4 * lrs * 2 + 2 * 2 * 3 * vae_lrs * 2
  for record in records:
    assert {"problem", "optimizer", "learning_rate", "seed", "final_train_loss"} <= set(record)
    assert (record["diagnostics"], record["states"]) == (False, "float32")
    assert len(record["train_loss_curve"]) == len(record["curve_steps"]) == 20
    is_vae = record["problem"] == "vae"
    assert (record["test_accuracy"] is None) == is_vae
  logreg = [r for r in records if r["problem"] == "logreg"]
  assert all(r["final_train_loss"] < r["train_loss_curve"][0] for r in logreg)
  assert {r["learning_rate"] for r in logreg} == set(optimizers.OPTIMIZERS["adam"].learning_rates)
  # Adam alone: only figure 4's claim can be judged, part by part; the others say why not.
  judged = {j["figure"]: j for j in payload["verdicts"]}
  assert list(judged) == ["1 (left)", "1 (right)", "2", "3", "4"]
  assert all(judged[f]["verdict"] is None for f in ("1 (left)", "1 (right)", "2", "3"))
  assert judged["1 (right)"]["flags"][0] == "synthetic data"
  assert all(
    p["verdict"] in ("holds", "does not hold", "inconclusive") for p in judged["4"]["parts"]
  )
  assert judged["4"]["verdict"].endswith(" of 3 parts hold")
  assert "synthetic" in " ".join(payload["differences"]["bow"])
  table = (results / "results.md").read_text()
  assert table.startswith("# adam-optax compare\n\n## What this run shows\n")
  assert "- **Figure 4** (§6.4, variational autoencoder" in table
  assert "Optimizer states: float32 for adam, adam_no_bias_correction." in table
  assert "## What differs from the paper" in table
  for name in PROBLEMS:
    assert f"### {name} (20 steps, 2 seeds)" in table
    assert (results / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
  header = (
    "| optimizer | best lr | lrs tried | log-loss area | final train loss | test accuracy (%) |"
  )
  assert header in printed
  assert "| adam_no_bias_correction | 0.9 | 0.9999 |" in printed
  probe = tmp_path / "probe"
  probe.write_text("")  # the results get the permissions of any new file
  assert (results / "results.json").stat().st_mode == probe.stat().st_mode
  assert sorted(p.name for p in results.iterdir()) == sorted(
    ["results.json", "results.md", *(f"{name}.png" for name in PROBLEMS)]
  )
  # The same seeds give the same numbers; a second run into the same folder
  # removes the figures it no longer writes, and nothing else.
  (results / "notes.txt").write_text("mine")
  assert _compare(results, "--problems", "logreg") == 0
  assert "removed the earlier run's bow.png, mlp.png, cnn.png, vae.png" in capsys.readouterr().out
  assert sorted(p.name for p in results.iterdir()) == [
    "logreg.png",
    "notes.txt",
    "results.json",
    "results.md",
  ]
  again = json.loads((results / "results.json").read_text())["runs"]
  assert again == logreg


@pytest.mark.parametrize(
  ("flags", "message"),
  [
    (["--problems", "logreg,nope"], "unknown problem 'nope'"),
    (["--optimizers", "adamw"], "unknown optimizer 'adamw'"),
    (["--steps", "0"], "expected a positive integer, got '0'"),
    (["--steps", "-5"], "expected a positive integer, got '-5'"),
    (["--steps", "ten"], "expected a positive integer, got 'ten'"),
    (["--seeds", "0"], "expected a positive integer, got '0'"),
    (["--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
    (["--states", "2bit"], "argument --states: invalid choice: '2bit'"),
  ],
)
def test_bad_flags_are_one_line_errors(
  flags: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["compare", *flags])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert err.startswith("adam-optax compare: error: ")
  assert message in err


def test_unwritable_out_fails_before_training(
  tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
  def no_training(*args: object, **kwargs: object) -> None:
    raise AssertionError("trained before checking --out")

  monkeypatch.setattr(train, "train", no_training)
  blocker = tmp_path / "a-file"
  blocker.write_text("")
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["compare", "--quick", "--out", str(blocker / "out")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert err.startswith("adam-optax compare: error: cannot write to --out")


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_run_writes_nothing_and_leaves_no_folder(
  tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, existing: bool
) -> None:
  real_train = train.train
  calls = []

  def interrupted_after_first(*args: object, **kwargs: object) -> train.TrainResult:
    calls.append(1)
    if len(calls) > 1:
      raise KeyboardInterrupt
    return real_train(*args, **kwargs)

  monkeypatch.setattr(train, "train", interrupted_after_first)
  out = tmp_path / "runs" / "out"
  if existing:
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
  flags = ["--problems", "logreg", "--optimizers", "adam,sgd_nesterov,adagrad"]
  assert _compare(out, *flags) == 130
  assert len(calls) >= 2
  if existing:
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
  else:
    assert not (tmp_path / "runs").exists()  # the folders it made are gone too
  err = capsys.readouterr().err.splitlines()
  assert err[-1] == f"adam-optax compare: interrupted; nothing written to {out}"


def test_an_interrupt_in_the_first_seconds_is_one_line(
  tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
  # While the data load (before --out is made), and while the modules import (inside cli).
  def interrupt(*args: object) -> None:
    raise KeyboardInterrupt

  monkeypatch.setattr(sources, "load_datasets", interrupt)
  assert _compare(tmp_path / "out") == 130
  assert (
    capsys.readouterr().err
    == f"adam-optax compare: interrupted; nothing written to {tmp_path / 'out'}\n"
  )
  monkeypatch.setattr(compare, "add_arguments", interrupt)
  assert cli.main(["compare", "--quick"]) == 130
  assert capsys.readouterr().err == "adam-optax compare: interrupted\n"
  assert list(tmp_path.iterdir()) == []


def test_write_atomically_leaves_nothing_when_a_writer_fails(tmp_path: Path) -> None:
  def broken(path: Path) -> None:
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    report.write_atomically(tmp_path, {"a.txt": lambda p: p.write_text("a"), "b.txt": broken})
  assert list(tmp_path.iterdir()) == []


def test_every_optimizer_takes_one_learning_rate_per_run() -> None:
  # One vmapped step on f(p) = p^2 / 2 from p = 1 (g = 1): each run uses its own lr,
  # so SGD's step and the adaptive methods' first step scale with it.
  def first_update(factory: optimizers.Factory, lr: jax.Array) -> jax.Array:
    tx = optimizers.injected(factory, learning_rate=lr)
    params = jnp.ones(1)
    updates, _ = tx.update(params, tx.init(params), params)
    return updates[0]

  lrs = jnp.array([0.1, 0.2])
  for optimizer in optimizers.OPTIMIZERS.values():
    steps = jax.jit(jax.vmap(lambda lr, f=optimizer.factory: first_update(f, lr)))(lrs)
    assert steps[0] < 0, optimizer.name
    np.testing.assert_allclose(steps[1], 2 * steps[0], rtol=1e-5, err_msg=optimizer.name)


def test_adam_without_bias_correction_is_the_chain_without_it() -> None:
  grads = jnp.array([0.5, -2.0])
  params = jnp.zeros(2)
  # With b1 = b2 = 0 the bias correction divides by 1: both are the same step.
  same = [
    tx.update(grads, tx.init(params))[0]
    for tx in (
      ao.adam(0.1, b1=0.0, b2=0.0),
      optimizers.adam_without_bias_correction(0.1, b1=0.0, b2=0.0),
    )
  ]
  np.testing.assert_array_equal(same[0], same[1])
  # With the defaults and a constant gradient the uncorrected step is
  # (1 - b1^t) / sqrt(1 - b2^t) times Adam's -lr sign(g): 3.16 at t = 1, the
  # largest (6.57) at t = 12, as the docstring says.
  tx = optimizers.adam_without_bias_correction(0.1)
  state = tx.init(params)
  steps = []
  for _ in range(30):
    update, state = tx.update(grads, state)
    steps.append(update)
  ratios = np.abs(np.array(steps)[:, 0]) / 0.1
  t = np.arange(1, 31)
  np.testing.assert_allclose(ratios, (1 - 0.9**t) / np.sqrt(1 - 0.999**t), rtol=1e-4)
  assert ratios.argmax() + 1 == 12
  np.testing.assert_allclose([ratios[0], ratios.max()], [3.162, 6.569], rtol=1e-3)


@pytest.mark.parametrize(("load", "total"), [(data.load_digits, 1797), (data.load_mnist, 5000)])
def test_split_is_fixed_stratified_and_disjoint(load: object, total: int) -> None:
  dataset = load()
  assert len(dataset.y_train) + len(dataset.y_test) == total
  assert dataset.classes == 10
  train_share = np.bincount(dataset.y_train) / len(dataset.y_train)
  test_share = np.bincount(dataset.y_test) / len(dataset.y_test)
  np.testing.assert_allclose(train_share, test_share, atol=0.01)
  np.testing.assert_array_equal(load().y_test, dataset.y_test)
  standardized = data.standardize(dataset).x_train.reshape(len(dataset.y_train), -1)
  np.testing.assert_allclose(standardized.mean(axis=0), 0, atol=1e-5)
  assert np.all(np.isfinite(standardized))


def test_summarize_keeps_the_lowest_mean_loss_and_skips_diverged() -> None:
  records = [
    {"problem": "p", "optimizer": "o", "learning_rate": lr, "seed": seed, "final_train_loss": loss}
    for lr, seed, loss in [
      (1.0, 0, 0.1),
      (1.0, 1, None),  # best on one seed, diverged on the other
      (0.1, 0, 0.5),
      (0.1, 1, 0.7),
      (0.01, 0, 0.4),
      (0.01, 1, 0.9),
    ]
  ]
  (summary,) = report.summarize(records, report.FINAL)
  assert summary.record["learning_rate"] == 0.1
  assert (summary.diverged, summary.total) == (1, 6)
  assert [r["seed"] for r in summary.runs] == [0, 1]
  assert report.mean_std(summary.values("final_train_loss")) == "0.6 ± 0.1"


@pytest.mark.parametrize("size", [3, 5])
def test_conv_is_a_same_padded_convolution(size: int) -> None:
  conv = models.Conv(3, 5, kernel=size, rngs=nnx.Rngs(0))
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  kernel = conv.kernel[...].reshape(size, size, 3, 5)  # patches are (row, column, channel)
  expected = jax.lax.conv_general_dilated(
    images, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  with jax.default_matmul_precision("float32"):  # a GPU's default is TensorFloat-32
    np.testing.assert_allclose(conv(images), expected + conv.bias[...], rtol=1e-5, atol=1e-5)
