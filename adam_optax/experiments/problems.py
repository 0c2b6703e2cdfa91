"""The problems of the paper's figures 1-4: a model, its loss, its data and protocol.

A :class:`Problem` is what the training loop needs and nothing more: how to
build the model, the minibatch loss it descends, the metrics computed on a
whole data set afterwards (always ``"loss"``, plus ``"accuracy"`` for
classifiers), and the paper's protocol (batch size, step-size decay, the
optimizers its figure shows). Model sizes come in two scales: the default
one, which trains on 2 CPU cores in minutes, and the paper's
(``--paper-scale``); :meth:`Problem.bind` fixes the scale and the data's shape,
and :meth:`Problem.differences` lists what still differs from the paper.
"""

from __future__ import annotations

import dataclasses
import math
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
BATCH_SIZE = 128

Loss = Callable[[nnx.Module, jax.Array, jax.Array, "nnx.Rngs | None"], jax.Array]
Evaluate = Callable[[nnx.Module, jax.Array, jax.Array], Mapping[str, jax.Array]]
Sizes = tuple[tuple[str, int | tuple[int, ...]], ...]


@dataclasses.dataclass(frozen=True)
class Problem:
  r"""One of the paper's experiments.

  Attributes:
    name: the name used by ``--problems`` and in file names.
    figure: the paper's figure, e.g. ``"1 (left)"``.
    title: a figure title (model, what the paper's figure shows).
    build: ``build(input_shape, classes, rngs=..., **sizes)`` makes the model.
    loss: ``loss(model, x, y, rngs)``, the mean loss of a minibatch; ``rngs``
      drives dropout or sampling in training and is ``None`` in evaluation.
    evaluate: ``evaluate(model, x, y)``, metrics on a whole data set, with at
      least ``"loss"``.
    data: which data it trains on: ``"images"`` (MNIST by default),
      ``"cnn"`` (the same, or CIFAR-10 from ``--data``) or ``"bow"``.
    bundled: the bundled images it trains on by default: ``"mnist"``, or
      ``"digits"`` where MNIST would not fit the default run's time (MNIST at
      ``--paper-scale``).
    standardized: whether the inputs are standardized (classifiers of
      images) or used as they are (intensities for the VAE, word values).
    steps: the default number of training steps.
    paper_epochs: the epochs of the paper's figure, the steps of ``--paper-scale``.
    sizes: the model's sizes in the default run.
    paper_sizes: the paper's sizes.
    notes: differences from the paper that remain at the paper's scale.
    optimizers: the optimizers the paper's figure compares (the default).
    decay_learning_rate: whether the step size decays as :math:`\alpha / \sqrt t`.
    study: ``"optimizers"`` (figures 1-3: one curve per optimizer) or
      ``"bias_correction"`` (figure 4: Adam with and without bias correction
      over a grid of b1, b2 and step sizes).
    batch_size: minibatch size (128 in all of the paper's experiments).
    input_shape: the shape of one input, set by :meth:`bind`.
    classes: the number of classes, set by :meth:`bind`.
    paper_scale: whether :meth:`bind` chose the paper's sizes.
  """

  name: str
  figure: str
  title: str
  build: Callable[..., nnx.Module]
  loss: Loss
  evaluate: Evaluate
  data: Literal["images", "cnn", "bow"]
  bundled: Literal["mnist", "digits"]
  standardized: bool
  steps: int
  paper_epochs: int
  sizes: Sizes = ()
  paper_sizes: Sizes = ()
  notes: tuple[str, ...] = ()
  optimizers: tuple[str, ...] = ("adam", "sgd_nesterov", "adagrad")
  decay_learning_rate: bool = False
  study: Literal["optimizers", "bias_correction"] = "optimizers"
  batch_size: int = BATCH_SIZE
  input_shape: tuple[int, ...] = ()
  classes: int = 0
  paper_scale: bool = False

  def bind(self, input_shape: tuple[int, ...], classes: int, *, paper_scale: bool) -> Problem:
    """This problem for data of ``input_shape`` and ``classes``, at the chosen scale."""
    return dataclasses.replace(
      self, input_shape=tuple(input_shape), classes=classes, paper_scale=paper_scale
    )

  def make_model(self, rngs: nnx.Rngs) -> nnx.Module:
    """The model at the bound input shape and scale."""
    sizes = dict(self.paper_sizes if self.paper_scale else self.sizes)
    return self.build(self.input_shape, self.classes, rngs=rngs, **sizes)

  def default_steps(self, train_size: int) -> int:
    """The steps of a run: :attr:`steps`, or the paper's epochs at the paper's scale."""
    return (
      self.paper_epochs * math.ceil(train_size / self.batch_size)
      if self.paper_scale
      else self.steps
    )

  def differences(self, steps: int, train_size: int) -> list[str]:
    """What differs from the paper's experiment in a run of ``steps`` steps."""
    epochs = steps * self.batch_size / train_size
    out = (
      []
      if math.isclose(epochs, self.paper_epochs, rel_tol=0.05)
      else [f"{epochs:.3g} epochs instead of the paper's {self.paper_epochs}"]
    )
    if not self.paper_scale:
      active, paper = dict(self.sizes), dict(self.paper_sizes)
      out += [
        f"{key} {active[key]} instead of {paper[key]}" for key in paper if active[key] != paper[key]
      ]
    return out + list(self.notes)


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
  kernel = (
    model.kernel if isinstance(model, models.SparseLogisticRegression) else model.linear.kernel
  )
  return 0.5 * L2_PENALTY * jnp.sum(kernel[...] ** 2)


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
  # -log Bernoulli(x | sigmoid(l)) = softplus(l) - x l: one transcendental per pixel.
  reconstruction = (jax.nn.softplus(logits) - pixels * logits).sum(axis=-1)
  kl = 0.5 * (jnp.exp(log_var) + mean**2 - 1.0 - log_var).sum(axis=-1)
  return (reconstruction + kl).mean()


def vae_metrics(model: nnx.Module, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
  """The negative ELBO with the fixed evaluation draw of the noise."""
  return {"loss": negative_elbo(model, x, y)}


def _logistic(shape: tuple[int, ...], classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
  return models.LogisticRegression(models.features(shape), classes, rngs=rngs)


def _bag_of_words(shape: tuple[int, ...], classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
  return models.SparseLogisticRegression(shape[0], classes, rngs=rngs)


def _mlp(shape: tuple[int, ...], classes: int, *, rngs: nnx.Rngs, hidden: int) -> nnx.Module:
  return models.MLP(models.features(shape), classes, hidden=hidden, rngs=rngs)


def _vae(
  shape: tuple[int, ...], classes: int, *, rngs: nnx.Rngs, hidden: int, latent: int
) -> nnx.Module:
  del classes
  return models.VAE(models.features(shape), hidden=hidden, latent=latent, rngs=rngs)


PROBLEMS: dict[str, Problem] = {
  problem.name: problem
  for problem in (
    Problem(
      name="logreg",
      figure="1 (left)",
      title="L2-regularized logistic regression, α/√t (paper fig. 1, left)",
      build=_logistic,
      loss=regularized_logistic_loss,
      evaluate=regularized_logistic_metrics,
      data="images",
      bundled="mnist",
      standardized=True,
      steps=1000,
      paper_epochs=45,
      decay_learning_rate=True,
    ),
    Problem(
      name="bow",
      figure="1 (right)",
      title="Sparse bag-of-words logistic regression, 50% dropout, α/√t (paper fig. 1, right)",
      build=_bag_of_words,
      loss=regularized_logistic_loss,
      evaluate=regularized_logistic_metrics,
      data="bow",
      bundled="mnist",
      standardized=False,
      steps=600,
      paper_epochs=160,
      decay_learning_rate=True,
    ),
    Problem(
      name="mlp",
      figure="2",
      title="MLP with two ReLU layers and dropout (paper fig. 2)",
      build=_mlp,
      loss=classification_loss,
      evaluate=classification_metrics,
      data="images",
      bundled="mnist",
      standardized=True,
      steps=600,
      paper_epochs=200,
      sizes=(("hidden", 128),),
      paper_sizes=(("hidden", 1000),),
      optimizers=("adam", "sgd_nesterov", "adagrad", "rmsprop", "adadelta"),
    ),
    Problem(
      name="cnn",
      figure="3",
      title="ConvNet (paper fig. 3)",
      build=models.ConvNet,
      loss=classification_loss,
      evaluate=classification_metrics,
      data="cnn",
      bundled="digits",
      standardized=True,
      steps=300,
      paper_epochs=45,
      sizes=(("channels", (8, 16)), ("hidden", 64), ("kernel", 3)),
      paper_sizes=(("channels", (64, 64, 128)), ("hidden", 1000), ("kernel", 5)),
      notes=("2x2 max pooling instead of 3x3 with stride 2; no ZCA whitening, no dropout",),
    ),
    Problem(
      name="vae",
      figure="4",
      title="VAE, bias correction (paper fig. 4)",
      build=_vae,
      loss=negative_elbo,
      evaluate=vae_metrics,
      data="images",
      bundled="digits",
      standardized=False,
      steps=300,
      paper_epochs=100,
      sizes=(("hidden", 64), ("latent", 8)),
      paper_sizes=(("hidden", 500), ("latent", 50)),
      study="bias_correction",
    ),
  )
}
