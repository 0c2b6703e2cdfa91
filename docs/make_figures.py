"""Draws the figures of the theory pages with the library's own transformations.

Every measured curve comes from running ``ao.scale_by_moments``,
``ao.bias_correct``, ``ao.normalize`` or ``ao.adam`` over a gradient stream with
``jax.lax.scan``; the closed forms derived on the theory pages are drawn next to
them as dashed lines. Run by ``docs/conf.py`` at the start of every build, or::

  python docs/make_figures.py [OUT_DIR [NAME ...]]   # default: docs/figures, all
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax.scipy.special import erf

import adam_optax as ao

matplotlib.use("Agg")  # files only, whatever backend the environment configures

B1, B2 = 0.9, 0.999
TINY_EPS = 1e-30  # epsilon -> 0, without 0/0 before a sparse gradient first arrives
GradFn = Callable[[jax.Array, jax.Array], jax.Array]


class _Moments(NamedTuple):
  mu: jax.Array
  nu: jax.Array


def run(tx: optax.GradientTransformation, grads: jax.Array) -> jax.Array:
  """Feeds ``grads[t]`` to ``tx`` for every ``t``; returns what it emits at each step.

  ``ao.Moments`` lives only inside an update (it is not a pytree), so a chain that
  ends with moments hands on their ``mu`` and ``nu``.
  """

  def step(state, grad):
    out, state = tx.update(grad, state)
    if isinstance(out, ao.Moments):
      out = _Moments(out.mu, out.nu)
    return state, out

  return jax.lax.scan(step, tx.init(grads[0]), grads)[1]


def descend(
  tx: optax.GradientTransformation, grad_fn: GradFn, params: jax.Array, steps: int
) -> tuple[jax.Array, jax.Array]:
  """Runs ``tx`` on ``grad_fn(params, key)``; returns the params and updates of every step."""

  def step(carry, key):
    params, state = carry
    updates, state = tx.update(grad_fn(params, key), state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), (params, updates)

  keys = jax.random.split(jax.random.key(0), steps)
  return jax.lax.scan(step, (params, tx.init(params)), keys)[1]


def paper_bound(b1: float = B1, b2: float = B2) -> float:
  """The paper's step-size bound over alpha (section 2.1)."""
  return max((1 - b1) / np.sqrt(1 - b2), 1.0)


def strict_bound(t: np.ndarray, b1: float = B1, b2: float = B2) -> np.ndarray:
  """The Cauchy-Schwarz bound on ``|m_hat / sqrt(v_hat)|`` at step ``t`` (``b1**2 < b2``)."""
  gamma = b1**2 / b2
  return (
    (1 - b1)
    * np.sqrt(1 - b2**t)
    * np.sqrt((1 - gamma**t) / (1 - gamma))
    / ((1 - b1**t) * np.sqrt(1 - b2))
  )


def ema_weights() -> plt.Figure:
  """The weight of a past gradient in m_t and v_t (the moments' impulse response)."""
  steps = 5000
  impulse = ao.scale_by_moments(B1, B2)
  moments = run(impulse, jnp.zeros(steps).at[0].set(1.0))
  age = np.arange(1, steps + 1)
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  for i, (weights, beta, name) in enumerate(((moments.mu, B1, "m"), (moments.nu, B2, "v"))):
    ax1.loglog(age, weights, color=f"C{i}", label=rf"in ${name}_t$, $\beta = {beta}$")
    ax1.axvline(1 / (1 - beta), color=f"C{i}", ls=":", lw=1)
  ax1.set(xlabel="age of the gradient $t - i + 1$", ylabel=r"weight $(1-\beta)\beta^{t-i}$")
  ax1.set(ylim=(1e-7, 1), title=r"weight of a past gradient (dotted: $1/(1-\beta)$)")
  ax1.legend()
  t = age[:200]
  grads = 1.0 + 0.5 * jax.random.normal(jax.random.key(1), (200,))
  moments = run(ao.scale_by_moments(B1, B2), grads)
  ax2.plot(t, grads, color="lightgray", lw=0.8, label="$g_t \\sim N(1, 0.5^2)$")
  ax2.plot(t, moments.mu, color="C0", label=r"$m_t$, $\beta_1 = 0.9$")
  ax2.plot(t, moments.nu, color="C1", label=r"$v_t$, $\beta_2 = 0.999$")
  ax2.plot(t, 1 - B1**t, "C0--", lw=1, label=r"$(1-\beta_1^t)\,E[g]$")
  ax2.plot(t, 1.25 * (1 - B2**t), "C1--", lw=1, label=r"$(1-\beta_2^t)\,E[g^2]$")
  ax2.set(xlabel="step $t$", title="the raw moments start at zero")
  ax2.legend(fontsize=8)
  return fig


def bias_correction() -> plt.Figure:
  """The moments with and without correction; the step with and without ao.bias_correct()."""
  steps = 3000
  t = np.arange(1, steps + 1)
  grads = 1.0 + 0.5 * jax.random.normal(jax.random.key(2), (steps,))
  raw = run(ao.scale_by_moments(B1, B2), grads)
  corrected = run(optax.chain(ao.scale_by_moments(B1, B2), ao.bias_correct()), grads)
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  ax1.loglog(t, raw.mu, "C0--", label="$m_t$")
  ax1.loglog(t, corrected.mu, "C0", label=r"$\hat m_t$")
  ax1.loglog(t, raw.nu, "C1--", label="$v_t$")
  ax1.loglog(t, corrected.nu, "C1", label=r"$\hat v_t$")
  ax1.axhline(1.0, color="C0", lw=0.8, ls=":")
  ax1.axhline(1.25, color="C1", lw=0.8, ls=":")
  ax1.set(xlabel="step $t$", title=r"$g_t \sim N(1, 0.5^2)$: $E[g] = 1$, $E[g^2] = 1.25$")
  ax1.legend()
  # A learning rate of -1 makes the update m_hat / sqrt(v_hat) itself.
  with_correction = run(ao.adam(-1.0, B1, B2, eps=TINY_EPS), grads)
  without = optax.chain(ao.scale_by_moments(B1, B2), ao.normalize(eps=TINY_EPS))
  ax2.semilogx(t, with_correction, label="ao.adam")
  ax2.semilogx(t, run(without, grads), label="the chain without ao.bias_correct()")
  ax2.semilogx(
    t, (1 - B1**t) / np.sqrt(1 - B2**t), "k--", lw=1, label=r"$(1-\beta_1^t)/\sqrt{1-\beta_2^t}$"
  )
  ax2.set(xlabel="step $t$", ylabel=r"$\Delta_t / \alpha$", title=r"the step, $\beta_2 = 0.999$")
  ax2.legend(fontsize=8)
  return fig


def step_size() -> plt.Figure:
  """|Delta_t| / alpha for sparse, growing and random streams against both bounds."""
  steps = 10_000
  t = np.arange(1, steps + 1)
  tx = ao.adam(-1.0, B1, B2, eps=TINY_EPS)
  # Sparse: coordinate k sees one non-zero gradient, at step spikes[k].
  spikes = np.unique(np.geomspace(1, steps, 60).astype(int))
  sparse = run(tx, jnp.asarray(t[:, None] == spikes[None, :], jnp.float32))
  # Growing by b2/b1 per step: equality in Cauchy-Schwarz at every step. Its
  # values span 13 orders of magnitude by step 300, the most float32 squares hold.
  grow = 300
  growing = run(tx, jnp.asarray((B2 / B1) ** (t[:grow] - grow), jnp.float32))
  noise = run(tx, jax.random.normal(jax.random.key(3), (steps, 256)))
  fig, ax = plt.subplots(figsize=(9, 4.8))
  ax.semilogx(t, np.abs(noise).max(axis=1), "C2", lw=0.6, label="random $N(0,1)$: max of 256")
  ax.semilogx(spikes, sparse[spikes - 1, np.arange(len(spikes))], "C0o-", ms=3, label="sparse")
  ax.semilogx(t[:grow], np.abs(growing), "C1", lw=4, alpha=0.6, label="growing")
  ax.semilogx(t, strict_bound(t), "k--", lw=1, label="strict bound (Cauchy-Schwarz)")
  ax.axhline(paper_bound(), color="r", ls=":", label=r"paper: $(1-\beta_1)/\sqrt{1-\beta_2}$")
  excess = float(abs(growing[-1])) / paper_bound() - 1
  ax.annotate(
    f"growing stream at t = {grow}: +{excess:.0%}",
    (grow, float(abs(growing[-1]))),
    xytext=(-200, 20),
    textcoords="offset points",
    arrowprops={"arrowstyle": "->"},
  )
  ax.set(xlabel="step $t$", ylabel=r"$|\Delta_t| / \alpha$")
  ax.set_title(r"ao.adam, $\beta_1 = 0.9$, $\beta_2 = 0.999$, $\epsilon \to 0$")
  ax.legend(fontsize=8, loc="upper left")
  return fig


def _noise_floor(signal: np.ndarray, sigma: float, b1: float) -> np.ndarray:
  """E|m_hat| / sqrt(E g^2) for m_hat ~ N(signal, tau^2): the folded normal mean."""
  tau = sigma * np.sqrt((1 - b1) / (1 + b1))
  folded = tau * np.sqrt(2 / np.pi) * np.exp(-(signal**2) / (2 * tau**2)) + signal * erf(
    signal / (np.sqrt(2) * tau)
  )
  return folded / np.sqrt(signal**2 + sigma**2)


def snr_annealing() -> plt.Figure:
  """The signal-to-noise ratio, hence the step, shrinks near the optimum of a noisy quadratic."""
  steps, sigma, lr = 3000, 1.0, 0.003
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  t = np.arange(1, steps + 1)
  for h, b1, color in ((1.0, B1, "C0"), (1.0, 0.99, "C1"), (100.0, B1, "C2")):
    label = f"$h = {h:g}$, $\\beta_1 = {b1}$"

    def grad_fn(params, key, h=h):
      return h * params + sigma * jax.random.normal(key, params.shape)

    path, updates = descend(ao.adam(lr, b1=b1), grad_fn, jnp.ones(512), steps)
    ax1.loglog(t, np.sqrt((path**2).mean(axis=1)), color, label=label)
    ax2.loglog(t, np.abs(updates).mean(axis=1) / lr, color, label=label)
    if h == 1.0:  # v_hat tracks E[g^2]: the folded-normal prediction holds
      ax2.loglog(t, _noise_floor(np.abs(h * path), sigma, b1).mean(axis=1), "k--", lw=0.8)
      ax2.axhline(np.sqrt(2 / np.pi * (1 - b1) / (1 + b1)), color=color, ls=":", lw=1)
  ax1.set(
    xlabel="step $t$", ylabel=r"rms $\theta_t$", title=r"$g = h\theta + N(0, 1)$, $\alpha = 0.003$"
  )
  ax1.legend(fontsize=8)
  ax2.set(xlabel="step $t$", ylabel=r"mean $|\Delta_t| / \alpha$", ylim=(3e-3, 1.5))
  ax2.set_title(r"the step anneals to a floor set by $\beta_1$", fontsize=10)
  return fig


def scale_invariance() -> plt.Figure:
  """Adam's path does not change when the loss is multiplied by c; gradient descent's does."""
  curvature = jnp.array([1.0, 100.0])
  steps = 400
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  optimizers = (("ao.adam(0.01)", ao.adam(0.01)), ("optax.sgd(0.005)", optax.sgd(0.005)))
  for ax, (name, tx) in zip(axes, optimizers, strict=True):
    for i, scale in enumerate((1e-4, 1.0, 1e4, 1e-10)):
      path, _ = descend(tx, lambda p, _, c=scale: c * curvature * p, jnp.ones(2), steps)
      style = {"ls": ":", "lw": 2} if scale == 1e-10 else {"lw": 3.5 - i}
      exponent = int(np.log10(scale))
      ax.semilogy(
        np.arange(1, steps + 1),
        0.5 * (curvature * path**2).sum(axis=1),
        color=f"C{i}",
        label=f"$c = 10^{{{exponent}}}$",
        **style,
      )
    ax.set(xlabel="step $t$", title=name)
  axes[0].set(
    ylim=(1e-8, 1e3), ylabel=r"$f(\theta_t)/c$, $f = c\,(\theta_1^2 + 100\,\theta_2^2)/2$"
  )
  axes[1].set(ylim=(1e-8, 1e38))
  axes[0].legend(fontsize=8)
  return fig


def zero_point() -> plt.Figure:
  """A small v beside a large one in its block: a map with a zero code reads it as 0."""
  small = np.logspace(-12, 3, 400)
  v = np.full((small.size, 256), 1e3)
  v[:, 1] = small  # one block per row: its maximum 1e3 and one smaller v
  decoded = {}
  for bits in (8, 4):
    nu = jnp.asarray(v.reshape(-1), jnp.float32)
    tx = ao.scale_by_moments(b1=0.0, b2=0.0, nu_dtype=ao.Quantized(bits, min_size=0))
    _, state = tx.update(jnp.sqrt(nu), tx.init(nu))  # b2 = 0: v_1 = g^2 exactly
    decoded[f"ao.Quantized({bits})"] = np.asarray(ao.dequantize(state.nu)).reshape(v.shape)[:, 1]
  # absmax scaling with a linear 8-bit map (0 is a code), as in int8 quantization
  decoded["linear 8-bit map with 0"] = np.round(small / 1e3 * 255) / 255 * 1e3
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  eps, lr = 1e-8, 1e-3
  for i, (name, read) in enumerate(decoded.items()):
    axes[0].loglog(small, np.maximum(read, 1e-14), color=f"C{i}", label=name)
    # A coordinate with |m| = sqrt(v) (signal-to-noise ratio 1) steps lr when v is read exactly.
    axes[1].loglog(small, lr * np.sqrt(small) / (np.sqrt(read) + eps), color=f"C{i}", label=name)
  axes[0].loglog(small, small, "k:", label="exact")
  axes[1].axhline(lr, color="k", ls=":", label="exact: lr")
  axes[0].set(
    xlabel="$v$ beside $v = 10^3$ in its block", ylabel="decoded $v$ (0 drawn at $10^{-14}$)"
  )
  axes[1].set(xlabel="$v$ beside $v = 10^3$ in its block", ylabel=r"step $|\Delta|$, lr $=10^{-3}$")
  axes[0].legend(fontsize=8)
  axes[1].legend(fontsize=8)
  return fig


FIGURES = {
  "zero_point": zero_point,
  "ema_weights": ema_weights,
  "bias_correction": bias_correction,
  "step_size": step_size,
  "snr_annealing": snr_annealing,
  "scale_invariance": scale_invariance,
}


def main(out_dir: pathlib.Path, names: list[str] | None = None) -> None:
  """Writes the figures (all by default) as ``out_dir/<name>.png``, byte-identical every run."""
  out_dir.mkdir(parents=True, exist_ok=True)
  for name in names or FIGURES:
    fig = FIGURES[name]()
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}.png", dpi=110, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
  default = pathlib.Path(__file__).resolve().parent / "figures"
  main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default, sys.argv[2:])
