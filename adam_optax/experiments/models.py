"""The models of the paper's figures 1-4, as Flax NNX modules of any input size.

Each ``__call__`` reads like the paper's description of the model; the
sizes (the paper's and those of the default CPU run) are chosen in
:mod:`~adam_optax.experiments.problems`.

The examples trace the models with :func:`jax.eval_shape` (shapes only, no
compilation). Dropout and the VAE's sampling take their randomness from the ``rngs``
argument of ``__call__``: pass ``nnx.Rngs(dropout=key)`` (or ``noise=key``)
in training; without it the classifiers are deterministic (evaluation).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from adam_optax.experiments.bow import BagOfWords


def _flat(images: jax.Array) -> jax.Array:
  return images.reshape(images.shape[0], -1)


class LogisticRegression(nnx.Module):
  r"""Multiclass logistic regression (figure 1): one linear layer, dropout on its inputs.

  .. math::

    p(y \mid x) = \operatorname{softmax}\Big(W \frac{m \odot x}{1 - p} + b\Big),
    \qquad m_k \sim \operatorname{Bernoulli}(1 - p)

  The dropout mask :math:`m` (rate :math:`p`: 0 for MNIST, 0.5 for the
  paper's bag of words) is drawn only in training. On bag-of-words inputs,
  mostly zeros, the gradient of :math:`W` is zero but for the words in the
  minibatch.

  Examples:
    >>> model = LogisticRegression(784, 10, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((5, 28, 28, 1))).shape
    (5, 10)

  References:
    Kingma & Ba, 2015, section 6.1 and figure 1; Srivastava et al.,
    "Dropout", JMLR 2014.
  """

  def __init__(self, features: int, classes: int, *, dropout: float = 0.0, rngs: nnx.Rngs) -> None:
    self.linear = nnx.Linear(features, classes, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, inputs: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits of a batch; dropout on the inputs only when ``rngs`` is given."""
    x = _flat(inputs).astype(self.linear.kernel.dtype)
    return self.linear(self.dropout(x, deterministic=rngs is None, rngs=rngs))


class SparseLogisticRegression(nnx.Module):
  r"""Logistic regression on a bag of words with dropout noise (figure 1, right).

  .. math::

    \text{logits} = \sum_{k \in d} \frac{m_k}{1 - p}\, x_k W_k + b,
    \qquad m_k \sim \operatorname{Bernoulli}(1 - p)

  where :math:`W_k` is the row of word :math:`k`; the dropout mask
  :math:`m` (rate :math:`p`, 0.5 in the paper) is drawn only in training. A
  row's gradient is zero unless its word is in the minibatch.

  Examples:
    >>> model = SparseLogisticRegression(100, 2, rngs=nnx.Rngs(0))
    >>> bag = BagOfWords(jnp.zeros((5, 7), jnp.int32), jnp.ones((5, 7)))
    >>> model(bag).shape
    (5, 2)

  References:
    Kingma & Ba, 2015, section 6.1 and figure 1 (right); Srivastava et al.,
    "Dropout", JMLR 2014.
  """

  def __init__(
    self, vocabulary: int, classes: int, *, dropout: float = 0.5, rngs: nnx.Rngs
  ) -> None:
    del rngs  # zeros, as any start of a convex problem
    self.kernel = nnx.Param(jnp.zeros((vocabulary, classes)))
    self.bias = nnx.Param(jnp.zeros((classes,)))
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, bag: BagOfWords, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits of a batch of documents; dropout on the words only when ``rngs`` is given."""
    values = self.dropout(bag.values, deterministic=rngs is None, rngs=rngs)
    return jnp.einsum("nk,nkc->nc", values, self.kernel[...][bag.indices]) + self.bias[...]


class MLP(nnx.Module):
  r"""Two hidden ReLU layers with dropout (figure 2).

  .. math::

    h_1 = \operatorname{dropout}(\operatorname{relu}(W_1 x + b_1)), \quad
    h_2 = \operatorname{dropout}(\operatorname{relu}(W_2 h_1 + b_2)), \quad
    \text{logits} = W_3 h_2 + b_3

  The paper uses 1,000 units per hidden layer on MNIST.

  Examples:
    >>> model = lambda: MLP(784, 10, hidden=32, rngs=nnx.Rngs(0))
    >>> images = jnp.zeros((5, 28, 28, 1))
    >>> jax.eval_shape(lambda: model()(images, rngs=nnx.Rngs(dropout=1))).shape
    (5, 10)

  References:
    Kingma & Ba, 2015, section 6.2 and figure 2.
  """

  def __init__(
    self, features: int, classes: int, *, hidden: int, dropout: float = 0.5, rngs: nnx.Rngs
  ) -> None:
    self.hidden1 = nnx.Linear(features, hidden, rngs=rngs)
    self.hidden2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.output = nnx.Linear(hidden, classes, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits of a batch; dropout is applied only when ``rngs`` is given."""
    deterministic = rngs is None
    x = self.dropout(nnx.relu(self.hidden1(_flat(images))), deterministic=deterministic, rngs=rngs)
    x = self.dropout(nnx.relu(self.hidden2(x)), deterministic=deterministic, rngs=rngs)
    return self.output(x)


class Conv(nnx.Module):
  r"""A ``k x k`` 'same' convolution written as a matrix product over ``k x k`` patches.

  .. math::  y_{ij} = W^\top \operatorname{patch}_{k\times k}(x)_{ij} + b

  The same function as ``nnx.Conv(c_in, c_out, (k, k))``, but when many
  models are trained at once under :func:`jax.vmap`, a batched kernel turns
  ``lax.conv`` into a grouped convolution, which XLA runs tens of times more
  slowly on CPU; a batched matrix product has no such cliff.

  Examples:
    >>> conv = lambda: Conv(1, 4, kernel=5, rngs=nnx.Rngs(0))
    >>> jax.eval_shape(lambda: conv()(jnp.ones((2, 8, 8, 1)))).shape
    (2, 8, 8, 4)

  References:
    LeCun et al., "Gradient-based learning applied to document recognition", 1998.
  """

  def __init__(
    self, in_channels: int, out_channels: int, *, kernel: int = 3, rngs: nnx.Rngs
  ) -> None:
    self.size = kernel
    fan_in = kernel * kernel * in_channels
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (fan_in, out_channels)))
    self.bias = nnx.Param(jnp.zeros((out_channels,)))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Convolves ``x`` of shape ``(n, height, width, in_channels)``."""
    _, height, width, _ = x.shape
    k, pad = self.size, self.size // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    shifts = [padded[:, i : i + height, j : j + width] for i in range(k) for j in range(k)]
    return jnp.concatenate(shifts, axis=-1) @ self.kernel[...] + self.bias[...]


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """Max over non-overlapping 2x2 windows of ``(n, height, width, channels)``; odd sides padded."""
  n, height, width, channels = x.shape
  x = jnp.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), constant_values=-jnp.inf)
  return x.reshape(n, -(-height // 2), 2, -(-width // 2), 2, channels).max(axis=(2, 4))


class ConvNet(nnx.Module):
  r"""A convolutional network (figure 3): conv-relu-pool stages, then one dense ReLU layer.

  .. math::

    x \xrightarrow{(\text{conv } k{\times}k,\ \text{relu, pool } 2{\times}2) \times S}
    h \xrightarrow{\text{dense, relu}} u \xrightarrow{\text{dense}} \text{logits}

  The paper's network on 32x32 CIFAR-10 is c64-c64-c128-1000 (three
  stages of 5x5 filters, pooling 3x3 with stride 2).

  Examples:
    >>> model = lambda: ConvNet((28, 28, 1), 10, channels=(4, 8), hidden=16, rngs=nnx.Rngs(0))
    >>> jax.eval_shape(lambda: model()(jnp.zeros((5, 28, 28, 1)))).shape
    (5, 10)

  References:
    Kingma & Ba, 2015, section 6.3 and figure 3.
  """

  def __init__(
    self,
    input_shape: tuple[int, ...],
    classes: int,
    *,
    channels: tuple[int, ...],
    hidden: int,
    kernel: int = 3,
    rngs: nnx.Rngs,
  ) -> None:
    height, width, in_channels = input_shape
    widths = (in_channels, *channels)
    self.convs = nnx.List(
      Conv(c_in, c_out, kernel=kernel, rngs=rngs)
      for c_in, c_out in zip(widths, channels, strict=False)
    )
    for _ in channels:
      height, width = -(-height // 2), -(-width // 2)
    self.dense = nnx.Linear(height * width * channels[-1], hidden, rngs=rngs)
    self.output = nnx.Linear(hidden, classes, rngs=rngs)

  def __call__(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits of a batch of images ``(n, height, width, channels)``; ``rngs`` is unused."""
    del rngs
    x = images
    for conv in self.convs:
      x = max_pool_2x2(nnx.relu(conv(x)))
    return self.output(nnx.relu(self.dense(_flat(x))))


class VAE(nnx.Module):
  r"""A variational autoencoder (figure 4) with a Bernoulli decoder.

  .. math::

    q(z \mid x) = \mathcal N(\mu(x), \operatorname{diag} \sigma^2(x)), \quad
    z = \mu + \sigma \odot \varepsilon, \quad
    p(x \mid z) = \operatorname{Bernoulli}(\operatorname{sigmoid}(f(z)))

  One softplus hidden layer in the encoder and one in the decoder, as in the
  paper (which uses 500 hidden units and 50 latent dimensions on MNIST).

  Examples:
    >>> vae = lambda: VAE(784, hidden=32, latent=4, rngs=nnx.Rngs(0))
    >>> images = jnp.zeros((5, 28, 28, 1))
    >>> outputs = jax.eval_shape(lambda: vae()(images, rngs=nnx.Rngs(noise=1)))
    >>> [out.shape for out in outputs]  # logits, mean, log-variance
    [(5, 784), (5, 4), (5, 4)]

  References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014;
    Kingma & Ba, 2015, section 6.4 and figure 4.
  """

  def __init__(self, features: int, *, hidden: int, latent: int, rngs: nnx.Rngs) -> None:
    self.encoder = nnx.Linear(features, hidden, rngs=rngs)
    self.mean = nnx.Linear(hidden, latent, rngs=rngs)
    self.log_var = nnx.Linear(hidden, latent, rngs=rngs)
    self.decoder = nnx.Linear(latent, hidden, rngs=rngs)
    self.reconstruction = nnx.Linear(hidden, features, rngs=rngs)

  def __call__(
    self, images: jax.Array, *, rngs: nnx.Rngs
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pixel logits of a reconstruction, and the mean and log-variance of q(z|x)."""
    h = nnx.softplus(self.encoder(_flat(images)))
    mean, log_var = self.mean(h), self.log_var(h)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rngs.noise(), mean.shape)
    return self.reconstruction(nnx.softplus(self.decoder(z))), mean, log_var


def features(input_shape: tuple[int, ...]) -> int:
  """The length of one flattened input."""
  return math.prod(input_shape)
