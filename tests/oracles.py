"""Float64 references the tests compare against, and the measures of agreement.

Every algorithm here is elementwise, so each transcription runs on one array
(a pytree is compared leaf by leaf) over a given stream of gradients,
``grads[t - 1]`` being :math:`g_t`, and returns the whole trajectory. Line
numbers are those of Algorithm 1 of Kingma & Ba (2015), counting its
statements after the ``Require`` lines (as the package's docstrings do):
1-3 initialise, 4 loops, 5 counts, 6 takes the gradient, 7-8 update the
moments, 9-10 correct their bias, 11 moves the parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Trajectory(NamedTuple):
  """Values after every step ``t = 1..T``, stacked on axis 0."""

  params: np.ndarray
  mu: np.ndarray
  nu: np.ndarray


class Hyperparams(NamedTuple):
  """The hyperparameters of Algorithm 1, its ``Require`` lines, with the paper's defaults."""

  alpha: float = 1e-3  # step size
  b1: float = 0.9  # decay of the first moment
  b2: float = 0.999  # decay of the second moment
  eps: float = 1e-8


# One step: (theta, m, v, extra, g, t) -> (theta, m, v, extra).
_Step = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], tuple]


def _run(step: _Step, theta0: np.ndarray, grads: np.ndarray) -> Trajectory:
  """Lines 1-6 of Algorithm 1, shared by every transcription; ``step`` is lines 7-11."""
  theta = np.asarray(theta0, np.result_type(theta0, np.float64))
  m = np.zeros_like(theta)  # line 1: m_0 <- 0
  v = np.zeros(theta.shape)  # line 2: v_0 <- 0 (real: it averages |g|^2)
  t = 0  # line 3: t <- 0
  extra = np.zeros(theta.shape)  # AMSGrad's running maximum of v^_t (unused by the others)
  trajectory = []
  for g in np.asarray(grads):  # line 4: while theta_t not converged do
    t = t + 1  # line 5: t <- t + 1
    # line 6: g_t <- grad f_t(theta_{t-1}), here the t-th gradient of the stream
    theta, m, v, extra = step(theta, m, v, extra, g, t)
    trajectory.append((theta, m, v))
  return Trajectory(*(np.stack(values) for values in zip(*trajectory, strict=True)))


def _moments(
  m: np.ndarray, v: np.ndarray, g: np.ndarray, t: int, b1: float, b2: float
) -> tuple[np.ndarray, ...]:
  """Lines 7-10 of Algorithm 1, shared by Adam, NAdam and AMSGrad: (m_t, v_t, m^_t, v^_t)."""
  m = b1 * m + (1 - b1) * g  # line 7: m_t <- b1 m_{t-1} + (1 - b1) g_t
  v = b2 * v + (1 - b2) * np.abs(g) ** 2  # line 8: v_t <- b2 v_{t-1} + (1 - b2) g_t^2
  m_hat = m / (1 - b1**t)  # line 9: m^_t <- m_t / (1 - b1^t)
  v_hat = v / (1 - b2**t)  # line 10: v^_t <- v_t / (1 - b2^t)
  return m, v, m_hat, v_hat


def adam(
  theta0: np.ndarray, grads: np.ndarray, *, bias_correction: bool = True, **hyperparams: float
) -> Trajectory:
  """Algorithm 1 of Kingma & Ba (2015); ``bias_correction=False`` drops lines 9-10.

  ``hyperparams`` are those of :class:`Hyperparams` (``alpha``, ``b1``, ``b2``, ``eps``).
  """
  alpha, b1, b2, eps = Hyperparams(**hyperparams)

  def step(theta, m, v, extra, g, t):
    m, v, m_hat, v_hat = _moments(m, v, g, t, b1, b2)  # lines 7-10
    if not bias_correction:
      m_hat, v_hat = m, v
    theta = theta - alpha * m_hat / (np.sqrt(v_hat) + eps)  # line 11
    return theta, m, v, extra

  return _run(step, theta0, grads)


def nadam(
  theta0: np.ndarray, grads: np.ndarray, *, eps_root: float = 0.0, **hyperparams: float
) -> Trajectory:
  """NAdam (Dozat 2016) as optax writes it: line 9 looks one step ahead.

  optax adds ``eps_root`` inside the square root of line 11.
  """
  alpha, b1, b2, eps = Hyperparams(**hyperparams)

  def step(theta, m, v, extra, g, t):
    m, v, _, v_hat = _moments(m, v, g, t, b1, b2)  # lines 7, 8 and 10
    m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)  # line 9, Nesterov
    theta = theta - alpha * m_hat / (np.sqrt(v_hat + eps_root) + eps)  # line 11
    return theta, m, v, extra

  return _run(step, theta0, grads)


def amsgrad(
  theta0: np.ndarray, grads: np.ndarray, *, eps_root: float = 0.0, **hyperparams: float
) -> Trajectory:
  """AMSGrad (Reddi et al. 2018) with bias correction, as optax writes it.

  Line 11 divides by the running maximum of v^_t, with ``eps_root`` inside
  the square root.
  """
  alpha, b1, b2, eps = Hyperparams(**hyperparams)

  def step(theta, m, v, v_hat_max, g, t):
    m, v, m_hat, v_hat = _moments(m, v, g, t, b1, b2)  # lines 7-10
    v_hat_max = np.maximum(v_hat_max, v_hat)  # max(v^_1, ..., v^_t)
    theta = theta - alpha * m_hat / (np.sqrt(v_hat_max + eps_root) + eps)  # line 11
    return theta, m, v, v_hat_max

  return _run(step, theta0, grads)


def adamax(theta0: np.ndarray, grads: np.ndarray, **hyperparams: float) -> Trajectory:
  """Algorithm 2 of Kingma & Ba (2015), AdaMax; ``nu`` holds u_t.

  The paper's step size is ``alpha=2e-3``, the default here. optax (and so
  ``ao.adamax``) adds ``eps`` to ``|g_t|`` inside the maximum; ``eps=0`` is
  the paper's algorithm exactly.
  """
  alpha, b1, b2, eps = Hyperparams(alpha=2e-3)._replace(**hyperparams)

  def step(theta, m, u, extra, g, t):
    m = b1 * m + (1 - b1) * g  # m_t <- b1 m_{t-1} + (1 - b1) g_t
    u = np.maximum(b2 * u, np.abs(g) + eps)  # u_t <- max(b2 u_{t-1}, |g_t|)
    theta = theta - (alpha / (1 - b1**t)) * m / u  # theta_t <- theta_{t-1} - (a/(1-b1^t)) m_t/u_t
    return theta, m, u, extra

  return _run(step, theta0, grads)


def torch_adam(theta0: np.ndarray, grads: np.ndarray, **hyperparams: float) -> np.ndarray:
  """``torch.optim.Adam`` in float64 on the same gradient stream; the params after each step."""
  import torch  # imported here: it is heavy and only the oracle tests need it

  alpha, b1, b2, eps = Hyperparams(**hyperparams)
  param = torch.tensor(np.asarray(theta0, np.float64), requires_grad=True)
  optimizer = torch.optim.Adam([param], lr=alpha, betas=(b1, b2), eps=eps, foreach=False)
  trajectory = []
  for g in np.asarray(grads, np.float64):
    param.grad = torch.from_numpy(g.copy())
    optimizer.step()
    trajectory.append(param.detach().numpy().copy())
  return np.stack(trajectory)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Elementwise distance between float32 arrays in units in the last place.

  Reinterprets the bits as int32 and maps sign-magnitude to a monotone
  integer line (``-0.0`` and ``+0.0`` both to 0), so adjacent floats are 1
  apart across zero as well.
  """

  def ordered(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

  return np.abs(ordered(np.asarray(a)) - ordered(np.asarray(b)))


def relative_error(actual: np.ndarray, expected: np.ndarray, *, elementwise: bool = True) -> float:
  """The largest ``|actual - expected|`` relative to ``|expected|``.

  Elementwise by default (for values kept away from zero, such as the
  params); with ``elementwise=False`` relative to ``max |expected|`` (for
  values that cross zero, such as the first moment).
  """
  actual, expected = np.asarray(actual), np.asarray(expected)
  difference = np.abs(actual - expected)
  scale = np.abs(expected) if elementwise else np.max(np.abs(expected))
  with np.errstate(divide="ignore", invalid="ignore"):
    relative = np.where(difference == 0, 0.0, difference / scale)
  return float(np.max(relative, initial=0.0))
