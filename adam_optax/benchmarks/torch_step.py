"""``torch.optim.Adam`` on the same trees, where PyTorch is installed.

Fused (one kernel for all tensors) where this PyTorch supports it on the
device, else ``foreach``. Its state is kept in the params' dtype (PyTorch has
no separate moment dtype), which the per-method roofline accounts for. It
runs in the benchmark's process, so it is timed in the same rounds as the JAX
methods.
"""

from __future__ import annotations

import math
from typing import Any

from adam_optax.benchmarks.jax_steps import LEARNING_RATE
from adam_optax.benchmarks.rounds import Contender
from adam_optax.benchmarks.trees import TreeSpec


def unavailable(platform: str) -> str | None:
  """Why ``torch.optim.Adam`` cannot run on this JAX platform's device, or ``None`` if it can.

  PyTorch runs here on the CPU and on CUDA GPUs; on other platforms (a TPU) the
  benchmark would time it on another device than the JAX methods.
  """
  if platform not in ("cpu", "gpu"):
    return f"PyTorch has no {platform} backend here (it would run on another device)"
  try:
    import torch
  except ImportError as error:
    return f"PyTorch is not installed ({error})"
  if platform == "gpu" and not torch.cuda.is_available():
    return f"this PyTorch {torch.__version__} has no CUDA device"
  return None


def _nbytes(tensors: list[Any]) -> int:
  return sum(t.element_size() * math.prod(t.shape) for t in tensors)


def prepare(spec: TreeSpec, platform: str, scan_steps: int) -> Contender:
  """``torch.optim.Adam`` on ``spec``: one step, ``scan_steps`` steps, and with backward.

  Each call synchronizes the device. On a GPU the peak is
  ``torch.cuda.max_memory_allocated`` of one step; on CPU PyTorch reports
  none, so it is the bytes of params, grads and state.
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

  def sync() -> None:
    if device == "cuda":
      torch.cuda.synchronize()

  def step(_: None) -> None:
    optimizer.step()
    sync()

  def steps(_: None) -> None:
    for _ in range(scan_steps):
      optimizer.step()
    sync()

  def real(_: None) -> None:
    optimizer.zero_grad()
    sum(0.5 * (p.float() * p.float()).sum() for p in params).backward()
    optimizer.step()
    sync()

  tensors = [*params, *(p.grad for p in params)]
  state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
    step(None)
    peak = torch.cuda.max_memory_allocated()
  else:
    peak = _nbytes(tensors) + _nbytes(state)
  return Contender(
    method=f"torch Adam({kind})",
    bytes_per_step=3 * _nbytes(params) + 2 * _nbytes(state),
    fresh=lambda: None,
    calls={"wall": step, "device": steps, "real": real},
    peak_bytes=peak,
  )
