"""The models of the paper's figures 1-4, as Flax NNX modules sized for 8x8 digits.

Each ``__call__`` reads like the paper's description of the model. The paper
trains on 28x28 MNIST and 32x32 CIFAR-10; these are scaled down to 8x8 digits
and to a CPU budget (the paper's sizes are in each docstring).

The examples trace the models with :func:`jax.eval_shape` (shapes only, no
compilation). Dropout and the VAE's sampling take their randomness from the ``rngs``
argument of ``__call__``: pass ``nnx.Rngs(dropout=key)`` (or ``noise=key``)
in training; without it the MLP is deterministic (evaluation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

NUM_CLASSES = 10
PIXELS = 64


class LogisticRegression(nnx.Module):
  r"""Multiclass logistic regression (figure 1): one linear layer to the logits.

  .. math::  p(y \mid x) = \operatorname{softmax}(W x + b)

  Examples:
    >>> model = LogisticRegression(rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((5, 8, 8, 1))).shape
    (5, 10)

  References:
    Kingma & Ba, 2015, section 6.1 and figure 1.
  """

  def __init__(self, *, rngs: nnx.Rngs) -> None:
    self.linear = nnx.Linear(PIXELS, NUM_CLASSES, rngs=rngs)

  def __call__(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits of a batch of images ``(n, 8, 8, 1)``; ``rngs`` is unused."""
    del rngs
    return self.linear(images.reshape(images.shape[0], -1))


class MLP(nnx.Module):
  r"""Two hidden ReLU layers with dropout (figure 2).

  .. math::

    h_1 = \operatorname{dropout}(\operatorname{relu}(W_1 x + b_1)), \quad
    h_2 = \operatorname{dropout}(\operatorname{relu}(W_2 h_1 + b_2)), \quad
    \text{logits} = W_3 h_2 + b_3

  The paper uses 1,000 units per hidden layer on MNIST; the default here is
  128 (64 input pixels, and the CPU budget of ``adam-optax compare``).

  Examples:
    >>> model = lambda: MLP(rngs=nnx.Rngs(0))
    >>> jax.eval_shape(lambda: model()(jnp.zeros((5, 8, 8, 1)), rngs=nnx.Rngs(dropout=1))).shape
    (5, 10)

  References:
    Kingma & Ba, 2015, section 6.2 and figure 2.
  """

  def __init__(self, *, hidden: int = 128, dropout: float = 0.5, rngs: nnx.Rngs) -> None:
    self.hidden1 = nnx.Linear(PIXELS, hidden, rngs=rngs)
    self.hidden2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.output = nnx.Linear(hidden, NUM_CLASSES, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits of a batch; dropout is applied only when ``rngs`` is given."""
    deterministic = rngs is None
    x = images.reshape(images.shape[0], -1)
    x = self.dropout(nnx.relu(self.hidden1(x)), deterministic=deterministic, rngs=rngs)
    x = self.dropout(nnx.relu(self.hidden2(x)), deterministic=deterministic, rngs=rngs)
    return self.output(x)


class Conv3x3(nnx.Module):
  r"""A 3x3 'same' convolution written as a matrix product over 3x3 patches.

  .. math::  y_{ij} = W^\top \operatorname{patch}_{3\times3}(x)_{ij} + b

  The same function as ``nnx.Conv(c_in, c_out, (3, 3))``, but when many
  models are trained at once under :func:`jax.vmap`, a batched kernel turns
  ``lax.conv`` into a grouped convolution, which XLA runs tens of times more
  slowly on CPU; a batched matrix product has no such cliff.

  Examples:
    >>> conv = lambda: Conv3x3(1, 4, rngs=nnx.Rngs(0))
    >>> jax.eval_shape(lambda: conv()(jnp.ones((2, 8, 8, 1)))).shape
    (2, 8, 8, 4)

  References:
    LeCun et al., "Gradient-based learning applied to document recognition", 1998.
  """

  def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs) -> None:
    fan_in = 9 * in_channels
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (fan_in, out_channels)))
    self.bias = nnx.Param(jnp.zeros((out_channels,)))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Convolves ``x`` of shape ``(n, height, width, in_channels)``."""
    _, height, width, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    shifts = [padded[:, i : i + height, j : j + width] for i in range(3) for j in range(3)]
    return jnp.concatenate(shifts, axis=-1) @ self.kernel[...] + self.bias[...]


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """Max over non-overlapping 2x2 windows of ``(n, height, width, channels)``."""
  n, height, width, channels = x.shape
  return x.reshape(n, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


class ConvNet(nnx.Module):
  r"""A small convolutional network (figure 3): two conv-pool stages, one dense layer.

  .. math::

    8{\times}8 \xrightarrow{\text{conv } 3{\times}3,\ \text{relu, pool}} 4{\times}4{\times}c_1
    \xrightarrow{\text{conv } 3{\times}3,\ \text{relu, pool}} 2{\times}2{\times}c_2
    \xrightarrow{\text{dense, relu}} h \xrightarrow{\text{dense}} 10

  The paper's network on 32x32 CIFAR-10 is c64-c64-c128-1000 with 5x5
  filters; here 8-16-64 with 3x3 filters fits 8x8 digits and a CPU budget.

  Examples:
    >>> model = lambda: ConvNet(rngs=nnx.Rngs(0))
    >>> jax.eval_shape(lambda: model()(jnp.zeros((5, 8, 8, 1)))).shape
    (5, 10)

  References:
    Kingma & Ba, 2015, section 6.3 and figure 3.
  """

  def __init__(
    self, *, channels: tuple[int, int] = (8, 16), hidden: int = 64, rngs: nnx.Rngs
  ) -> None:
    self.conv1 = Conv3x3(1, channels[0], rngs=rngs)
    self.conv2 = Conv3x3(channels[0], channels[1], rngs=rngs)
    self.dense = nnx.Linear(4 * channels[1], hidden, rngs=rngs)
    self.output = nnx.Linear(hidden, NUM_CLASSES, rngs=rngs)

  def __call__(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits of a batch of images ``(n, 8, 8, 1)``; ``rngs`` is unused."""
    del rngs
    x = max_pool_2x2(nnx.relu(self.conv1(images)))
    x = max_pool_2x2(nnx.relu(self.conv2(x)))
    x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
    return self.output(x)


class VAE(nnx.Module):
  r"""A variational autoencoder (figure 4) with a Bernoulli decoder.

  .. math::

    q(z \mid x) = \mathcal N(\mu(x), \operatorname{diag} \sigma^2(x)), \quad
    z = \mu + \sigma \odot \varepsilon, \quad
    p(x \mid z) = \operatorname{Bernoulli}(\operatorname{sigmoid}(f(z)))

  One softplus hidden layer in the encoder and one in the decoder, as in the
  paper (which uses 500 hidden units and 50 latent dimensions on MNIST; here
  64 and 8 for 64 pixels).

  Examples:
    >>> vae = lambda: VAE(rngs=nnx.Rngs(0))
    >>> outputs = jax.eval_shape(lambda: vae()(jnp.zeros((5, 8, 8, 1)), rngs=nnx.Rngs(noise=1)))
    >>> [out.shape for out in outputs]  # logits, mean, log-variance
    [(5, 64), (5, 8), (5, 8)]

  References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014;
    Kingma & Ba, 2015, section 6.4 and figure 4.
  """

  def __init__(self, *, hidden: int = 64, latent: int = 8, rngs: nnx.Rngs) -> None:
    self.encoder = nnx.Linear(PIXELS, hidden, rngs=rngs)
    self.mean = nnx.Linear(hidden, latent, rngs=rngs)
    self.log_var = nnx.Linear(hidden, latent, rngs=rngs)
    self.decoder = nnx.Linear(latent, hidden, rngs=rngs)
    self.reconstruction = nnx.Linear(hidden, PIXELS, rngs=rngs)

  def __call__(
    self, images: jax.Array, *, rngs: nnx.Rngs
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pixel logits of a reconstruction, and the mean and log-variance of q(z|x)."""
    h = nnx.softplus(self.encoder(images.reshape(images.shape[0], -1)))
    mean, log_var = self.mean(h), self.log_var(h)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rngs.noise(), mean.shape)
    return self.reconstruction(nnx.softplus(self.decoder(z))), mean, log_var
