"""The problems of the paper's figures 1-4: a model, its loss and its evaluation.

A :class:`Problem` is what the training loop needs and nothing more: how to
build the model from a key, the minibatch loss it descends, and the metrics
computed on a whole data set afterwards (always ``"loss"``, plus
``"accuracy"`` for classifiers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from adam_optax.experiments import models

# The weight of the L2 penalty of logistic regression (the paper does not state its value).
L2_PENALTY = 1e-4
# The VAE's evaluation loss uses one fixed draw of the noise, so it is a
# deterministic function of the parameters.
EVALUATION_NOISE_SEED = 0

Loss = Callable[[nnx.Module, jax.Array, jax.Array, "nnx.Rngs | None"], jax.Array]
Evaluate = Callable[[nnx.Module, jax.Array, jax.Array], Mapping[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Problem:
  """One of the paper's experiments.

  Attributes:
    name: the name used by ``--problems`` and in file names.
    title: a figure title (model, data, what the paper's figure shows).
    make_model: builds the model from ``nnx.Rngs``.
    loss: ``loss(model, x, y, rngs)``, the mean loss of a minibatch; ``rngs``
      drives dropout or sampling in training and is ``None`` in evaluation.
    evaluate: ``evaluate(model, x, y)``, metrics on a whole data set, with at
      least ``"loss"``.
    standardized: whether the inputs are standardized pixels (classifiers)
      or intensities in ``[0, 1]`` (the VAE's Bernoulli likelihood).
    steps: the default number of training steps.
    study: ``"optimizers"`` (figures 1-3: one curve per optimizer) or
      ``"bias_correction"`` (figure 4: Adam with and without bias correction
      over a grid of b1, b2 and step sizes).
    batch_size: minibatch size (128 in all of the paper's experiments).
  """

  name: str
  title: str
  make_model: Callable[[nnx.Rngs], nnx.Module]
  loss: Loss
  evaluate: Evaluate
  standardized: bool
  steps: int
  study: Literal["optimizers", "bias_correction"] = "optimizers"
  batch_size: int = 128


def classification_loss(
  model: nnx.Module, x: jax.Array, y: jax.Array, rngs: nnx.Rngs | None = None
) -> jax.Array:
  r"""Mean cross-entropy :math:`-\frac1n \sum_i \log p(y_i \mid x_i)`."""
  return optax.softmax_cross_entropy_with_integer_labels(model(x, rngs=rngs), y).mean()


def classification_metrics(model: nnx.Module, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
  """Cross-entropy and accuracy of the deterministic model (no dropout)."""
  logits = model(x)
  return {
    "loss": optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
    "accuracy": (logits.argmax(axis=-1) == y).mean(),
  }


def weight_penalty(model: nnx.Module) -> jax.Array:
  r"""The L2 penalty :math:`\frac\lambda2 \lVert W \rVert^2` of logistic regression."""
  return 0.5 * L2_PENALTY * jnp.sum(model.linear.kernel[...] ** 2)


def regularized_logistic_loss(
  model: nnx.Module, x: jax.Array, y: jax.Array, rngs: nnx.Rngs | None = None
) -> jax.Array:
  """The paper's L2-regularized logistic regression: cross-entropy plus :func:`weight_penalty`."""
  return classification_loss(model, x, y, rngs) + weight_penalty(model)


def regularized_logistic_metrics(
  model: nnx.Module, x: jax.Array, y: jax.Array
) -> dict[str, jax.Array]:
  """Accuracy, and as ``"loss"`` the regularized objective that is minimized."""
  metrics = classification_metrics(model, x, y)
  return {**metrics, "loss": metrics["loss"] + weight_penalty(model)}


def negative_elbo(
  model: nnx.Module, x: jax.Array, y: jax.Array, rngs: nnx.Rngs | None = None
) -> jax.Array:
  r"""The VAE's loss: the negative evidence lower bound, in nats per image.

  .. math::

    -\mathcal L(x) = -\sum_{\text{pixels}} \log p(x \mid z)
      + \tfrac12 \sum_j \left(\sigma_j^2 + \mu_j^2 - 1 - \log \sigma_j^2\right)

  with one sample :math:`z \sim q(z \mid x)` (reparameterized). ``y`` is
  unused; without ``rngs`` the sample is a fixed draw.
  """
  del y
  rngs = nnx.Rngs(noise=EVALUATION_NOISE_SEED) if rngs is None else rngs
  logits, mean, log_var = model(x, rngs=rngs)
  pixels = x.reshape(x.shape[0], -1)
  reconstruction = optax.sigmoid_binary_cross_entropy(logits, pixels).sum(axis=-1)
  kl = 0.5 * (jnp.exp(log_var) + mean**2 - 1.0 - log_var).sum(axis=-1)
  return (reconstruction + kl).mean()


def vae_metrics(model: nnx.Module, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
  """The negative ELBO with the fixed evaluation draw of the noise."""
  return {"loss": negative_elbo(model, x, y)}


def _classifier(
  name: str,
  title: str,
  model: Callable[..., nnx.Module],
  steps: int,
  *,
  loss: Loss = classification_loss,
  evaluate: Evaluate = classification_metrics,
) -> Problem:
  """A classifier of standardized digits, scored by cross-entropy and accuracy by default."""
  return Problem(
    name, title, lambda rngs: model(rngs=rngs), loss, evaluate, standardized=True, steps=steps
  )


PROBLEMS: dict[str, Problem] = {
  problem.name: problem
  for problem in (
    _classifier(
      "logreg",
      "L2-regularized logistic regression (paper fig. 1)",
      models.LogisticRegression,
      steps=1000,
      loss=regularized_logistic_loss,
      evaluate=regularized_logistic_metrics,
    ),
    _classifier("mlp", "MLP 64-128-128-10 with dropout (paper fig. 2)", models.MLP, steps=300),
    _classifier("cnn", "ConvNet c8-c16-64 (paper fig. 3)", models.ConvNet, steps=200),
    Problem(
      name="vae",
      title="VAE, bias correction (paper fig. 4)",
      make_model=lambda rngs: models.VAE(rngs=rngs),
      loss=negative_elbo,
      evaluate=vae_metrics,
      standardized=False,
      steps=300,
      study="bias_correction",
    ),
  )
}
