"""The torch anchors of low-bit states on one leaf: Adam fused, torchao and bitsandbytes.

``python .ci/lowbit_anchors.py --size 268435456 --json anchors.json`` times one
step of each optimizer below that this machine can import, on one float32 leaf
on the CUDA device (else the CPU), round-robin as ``adam-optax bench`` does
(:func:`adam_optax.benchmarks.rounds.round_robin`), and prints the time per
step, the state's bytes per parameter and the time over the fused float32
step's in the same rounds: the figures that ``adam-optax states`` compares
ours with on a GPU.

* ``torch Adam fused``: ``torch.optim.Adam(fused=True)``, float32 states;
* ``torchao AdamW8bit`` / ``AdamW4bit`` (``weight_decay=0``: Adam; compiled
  by ``torch.compile`` at their first step, which the warm-up absorbs);
* ``bitsandbytes Adam8bit`` (its CUDA kernel; CUDA only).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
from collections.abc import Callable
from typing import Any

from adam_optax.benchmarks import rounds

LEARNING_RATE = 1e-3
ANCHORS = ("fused", "torchao", "bitsandbytes")


def _makers(device: str, wanted: list[str]) -> tuple[dict[str, Callable], dict[str, str]]:
  """Name -> ``make(params)``, for the anchors asked for; and name -> why one is left out."""
  import torch

  makers: dict[str, Callable] = {}
  left_out = {}
  if "fused" in wanted:
    makers["torch Adam fused"] = lambda ps: torch.optim.Adam(ps, lr=LEARNING_RATE, fused=True)
  if "torchao" in wanted:
    if importlib.util.find_spec("torchao") is None:
      left_out["torchao"] = "not installed here"
    else:
      from torchao.optim import AdamW4bit, AdamW8bit

      makers["torchao AdamW8bit"] = lambda ps: AdamW8bit(ps, lr=LEARNING_RATE, weight_decay=0.0)
      makers["torchao AdamW4bit"] = lambda ps: AdamW4bit(ps, lr=LEARNING_RATE, weight_decay=0.0)
  if "bitsandbytes" in wanted:
    if importlib.util.find_spec("bitsandbytes") is None:
      left_out["bitsandbytes"] = "not installed here"
    elif device != "cuda":
      left_out["bitsandbytes"] = "its kernels need CUDA"
    else:
      import bitsandbytes

      makers["bitsandbytes Adam8bit"] = lambda ps: bitsandbytes.optim.Adam8bit(ps, lr=LEARNING_RATE)
  return makers, left_out


def _step(make: Callable, size: int, device: str) -> tuple[Callable[[Any], Any], Any]:
  """One optimizer on one leaf: (its synchronized step, its optimizer)."""
  import torch

  param = torch.nn.Parameter(torch.full((size,), 0.5, device=device))
  param.grad = torch.full_like(param, 0.01)
  optimizer = make([param])

  def step(carry: None) -> None:
    optimizer.step()
    if device == "cuda":
      torch.cuda.synchronize()
    return carry

  return step, optimizer


def _state_bytes(optimizer: Any) -> int:
  """The bytes of every tensor of the optimizer's state (low-bit subclasses included)."""
  import torch

  total = 0
  for state in optimizer.state.values():
    for value in state.values():
      if isinstance(value, torch.Tensor):
        inner = getattr(value, "__tensor_flatten__", None)
        parts = [getattr(value, n) for n in inner()[0]] if inner else [value]
        total += sum(p.numel() * p.element_size() for p in parts)
  return total


def measure(size: int, wanted: list[str], n_rounds: int, repeats: int) -> dict[str, Any]:
  """Times the anchors on one leaf of ``size`` parameters; the report as a dict."""
  import torch

  device = "cuda" if torch.cuda.is_available() else "cpu"
  makers, left_out = _makers(device, wanted)
  steps, optimizers = {}, {}
  for name, make in makers.items():
    steps[name], optimizers[name] = _step(make, size, device)
  seconds = rounds.round_robin(steps, dict.fromkeys(steps), n_rounds, repeats, warmup=3)
  per_round = {name: [statistics.median(s) for s in samples] for name, samples in seconds.items()}
  base = per_round.get("torch Adam fused")
  rows = {
    name: {
      "ms": 1e3 * statistics.median(times),
      "state_bytes_per_param": _state_bytes(optimizers[name]) / size,
      "time_vs_fused": None if base is None else rounds.median_ratio(times, base),
    }
    for name, times in per_round.items()
  }
  name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  return {
    "device": name,
    "torch": torch.__version__,
    "size": size,
    "rows": rows,
    "left_out": left_out,
  }


def table(report: dict[str, Any]) -> str:
  """The report as plain text."""
  lines = [
    f"torch anchors on {report['device']} (torch {report['torch']}), one float32 leaf of "
    f"{report['size']:,} params; round-robin, medians",
    f"{'optimizer':24} {'ms/step':>9} {'state B/param':>13} {'/ fused':>8}",
  ]
  for name, row in report["rows"].items():
    ratio = "-" if row["time_vs_fused"] is None else f"{row['time_vs_fused']:.2f}"
    lines.append(f"{name:24} {row['ms']:9.3f} {row['state_bytes_per_param']:13.3f} {ratio:>8}")
  lines += [f"left out: {name} ({why})" for name, why in report["left_out"].items()]
  return "\n".join(lines)


def main() -> None:
  """Parses the flags, measures, prints the table and writes the JSON."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=1 << 28, help="params of the leaf (268M)")
  parser.add_argument("--anchors", default=",".join(ANCHORS), help="which: fused,torchao,...")
  parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds (default 5)")
  parser.add_argument("--repeats", type=int, default=3, help="timed steps per round (default 3)")
  parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
  args = parser.parse_args()
  wanted = args.anchors.split(",")
  if unknown := set(wanted) - set(ANCHORS):
    parser.error(f"--anchors: unknown {', '.join(sorted(unknown))}; known: {', '.join(ANCHORS)}")
  report = measure(args.size, wanted, args.rounds, args.repeats)
  print(table(report))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
