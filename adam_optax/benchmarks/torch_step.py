"""``torch.optim.Adam`` on the same trees, where PyTorch is installed.

Fused (one kernel for all tensors) where this PyTorch supports it on the
device, else ``foreach``. Its state is kept in the params' dtype (PyTorch has
no separate moment dtype), which the per-method roofline accounts for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from adam_optax.benchmarks.jax_steps import LEARNING_RATE, Measurement
from adam_optax.benchmarks.trees import TreeSpec


def available(platform: str) -> bool:
  """Whether ``import torch`` works and can use this platform's device."""
  try:
    import torch
  except ImportError:
    return False
  return platform == "cpu" or (platform == "gpu" and torch.cuda.is_available())


def _median_seconds(call: Callable[[], Any], sync: Callable[[], Any], repeats: int) -> float:
  for _ in range(2):
    call()
  sync()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    sync()
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def _nbytes(tensors: list[Any]) -> int:
  return sum(t.element_size() * math.prod(t.shape) for t in tensors)


def measure(spec: TreeSpec, platform: str, repeats: int, scan_steps: int) -> Measurement:
  """Times ``torch.optim.Adam`` on ``spec``: one step, ``scan_steps`` steps, and with backward.

  On a GPU the peak is ``torch.cuda.max_memory_allocated`` of one step; on
  CPU PyTorch reports none, so it is the bytes of params, grads and state.
  """
  import torch

  device = "cuda" if platform == "gpu" else "cpu"
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[spec.dtype.name]
  params = [
    torch.full(shape, 0.5, dtype=dtype, device=device, requires_grad=True)
    for shape in spec.shapes.values()
  ]
  for p in params:
    p.grad = torch.full_like(p, 0.01)
  try:
    optimizer = torch.optim.Adam(params, lr=LEARNING_RATE, fused=True)
    optimizer.step()
    kind = "fused"
  except (RuntimeError, ValueError):
    optimizer = torch.optim.Adam(params, lr=LEARNING_RATE, foreach=True)
    kind = "foreach"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def steps() -> None:
    for _ in range(scan_steps):
      optimizer.step()

  def real() -> None:
    optimizer.zero_grad()
    sum(0.5 * (p.float() * p.float()).sum() for p in params).backward()
    optimizer.step()

  wall = _median_seconds(optimizer.step, sync, repeats)
  device_s = _median_seconds(steps, sync, max(3, repeats // 4)) / scan_steps
  real_s = _median_seconds(real, sync, repeats)
  tensors = [*params, *(p.grad for p in params)]
  state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
    optimizer.step()
    sync()
    peak = torch.cuda.max_memory_allocated()
  else:
    peak = _nbytes(tensors) + _nbytes(state)
  bytes_per_step = 3 * _nbytes(params) + 2 * _nbytes(state)
  return Measurement(
    f"torch Adam({kind})",
    bytes_per_step,
    wall * 1e3,
    device_s * 1e3,
    real_s * 1e3,
    peak,
    None,
    None,
  )
