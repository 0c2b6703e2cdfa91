r"""``adam-optax states``: low-bit moments against float32 Adam and torchao, in one run.

Three measurements of ``ao.adam`` with :class:`adam_optax.Quantized` moments:

* **bytes/param**: the bytes of the state's arrays (codes and scales) over the
  parameter count, for one leaf of ``--size`` parameters.
* **quality**: the final loss after 300 full-batch steps (lr 1e-3) of a
  least-squares problem whose feature scales, and so gradient scales, span
  :math:`10^3` within every block, relative to float32 Adam on the same data;
  torchao's ``AdamW8bit``/``AdamW4bit`` (``weight_decay=0``: Adam) relative to
  ``torch.optim.Adam`` on the same data, where torchao is installed.
* **speed**: one jitted, donated step (update and ``optax.apply_updates``) of
  one leaf, every method timed round-robin (:mod:`adam_optax.benchmarks.rounds`),
  ratios the median of per-round ratios to ``optax.adam``; and the step's peak
  memory by XLA's accounting (:func:`adam_optax.benchmarks.compiles.step_memory_bytes`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_optax as ao
from adam_optax.benchmarks import compiles, rounds

LEARNING_RATE = 1e-3
STEPS = 300


def formats() -> dict[str, ao.Quantized | None]:
  """The storage formats compared, by name (``None``: float32)."""
  return {"float32": None, "8-bit": ao.Quantized(8), "4-bit": ao.Quantized(4)}


@dataclasses.dataclass(frozen=True)
class LeastSquares:
  r"""Least squares, :math:`\min_W \tfrac12 \operatorname{mean}_n \|W x_n - y_n\|^2`.

  :math:`W \in \mathbb R^{128 \times 64}`.

  Feature :math:`i` has scale :math:`c_i = 10^{u_i}`, :math:`u_i \sim U(-1.5, 1.5)`, so
  the gradient of row-major :math:`W` spans :math:`10^3` inside every block of 128 or 256
  elements; :math:`W^\star \sim 0.03\, N(0, 1)`, targets with noise 0.1.
  """

  features: np.ndarray
  targets: np.ndarray

  @property
  def shape(self) -> tuple[int, int]:
    """The shape of :math:`W`."""
    return (self.targets.shape[1], self.features.shape[1])


def least_squares(seed: int = 0, examples: int = 1024) -> LeastSquares:
  """The problem of :class:`LeastSquares`, float32, from ``seed``."""
  rng = np.random.default_rng(seed)
  scales = 10 ** rng.uniform(-1.5, 1.5, 64)
  features = rng.normal(size=(examples, 64)) * scales
  target_weights = rng.normal(size=(128, 64)) * 0.03
  targets = features @ target_weights.T + 0.1 * rng.normal(size=(examples, 128))
  return LeastSquares(features.astype(np.float32), targets.astype(np.float32))


def final_loss(
  tx: optax.GradientTransformation, problem: LeastSquares, steps: int = STEPS
) -> float:
  """The loss after ``steps`` full-batch steps of ``tx`` from :math:`W = 0`."""
  x, y = jnp.asarray(problem.features), jnp.asarray(problem.targets)

  def loss(w: jax.Array) -> jax.Array:
    return 0.5 * jnp.mean(jnp.sum((x @ w.T - y) ** 2, axis=1))

  def step(carry: Any, _: None) -> tuple[Any, None]:
    w, state = carry
    updates, state = tx.update(jax.grad(loss)(w), state, w)
    return (optax.apply_updates(w, updates), state), None

  w = jnp.zeros(problem.shape, jnp.float32)
  w, _ = jax.jit(lambda w, s: jax.lax.scan(step, (w, s), None, steps)[0])(w, tx.init(w))
  return float(loss(w))


def torch_final_loss(make_optimizer: Callable[[Any], Any], problem: LeastSquares) -> float:
  """:func:`final_loss` for a torch optimizer, ``make_optimizer([param])``."""
  import torch

  x, y = torch.from_numpy(problem.features), torch.from_numpy(problem.targets)
  w = torch.nn.Parameter(torch.zeros(problem.shape))
  optimizer = make_optimizer([w])

  def loss() -> torch.Tensor:
    return 0.5 * ((x @ w.T - y) ** 2).sum(1).mean()

  for _ in range(STEPS):
    optimizer.zero_grad()
    loss().backward()
    optimizer.step()
  with torch.no_grad():
    return float(loss())


def torchao_optimizers() -> dict[str, Callable[[Any], Any]]:
  """The 8-bit and 4-bit Adam of torchao (AdamW with no decay) where installed, and torch's Adam."""
  try:
    import torch
    from torchao.optim import AdamW4bit, AdamW8bit
  except ImportError:
    return {}
  return {
    "float32": lambda ps: torch.optim.Adam(ps, lr=LEARNING_RATE),
    "8-bit": lambda ps: AdamW8bit(ps, lr=LEARNING_RATE, weight_decay=0.0),
    "4-bit": lambda ps: AdamW4bit(ps, lr=LEARNING_RATE, weight_decay=0.0),
  }


def bytes_per_param(state: Any, params: Any) -> float:
  """The bytes of every array of ``state`` (codes and scales included) per parameter."""
  size = sum(x.size for x in jax.tree.leaves(params))
  return sum(x.nbytes for x in jax.tree.leaves(state)) / size


def _jax_step(tx: optax.GradientTransformation) -> Callable[[Any], Any]:
  def step(carry: Any) -> Any:
    params, grads, state = carry
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), grads, state

  return jax.jit(step, donate_argnums=0)


def _torch_step(make_optimizer: Callable[[Any], Any], size: int) -> tuple[Callable, Any]:
  import torch

  param = torch.nn.Parameter(torch.full((size,), 0.5))
  param.grad = torch.full_like(param, 0.01)
  optimizer = make_optimizer([param])

  def step(carry: Any) -> Any:
    optimizer.step()
    return carry

  return step, None


def speed(size: int, n_rounds: int, repeats: int) -> dict[str, dict[str, float]]:
  """Step time (also over ``optax.adam``'s, per round), bytes/param and peak bytes for one leaf."""
  params = jnp.full((size,), 0.5, jnp.float32)
  grads = jnp.full((size,), 0.01, jnp.float32)
  txs = {"optax.adam float32": optax.adam(LEARNING_RATE)}
  for name, fmt in formats().items():
    if fmt is not None:
      txs[f"ao.adam {name}"] = ao.adam(LEARNING_RATE, mu_dtype=fmt, nu_dtype=fmt)
  calls, carries, rows = {}, {}, {}
  for name, tx in txs.items():
    state = tx.init(params)
    calls[name] = _jax_step(tx)
    carries[name] = (params + 0, grads + 0, state)
    compiled = calls[name].lower(*[carries[name]]).compile()
    rows[name] = {
      "bytes_per_param": bytes_per_param(state, params),
      "peak_bytes_per_param": compiles.step_memory_bytes(compiled) / size,
    }
  for name, make in torchao_optimizers().items():
    if name != "float32":
      calls[f"torchao {name}"], carries[f"torchao {name}"] = _torch_step(make, size)
      rows[f"torchao {name}"] = {}
  seconds = rounds.round_robin(calls, carries, n_rounds, repeats)
  per_round = {name: [statistics.median(s) for s in samples] for name, samples in seconds.items()}
  base = per_round["optax.adam float32"]
  for name, times in per_round.items():
    rows[name]["ms"] = 1e3 * statistics.median(times)
    rows[name]["time_vs_optax"] = rounds.median_ratio(times, base)
  return rows


def quality(seeds: int) -> dict[str, dict[str, float]]:
  """Final loss relative to float32 Adam, median over ``seeds`` problems, ours and torchao's."""
  ratios: dict[str, list[float]] = {}
  for seed in range(seeds):
    problem = least_squares(seed)
    losses = {
      f"ao.adam {name}": final_loss(ao.adam(LEARNING_RATE, mu_dtype=fmt, nu_dtype=fmt), problem)
      for name, fmt in formats().items()
    }
    losses |= {
      f"torchao {name}": torch_final_loss(make, problem)
      for name, make in torchao_optimizers().items()
    }
    for name, value in losses.items():
      reference = "ao.adam float32" if name.startswith("ao") else "torchao float32"
      ratios.setdefault(name, []).append(value / losses[reference])
  return {
    name: {"loss_ratio": statistics.median(r), "loss_ratios": r}
    for name, r in ratios.items()
    if "float32" not in name
  }


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the flags of ``adam-optax states`` to ``parser``."""
  parser.add_argument("--size", type=int, default=1 << 24, help="params of the timed leaf (16M)")
  parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds (default 5)")
  parser.add_argument("--repeats", type=int, default=2, help="timed calls per round (default 2)")
  parser.add_argument("--seeds", type=int, default=3, help="least-squares problems (default 3)")
  parser.add_argument("--json", metavar="PATH", help="write the report as JSON")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
  """Measures, prints the table, optionally writes JSON; returns 0."""
  if args.size < 1 or args.rounds < 1 or args.repeats < 1 or args.seeds < 1:
    parser.error("--size, --rounds, --repeats and --seeds must be >= 1")
  report: dict[str, Any] = {
    "load_at_start": list(os.getloadavg()),
    "device": f"{jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}, "
    f"{os.cpu_count()} cores)",
    "versions": _versions(),
    "size": args.size,
  }
  rows = speed(args.size, args.rounds, args.repeats)
  for name, row in quality(args.seeds).items():
    rows.setdefault(name, {}).update(row)
  report["rows"] = rows
  report["load_at_end"] = list(os.getloadavg())
  print(_table(report))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)
  return 0


def _versions() -> dict[str, str]:
  import importlib.metadata as metadata

  found = {}
  for package in ("jax", "optax", "torch", "torchao"):
    with contextlib.suppress(metadata.PackageNotFoundError):
      found[package] = metadata.version(package)
  return found


def _table(report: dict[str, Any]) -> str:
  def cell(row: dict[str, float], key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "-"

  lines = [
    f"device: {report['device']}; {report['versions']}; leaf of {report['size']:,} params; "
    f"load {report['load_at_start'][0]:.2f} -> {report['load_at_end'][0]:.2f}",
    f"{'method':22} {'bytes/param':>11} {'peak B/param':>12} {'ms/step':>9} "
    f"{'/ optax':>8} {'loss / fp32':>11}",
  ]
  for name, row in report["rows"].items():
    lines.append(
      f"{name:22} {cell(row, 'bytes_per_param', '11.3f')} "
      f"{cell(row, 'peak_bytes_per_param', '12.2f')} {cell(row, 'ms', '9.1f')} "
      f"{cell(row, 'time_vs_optax', '8.2f')} {cell(row, 'loss_ratio', '11.4f')}"
    )
  return "\n".join(lines)
