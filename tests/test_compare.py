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
from adam_optax.experiments import data, models, optimizers, report, train
from adam_optax.experiments.problems import PROBLEMS

# Small runs: every problem with Adam (and the VAE's bias-correction study).
FLAGS = ["--optimizers", "adam", "--steps", "20", "--seeds", "2"]
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
  records = json.loads((results / "results.json").read_text())
  lrs = len(optimizers.BIAS_CORRECTION_LEARNING_RATES)
  # 3 classifiers x 3 lrs x 2 seeds + VAE 2 variants x 2 b1 x 3 b2 x lrs x 2 seeds.
  assert len(records) == 3 * 3 * 2 + 2 * 2 * 3 * lrs * 2
  for record in records:
    assert {"problem", "optimizer", "learning_rate", "seed", "final_train_loss"} <= set(record)
    assert len(record["train_loss_curve"]) == len(record["curve_steps"]) == 20
    is_vae = record["problem"] == "vae"
    assert (record["test_accuracy"] is None) == is_vae
    assert ("b1" in record) == is_vae
  logreg = [r for r in records if r["problem"] == "logreg"]
  assert all(r["final_train_loss"] < r["train_loss_curve"][0] for r in logreg)
  assert {r["learning_rate"] for r in logreg} == set(optimizers.OPTIMIZERS["adam"].learning_rates)
  table = (results / "results.md").read_text()
  for name in PROBLEMS:
    assert f"## {name} (20 steps, 2 seeds)" in table
    assert (results / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
  assert "| optimizer | best lr | final train loss | test accuracy (%) | diverged |" in printed
  assert "| adam_no_bias_correction | 0.9 | 0.9999 |" in printed
  probe = tmp_path / "probe"
  probe.write_text("")  # the results get the permissions of any new file
  assert (results / "results.json").stat().st_mode == probe.stat().st_mode
  assert sorted(p.name for p in results.iterdir()) == sorted(
    ["results.json", "results.md", *(f"{name}.png" for name in PROBLEMS)]
  )
  # The same seeds give the same numbers.
  assert _compare(tmp_path / "again") == 0
  assert (tmp_path / "again" / "results.json").read_text() == (results / "results.json").read_text()


@pytest.mark.parametrize(
  ("flags", "message"),
  [
    (["--problems", "logreg,nope"], "unknown problem 'nope'"),
    (["--optimizers", "adamw"], "unknown optimizer 'adamw'"),
    (["--steps", "0"], "expected a positive integer, got '0'"),
    (["--steps", "-5"], "expected a positive integer, got '-5'"),
    (["--steps", "ten"], "expected a positive integer, got 'ten'"),
    (["--seeds", "0"], "expected a positive integer, got '0'"),
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


def test_interrupted_run_writes_nothing(
  tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
  real_train = train.train
  calls = []

  def interrupted_after_first(*args: object, **kwargs: object) -> train.TrainResult:
    calls.append(1)
    if len(calls) > 1:
      raise KeyboardInterrupt
    return real_train(*args, **kwargs)

  monkeypatch.setattr(train, "train", interrupted_after_first)
  out = tmp_path / "out"
  flags = ["--problems", "logreg", "--optimizers", "adam,sgd_nesterov,adagrad"]
  assert _compare(out, *flags) == 130
  assert len(calls) >= 2
  assert list(out.iterdir()) == []
  assert "interrupted" in capsys.readouterr().err


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
  # With the defaults the uncorrected first step is (1 - b1) / sqrt(1 - b2) ~ 3.16 times
  # Adam's -lr sign(g): m_1 = 0.1 g and v_1 = 0.001 g^2 are not divided by 1 - b^t.
  tx = optimizers.adam_without_bias_correction(0.1)
  update, _ = tx.update(grads, tx.init(params))
  np.testing.assert_allclose(update, -0.1 * 0.1 / np.sqrt(0.001) * np.sign(grads), rtol=1e-5)


def test_split_is_fixed_stratified_and_disjoint() -> None:
  digits = data.load_digits()
  assert len(digits.y_train) + len(digits.y_test) == 1797
  train_share = np.bincount(digits.y_train) / len(digits.y_train)
  test_share = np.bincount(digits.y_test) / len(digits.y_test)
  np.testing.assert_allclose(train_share, test_share, atol=0.01)
  np.testing.assert_array_equal(data.load_digits().y_test, digits.y_test)
  standardized = data.standardize(digits).x_train.reshape(len(digits.y_train), -1)
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
  (summary,) = report.summarize(records)
  assert summary.record["learning_rate"] == 0.1
  assert (summary.diverged, summary.total) == (1, 6)
  assert [r["seed"] for r in summary.runs] == [0, 1]
  assert report.mean_std(summary.values("final_train_loss")) == "0.6 ± 0.1"


def test_conv3x3_is_a_same_padded_convolution() -> None:
  conv = models.Conv3x3(3, 5, rngs=nnx.Rngs(0))
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  kernel = conv.kernel[...].reshape(3, 3, 3, 5)  # patches are ordered (row, column, channel)
  expected = jax.lax.conv_general_dilated(
    images, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_allclose(conv(images), expected + conv.bias[...], rtol=1e-5, atol=1e-5)
