r"""How faithfully low-bit Adam follows float32 Adam: two problems, trained by JAX and by torch.

* :func:`least_squares`: a :math:`128 \times 64` weight matrix fitted to data whose
  feature scales, and so gradient scales, span :math:`10^3` inside every block; 300
  full-batch steps. It asks for range: small moments beside large ones.
* :func:`two_layer`: torchao's own low-bit test model, ``Linear(32, 1024)``, ReLU,
  ``Linear(1024, 128)``, loss the sum of the outputs, a batch of 4 random inputs per step;
  20 steps. It asks for resolution near each block's largest moments.

A :class:`Problem` holds its initial parameters (torch's layout, weights ``(out, in)``,
so blocks cut the same rows in both) and data as NumPy arrays, and a loss written with
the operators NumPy, JAX and torch arrays share, so one definition serves
:func:`train` (JAX, one jitted scan), :func:`torch_train` and the float64 final loss.
A low-bit optimizer is compared with its own float32 Adam (``ao.adam`` for ours,
``torch.optim.Adam`` for torchao's): :func:`deviation` of the final parameters relative
to the reference's norm, and :func:`drift`, the largest gap of any parameter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

LEARNING_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class Problem:
  """A training problem both JAX and torch run from the same arrays.

  Attributes:
    params: the initial parameters, float32.
    data: arrays every step sees.
    stream: one input per step (leading axis), or ``None``: every step is the same.
    steps: steps to train.
    loss: ``loss(params, data, step_input)``, with operators NumPy, JAX and torch share.
  """

  params: tuple[np.ndarray, ...]
  data: dict[str, np.ndarray]
  stream: np.ndarray | None
  steps: int
  loss: Callable[[Sequence[Any], dict[str, Any], Any], Any]


def _squared_error(params: Sequence[Any], data: dict[str, Any], _: Any) -> Any:
  return 0.5 * ((data["x"] @ params[0].T - data["y"]) ** 2).sum(1).mean()


def least_squares(seed: int = 0, examples: int = 1024, steps: int = 300) -> Problem:
  r"""Least squares, :math:`\min_W \tfrac12 \operatorname{mean}_n \|W x_n - y_n\|^2`.

  From :math:`W = 0`, :math:`W \in \mathbb R^{128 \times 64}`. Feature :math:`i` has
  scale :math:`c_i = 10^{u_i}`, :math:`u_i \sim U(-1.5, 1.5)`, so the gradient of
  row-major :math:`W` spans :math:`10^3` inside every block of 128 or 256 elements;
  :math:`W^\star \sim 0.03\, N(0, 1)`, targets with noise 0.1.
  """
  rng = np.random.default_rng(seed)
  scales = 10 ** rng.uniform(-1.5, 1.5, 64)
  features = rng.normal(size=(examples, 64)) * scales
  target_weights = rng.normal(size=(128, 64)) * 0.03
  targets = features @ target_weights.T + 0.1 * rng.normal(size=(examples, 128))
  data = {"x": features.astype(np.float32), "y": targets.astype(np.float32)}
  return Problem((np.zeros((128, 64), np.float32),), data, None, steps, _squared_error)


def _sum_of_outputs(params: Sequence[Any], data: dict[str, Any], x: Any) -> Any:
  del data
  w1, b1, w2, b2 = params
  return ((x @ w1.T + b1).clip(min=0) @ w2.T + b2).sum()


def two_layer(seed: int = 0, steps: int = 20) -> Problem:
  r"""The low-bit test model of torchao: ``Linear(32, 1024)``, ReLU, ``Linear(1024, 128)``.

  The loss is the sum of the outputs of a batch of 4 standard normal inputs, new every step;
  weights and biases start as torch initializes a ``Linear``, uniform in
  :math:`\pm 1/\sqrt{\text{fan in}}`.
  """
  rng = np.random.default_rng(seed)

  def linear(fan_in: int, fan_out: int) -> list[np.ndarray]:
    bound = fan_in**-0.5
    return [
      rng.uniform(-bound, bound, shape).astype(np.float32) for shape in [(fan_out, fan_in), fan_out]
    ]

  params = (*linear(32, 1024), *linear(1024, 128))
  inputs = rng.normal(size=(steps, 4, 32)).astype(np.float32)
  return Problem(params, {}, inputs, steps, _sum_of_outputs)


def train(tx: optax.GradientTransformation, problem: Problem) -> list[np.ndarray]:
  """The parameters after ``problem.steps`` steps of ``tx``, in one jitted scan."""
  data = {name: jnp.asarray(array) for name, array in problem.data.items()}
  grad = jax.grad(lambda params, x: problem.loss(params, data, x))

  def step(carry: Any, x: Any) -> tuple[Any, None]:
    params, state = carry
    updates, state = tx.update(grad(params, x), state, params)
    return (optax.apply_updates(params, updates), state), None

  def run(params: list[jax.Array], state: Any) -> list[jax.Array]:
    stream = None if problem.stream is None else jnp.asarray(problem.stream)
    return jax.lax.scan(step, (params, state), stream, length=problem.steps)[0][0]

  params = [jnp.asarray(p) for p in problem.params]
  # Float32 products, as torch's on a CPU: a GPU's default (TensorFloat-32) would
  # separate the two harnesses by more than the storage formats they compare.
  with jax.default_matmul_precision("float32"):
    return [np.asarray(p) for p in jax.jit(run)(params, tx.init(params))]


def torch_train(make_optimizer: Callable[[Any], Any], problem: Problem) -> list[np.ndarray]:
  """:func:`train` for a torch optimizer, ``make_optimizer(parameters)``."""
  import torch

  params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in problem.params]
  data = {name: torch.from_numpy(array) for name, array in problem.data.items()}
  optimizer = make_optimizer(params)
  for t in range(problem.steps):
    x = None if problem.stream is None else torch.from_numpy(problem.stream[t])
    optimizer.zero_grad()
    problem.loss(params, data, x).backward()
    optimizer.step()
  return [p.detach().numpy().copy() for p in params]


def final_loss(problem: Problem, params: Sequence[np.ndarray]) -> float:
  """The loss at ``params`` in float64 (on the first step's input where inputs stream)."""
  data = {name: array.astype(np.float64) for name, array in problem.data.items()}
  x = None if problem.stream is None else problem.stream[0].astype(np.float64)
  return float(problem.loss([p.astype(np.float64) for p in params], data, x))


def deviation(params: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
  r""":math:`\|\theta - \theta_\text{ref}\| / \|\theta_\text{ref}\|` over all parameters."""
  gap = sum(
    float(np.sum((p.astype(np.float64) - r) ** 2)) for p, r in zip(params, reference, strict=True)
  )
  return (gap / sum(float(np.sum(r.astype(np.float64) ** 2)) for r in reference)) ** 0.5


def drift(params: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
  r"""The largest :math:`|\theta_i - \theta_{\text{ref}, i}|` over all parameters."""
  return max(float(np.max(np.abs(p - r))) for p, r in zip(params, reference, strict=True))
