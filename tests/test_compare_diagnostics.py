"""``adam-optax compare --diagnostics``: curves, bounds, averaging, figures; nothing else moves."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adam_optax import cli
from adam_optax.diagnosis import diagnostics as read_diagnostics
from adam_optax.experiments import diagnostics, optimizers, report

STEPS = 20
FLAGS = ["--quick", "--problems", "logreg", "--optimizers", "adam,sgd_nesterov"]
FLAGS += ["--steps", str(STEPS), "--seeds", "1"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The record of a run without --diagnostics (and of a baseline optimizer with it).
PLAIN_KEYS = {
  "problem",
  "diagnostics",
  "states",
  "optimizer",
  "seed",
  "learning_rate",
  "steps",
  "final_train_loss",
  "test_loss",
  "test_accuracy",
  "curve_steps",
  "train_loss_curve",
  "checkpoint_steps",
  "checkpoint_train_loss",
}
WATCHED_KEYS = {
  "average_beta",
  "averaged_test_loss",
  "averaged_test_accuracy",
  *(f"{name}_curve" for name in diagnostics.CURVES),
}


def _compare(out: Path, *flags: str) -> int:
  return cli.main(["compare", *FLAGS, *flags, "--out", str(out)])


def test_diagnostics_record_curves_bounds_and_averaging_and_change_nothing_else(
  tmp_path: Path,
) -> None:
  # Both runs in one test: the second is the reference the first is compared with.
  assert _compare(tmp_path / "watched", "--diagnostics") == 0
  assert _compare(tmp_path / "plain") == 0
  watched = json.loads((tmp_path / "watched" / "results.json").read_text())["runs"]
  plain = json.loads((tmp_path / "plain" / "results.json").read_text())["runs"]
  lrs = optimizers.GRID_POINTS
  assert len(watched) == len(plain) == 2 * lrs  # 2 optimizers x the learning rates x 1 seed
  for with_flag, without in zip(watched, plain, strict=True):
    assert set(without) == PLAIN_KEYS
    if with_flag["optimizer"] == "sgd_nesterov":
      assert with_flag == without  # baselines are untouched
      continue
    assert set(with_flag) == PLAIN_KEYS | WATCHED_KEYS
    assert (with_flag["diagnostics"], without["diagnostics"]) == (True, False)
    # Diagnostics and averaging leave the updates bit-identical: the same training.
    same = PLAIN_KEYS - {"diagnostics"}
    assert {k: with_flag[k] for k in same} == {k: without[k] for k in same}
    assert with_flag["average_beta"] == diagnostics.DEFAULT_AVERAGE_BETA
    curves = {name: np.array(with_flag[f"{name}_curve"]) for name in diagnostics.CURVES}
    assert all(len(curve) == STEPS for curve in curves.values())
    np.testing.assert_array_equal(curves["above_strict"], 0.0)
    assert np.all(curves["step_max"] <= curves["bound_strict"] * (1 + 1e-5))
    # Logistic regression follows the paper's alpha_t = alpha / sqrt(t).
    alpha_t = with_flag["learning_rate"] / np.sqrt(np.arange(1, STEPS + 1))
    np.testing.assert_allclose(curves["alpha"], alpha_t, rtol=1e-5)
    # Adam's first step is alpha sign(g) on every coordinate with a gradient.
    np.testing.assert_allclose(curves["step_max"][0], with_flag["learning_rate"], rtol=1e-4)
    assert 0 < curves["snr_mean"][-1] < curves["snr_mean"][0] <= 1  # annealing
    for name in ("test_accuracy", "averaged_test_accuracy"):
      assert 0 < with_flag[name] <= 1
    assert with_flag["averaged_test_accuracy"] != with_flag["test_accuracy"]
  results, other = tmp_path / "watched", tmp_path / "plain"
  assert sorted(p.name for p in results.iterdir()) == sorted(
    ["results.json", "results.md", "logreg.png", "logreg_diagnostics.png"]
  )
  assert (results / "logreg_diagnostics.png").read_bytes().startswith(PNG_MAGIC)
  assert not (other / "logreg_diagnostics.png").exists()
  table = (results / "results.md").read_text()
  # The summary is the same; the diagnostics sections follow it.
  assert table.startswith((other / "results.md").read_text())
  assert "## Accuracy with and without averaging (`--diagnostics`)" in table
  assert "| logreg | adam |" in table
  assert "| logreg | sgd_nesterov |" not in table
  assert "β = 0.99" in table


@pytest.mark.parametrize(
  ("flags", "message"),
  [
    (
      ["--problems", "logreg", "--optimizers", "sgd_nesterov,adagrad", "--diagnostics"],
      "--diagnostics: no optimizer chosen for logreg records diagnostics; add one of adam,adamax",
    ),
    (["--quick", "--average-beta", "0.9"], "--average-beta needs --diagnostics"),
    (["--diagnostics", "--average-beta", "1"], "expected a number in [0, 1), got '1'"),
    (["--diagnostics", "--average-beta", "x"], "expected a number in [0, 1), got 'x'"),
  ],
)
def test_diagnostics_flag_errors_are_one_line(
  flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["compare", *flags, "--out", str(tmp_path / "out")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert err.startswith("adam-optax compare: error: ")
  assert message in err
  assert not (tmp_path / "out").exists()


def test_without_bias_correction_records_its_own_strict_bound() -> None:
  # A constant gradient: the uncorrected m_t / sqrt(v_t) = (1 - b1^t) / sqrt(1 - b2^t)
  # grows past the paper's bound (1 - b1) / sqrt(1 - b2) = 10: figure 4's instability.
  lr, b1, b2 = 0.01, 0.9, 0.9999
  watched = optimizers.adam_without_bias_correction(lr, b1, b2, diagnostics=True)
  plain = optimizers.adam_without_bias_correction(lr, b1, b2)
  params = jnp.zeros(3)
  grads = jnp.array([1.0, -2.0, 0.5])

  def step(states: tuple, _: None) -> tuple[tuple, tuple]:
    watched_updates, watched_state = watched.update(grads, states[0])
    plain_updates, plain_state = plain.update(grads, states[1])
    stats = read_diagnostics(watched_state)
    return (watched_state, plain_state), (watched_updates, plain_updates, stats)

  states = (watched.init(params), plain.init(params))
  _, (watched_updates, plain_updates, stats) = jax.jit(
    lambda states: jax.lax.scan(step, states, length=30)
  )(states)
  np.testing.assert_array_equal(watched_updates, plain_updates)
  t = np.arange(1, 31)
  expected = lr * (1 - b1**t) / np.sqrt(1 - b2**t)
  np.testing.assert_allclose(stats["step_max"], expected, rtol=1e-3)
  np.testing.assert_array_equal(stats["above_strict"], 0.0)
  np.testing.assert_allclose(stats["bound_paper"], lr * 10, rtol=1e-3)
  # Step 1 ties with the paper's bound; from step 2 on every coordinate is above it.
  assert stats["above_paper"][0] == 0
  np.testing.assert_array_equal(stats["above_paper"][1:], 1.0)


def _vae_summary(beta: float) -> report.Summary:
  record = {"problem": "vae", "optimizer": "adam", "b1": 0.9, "b2": 0.999, "learning_rate": 0.01}
  steps = [1, 2, 3, 4]
  runs = tuple(
    {
      **record,
      "seed": seed,
      "diagnostics": True,
      "steps": 4,
      "average_beta": beta,
      "test_loss": 30.0 + seed,
      "test_accuracy": None,
      "averaged_test_loss": 29.0 + seed,
      "averaged_test_accuracy": None,
      "curve_steps": steps,
      "snr_mean_curve": [1.0, 0.5, 0.25, 0.2],
      "alpha_curve": [0.01] * 4,
      "step_max_curve": [0.01, 0.012, 0.011, 0.01],
      "bound_paper_curve": [0.0316] * 4,
      "bound_strict_curve": [0.01, 0.013, 0.014, 0.015],
      "above_paper_curve": [0.0] * 4,
      "above_strict_curve": [0.0] * 4,
    }
    for seed in (0, 1)
  )
  return report.Summary(record, runs, diverged=0, total=2)


def test_markdown_reports_the_vae_loss_without_accuracy_and_draws_the_default_betas() -> None:
  summary = _vae_summary(beta=0.95)
  text = diagnostics.markdown([summary])
  assert "β = 0.95" in text
  # No accuracy for the VAE: dashes, then the test loss with and without averaging.
  assert "| vae | adam (β1 0.9, β2 0.999) | 0.01 | – | – | 30.5 ± 0.5 | 29.5 ± 0.5 |" in text
  # SNR over the first and last tenth (one window each), max step 1.2 alpha, bounds / alpha.
  assert "| vae | adam (β1 0.9, β2 0.999) | 0.01 | 1 | 0.2 | 1.2 | 3.16 | 1.5 | 0 | 0 |" in text
  assert diagnostics.markdown([report.Summary({}, ({"test_loss": 1.0},), 0, 1)]) == ""
  other = report.Summary({**summary.record, "b2": 0.99}, summary.runs, 0, 2)
  assert diagnostics.figure_settings([other, summary]) == [summary]


def test_instrumented_factories_are_equal_static_arguments() -> None:
  # Equal wrappers hash alike, so jax.jit compiles one program per problem and optimizer.
  adam = optimizers.OPTIMIZERS["adam"]
  first, second = diagnostics.instrument(adam), diagnostics.instrument(adam)
  assert first.factory == second.factory
  assert hash(first.factory) == hash(second.factory)
  assert first.factory != diagnostics.instrument(optimizers.OPTIMIZERS["adamax"]).factory
