"""Low-bit Adam against float32 Adam and against torchao (adam_optax.benchmarks.fidelity)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax
import pytest

import adam_optax as ao
from adam_optax.benchmarks import fidelity, lowbit

PROBLEMS: dict[str, Callable[[], fidelity.Problem]] = {
  "least_squares": lambda: fidelity.least_squares(0),
  "two_layer": lambda: fidelity.two_layer(0),
}


def _adam(bits: int | None = None) -> optax.GradientTransformation:
  fmt = None if bits is None else ao.Quantized(bits)
  return ao.adam(fidelity.LEARNING_RATE, mu_dtype=fmt, nu_dtype=fmt)


@pytest.fixture(scope="module")
def float32_runs() -> dict[str, tuple[list[Any], list[Any]]]:
  """Per problem, the final parameters of float32 ``ao.adam`` and ``torch.optim.Adam``."""
  torch = pytest.importorskip("torch")
  runs = {}
  for name, make in PROBLEMS.items():
    problem = make()
    adam = lambda ps: torch.optim.Adam(ps, lr=fidelity.LEARNING_RATE)  # noqa: E731
    runs[name] = fidelity.train(_adam(), problem), fidelity.torch_train(adam, problem)
  return runs


@pytest.mark.parametrize("name", PROBLEMS.keys())
def test_jax_and_torch_train_the_same_problem(
  name: str, float32_runs: dict[str, tuple[list[Any], list[Any]]]
) -> None:
  # float32 Adam in both: what separates the low-bit runs is their storage, not the harness.
  ours, theirs = float32_runs[name]
  assert fidelity.deviation(ours, theirs) <= 1e-4
  moved = fidelity.drift(ours, PROBLEMS[name]().params)
  assert fidelity.drift(ours, theirs) <= 1e-3 * moved
  assert moved > 10 * fidelity.LEARNING_RATE  # it trained


def test_eight_bit_converges_like_float32(
  float32_runs: dict[str, tuple[list[Any], list[Any]]],
) -> None:
  problem = fidelity.least_squares(0)
  ours = fidelity.final_loss(problem, fidelity.train(_adam(8), problem))
  reference = fidelity.final_loss(problem, float32_runs["least_squares"][0])
  assert abs(ours / reference - 1) <= 0.005


def test_four_bit_follows_float32_at_least_as_closely_as_torchao(
  float32_runs: dict[str, tuple[list[Any], list[Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
  # At 8 bits torchao's map reads small second moments as 0 and its runs leave float32
  # Adam's by orders of magnitude (adam-optax states measures it): the close contest is here.
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchao")
  # torchao compiles its step with torch.compile; eagerly the same operations give the same
  # 4-bit figures to the bit, without a minute of compiling per shape.
  monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
  four_bit = lowbit.torchao_optimizers()["4-bit"]
  figures = {}
  for name, make in PROBLEMS.items():
    problem = make()
    runs = {
      "ours": fidelity.train(_adam(4), problem),
      "torchao": fidelity.torch_train(four_bit, problem),
    }
    for who, low in runs.items():
      reference = float32_runs[name][0 if who == "ours" else 1]
      figures[who, name, "deviation"] = fidelity.deviation(low, reference)
      figures[who, name, "drift"] = fidelity.drift(low, reference)
      ratio = fidelity.final_loss(problem, low) / fidelity.final_loss(problem, reference)
      figures[who, name, "loss excess"] = abs(ratio - 1)
  # Closer to float32 Adam by every measure: the parameters' relative deviation and their
  # largest gap on both problems (on torchao's model 0.90x torchao's on this seed; issue 17),
  # and the final loss of the least-squares problem.
  for (who, name, measure), value in figures.items():
    if who == "ours" and (name, measure) != ("two_layer", "loss excess"):
      assert value <= figures["torchao", name, measure], (name, measure, figures)
