r"""``adam-optax states``: low-bit moments against float32 Adam and torchao, in one run.

Three measurements of ``ao.adam`` with :class:`adam_optax.Quantized` moments:

* **bytes/param**: the bytes of the state's arrays (codes and scales) over the
  parameter count, for one leaf of ``--size`` parameters.
* **quality** (:mod:`adam_optax.benchmarks.fidelity`): how far training departs from
  float32 Adam's on the same data, ours from ``ao.adam``'s and torchao's ``AdamW8bit``/
  ``AdamW4bit`` (``weight_decay=0``: Adam) from ``torch.optim.Adam``'s, where torchao is
  installed: on a least-squares problem whose gradient scales span :math:`10^3` within
  every block, the final loss ratio after 300 full-batch steps (lr 1e-3) and the relative
  deviation of the parameters; on torchao's low-bit test model, the largest gap of any
  parameter after 20 steps.
* **speed**: one jitted, donated step (update and ``optax.apply_updates``) of
  one leaf, every method timed round-robin (:mod:`adam_optax.benchmarks.rounds`),
  ratios the median of per-round ratios to ``optax.adam``; and the step's peak
  memory by XLA's accounting (:func:`adam_optax.benchmarks.compiles.step_memory_bytes`).
  ``ao.amsgrad`` with 8-bit moments and maximum is timed beside ``optax.amsgrad``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import adam_optax as ao
from adam_optax.benchmarks import compiles, fidelity, rounds
from adam_optax.benchmarks import report as bench_report
from adam_optax.benchmarks.fidelity import LEARNING_RATE
from adam_optax.experiments import flags


def formats() -> dict[str, ao.Quantized | None]:
  """The storage formats compared, by name (``None``: float32)."""
  return {"float32": None, "8-bit": ao.Quantized(8), "4-bit": ao.Quantized(4)}


def torchao_unavailable() -> str | None:
  """Why torchao's rows are left out (it, or PyTorch, cannot be imported), or ``None``."""
  try:
    import torch  # noqa: F401
    import torchao.optim  # noqa: F401
  except ImportError as error:
    return f"torchao is not installed ({error})"
  return None


def torchao_optimizers() -> dict[str, Callable[[Any], Any]]:
  """The 8-bit and 4-bit Adam of torchao (AdamW with no decay) where installed, and torch's Adam."""
  if torchao_unavailable() is not None:
    return {}
  import torch
  from torchao.optim import AdamW4bit, AdamW8bit

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
  # AMSGrad's running maximum is stored like the moments: its step beside its float32 one.
  eight = formats()["8-bit"]
  txs["optax.amsgrad float32"] = optax.amsgrad(LEARNING_RATE)
  txs["ao.amsgrad 8-bit"] = ao.amsgrad(LEARNING_RATE, mu_dtype=eight, nu_dtype=eight)
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


def quality(seeds: int) -> dict[str, dict[str, Any]]:
  """How each low-bit Adam follows its own float32 Adam, medians over ``seeds`` problems.

  Ours against ``ao.adam``, torchao's against ``torch.optim.Adam``: on
  :func:`~adam_optax.benchmarks.fidelity.least_squares`, the final loss ratio
  (``loss_ratio``, and every seed's in ``loss_ratios``) and the parameters'
  relative ``deviation``; on torchao's test model
  (:func:`~adam_optax.benchmarks.fidelity.two_layer`), the largest parameter gap, ``drift``.
  """
  methods = {f"ao.adam {name}": fmt for name, fmt in formats().items()}
  makers = {f"torchao {name}": make for name, make in torchao_optimizers().items()}
  figures: dict[str, dict[str, list[float]]] = {}
  for seed in range(seeds):
    for problem in (fidelity.least_squares(seed), fidelity.two_layer(seed)):
      runs = {
        name: fidelity.train(ao.adam(LEARNING_RATE, mu_dtype=fmt, nu_dtype=fmt), problem)
        for name, fmt in methods.items()
      }
      runs |= {name: fidelity.torch_train(make, problem) for name, make in makers.items()}
      for name, params in runs.items():
        reference = runs[("ao.adam" if name.startswith("ao") else "torchao") + " float32"]
        record = figures.setdefault(name, {})
        if problem.stream is None:  # least squares
          ratio = fidelity.final_loss(problem, params) / fidelity.final_loss(problem, reference)
          record.setdefault("loss_ratios", []).append(ratio)
          record.setdefault("deviation", []).append(fidelity.deviation(params, reference))
        else:
          record.setdefault("drift", []).append(fidelity.drift(params, reference))
  return {
    name: {
      "loss_ratio": statistics.median(record["loss_ratios"]),
      "loss_ratios": record["loss_ratios"],
      "deviation": statistics.median(record["deviation"]),
      "drift": statistics.median(record["drift"]),
    }
    for name, record in figures.items()
    if "float32" not in name
  }


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the flags of ``adam-optax states`` to ``parser``."""
  positive = flags.positive_int
  parser.add_argument(
    "--size", type=positive, default=1 << 24, help="params of the timed leaf (16M)"
  )
  parser.add_argument("--rounds", type=positive, default=5, help="round-robin rounds (default 5)")
  parser.add_argument(
    "--repeats", type=positive, default=2, help="timed calls per round (default 2)"
  )
  parser.add_argument(
    "--seeds", type=positive, default=3, help="least-squares problems (default 3)"
  )
  parser.add_argument(
    "--json", type=flags.output_file, metavar="PATH", help="write the report as JSON"
  )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
  """Measures, prints the table, optionally writes JSON; returns 0."""
  del parser  # the flags were checked as they were parsed
  torchao_skipped = torchao_unavailable()
  if torchao_skipped is not None:
    print(f"adam-optax states: torchao rows skipped: {torchao_skipped}", file=sys.stderr)
  report: dict[str, Any] = {
    "load_at_start": list(os.getloadavg()),
    "device": f"{jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}, "
    f"{os.cpu_count()} cores)",
    "versions": _versions(),
    "size": args.size,
    "torchao_skipped": torchao_skipped,
  }
  rows = speed(args.size, args.rounds, args.repeats)
  for name, row in quality(args.seeds).items():
    rows.setdefault(name, {}).update(row)
  report["rows"] = rows
  report["load_at_end"] = list(os.getloadavg())
  print(table(report))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)
  return 0


def _versions() -> dict[str, str]:
  """The versions of the installed packages among those the report names."""
  names = ("jax", "optax", "torch", "torchao")
  found = {name: bench_report.package_version(name) for name in names}
  return {name: version for name, version in found.items() if version is not None}


# The table's figures: (key of a row, heading, format).
COLUMNS = (
  ("bytes_per_param", "bytes/param", "{:.3f}"),
  ("peak_bytes_per_param", "peak B/param", "{:.2f}"),
  ("ms", "ms/step", "{:.1f}"),
  ("time_vs_optax", "/ optax", "{:.2f}"),
  ("loss_ratio", "loss / fp32", "{:.4f}"),
  ("deviation", "deviation", "{:.3g}"),
  ("drift", "drift (model)", "{:.3g}"),
)


def table(report: dict[str, Any]) -> str:
  """The report as plain text: the context, then one aligned row per method ("-": not measured)."""
  cells = [["method", *(title for _, title, _ in COLUMNS)]]
  for name, row in report["rows"].items():
    cells.append([name, *(fmt.format(row[key]) if key in row else "-" for key, _, fmt in COLUMNS)])
  lines = [
    f"device: {report['device']}; {report['versions']}; leaf of {report['size']:,} params; "
    f"load {report['load_at_start'][0]:.2f} -> {report['load_at_end'][0]:.2f}",
    *bench_report.aligned(cells),
  ]
  if report.get("torchao_skipped"):
    lines.append(f"torchao rows skipped: {report['torchao_skipped']}")
  return "\n".join(lines)
