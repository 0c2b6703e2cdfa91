"""The handwritten digits that scikit-learn bundles: 1,797 images of 8x8 pixels.

Loaded from the copy installed with scikit-learn (no download, ever), split
once into a fixed stratified train and test set, and either kept as pixel
intensities in ``[0, 1]`` (for the VAE's Bernoulli likelihood) or standardized
per pixel with the training set's statistics (for the classifiers).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import sklearn.datasets
import sklearn.model_selection

TEST_FRACTION = 0.2
SPLIT_SEED = 0


class Digits(NamedTuple):
  """A train/test split of the digits, images shaped ``(n, 8, 8, 1)``.

  Attributes:
    x_train: training images, float32.
    y_train: training labels in ``0..9``, int32.
    x_test: test images, float32.
    y_test: test labels, int32.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def load_digits() -> Digits:
  """The digits with pixel intensities in ``[0, 1]``, split 80/20 by class.

  The split is stratified and fixed (``random_state=0``), so every run and
  every notebook sees the same 1,437 training and 360 test images.

  Examples:
    >>> digits = load_digits()
    >>> digits.x_train.shape, digits.x_test.shape
    ((1437, 8, 8, 1), (360, 8, 8, 1))
    >>> float(digits.x_train.max())
    1.0

  Returns:
    The :class:`Digits` split.

  References:
    Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI, 1998.
  """
  bunch = sklearn.datasets.load_digits()
  images = (bunch.images / 16.0).astype(np.float32)[..., None]
  labels = bunch.target.astype(np.int32)
  x_train, x_test, y_train, y_test = sklearn.model_selection.train_test_split(
    images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
  )
  return Digits(x_train, y_train, x_test, y_test)


def standardize(digits: Digits) -> Digits:
  r"""Standardizes each pixel with the mean and deviation of the training set.

  .. math::

    x' = \frac{x - \mu_{\text{train}}}{\sigma_{\text{train}}}

  Pixels that are constant in the training set (the corners are always 0)
  get :math:`\sigma = 1`, so they stay 0 rather than becoming NaN.

  Examples:
    >>> train = standardize(load_digits()).x_train
    >>> bool(abs(train.mean()) < 1e-6)
    True

  Args:
    digits: the split, with raw intensities.

  Returns:
    The same split, standardized; labels unchanged.

  References:
    LeCun, Bottou, Orr & Müller, "Efficient BackProp", 1998, section 4.3.
  """
  mean = digits.x_train.mean(axis=0)
  std = digits.x_train.std(axis=0)
  std = np.where(std > 0, std, 1.0).astype(np.float32)
  return digits._replace(x_train=(digits.x_train - mean) / std, x_test=(digits.x_test - mean) / std)


def minibatches(seed: int, size: int, steps: int, batch_size: int) -> np.ndarray:
  """The example indices of each step's minibatch: shuffled epochs, one after another.

  Every epoch visits all ``size`` examples once, in an order drawn from
  ``seed``; consecutive batches take consecutive slices of that sequence
  (a batch may straddle two epochs). Drawn with NumPy, once per seed, so
  every optimizer sees the same minibatches for the same seed and the
  compiled training step holds no sampling code.

  Examples:
    >>> batches = minibatches(seed=0, size=10, steps=4, batch_size=5)
    >>> batches.shape, sorted(batches[:2].ravel().tolist()) == list(range(10))
    ((4, 5), True)

  Args:
    seed: the seed of the order.
    size: the number of examples.
    steps: the number of minibatches.
    batch_size: the examples per minibatch.

  Returns:
    An int32 array of shape ``(steps, batch_size)``.

  References:
    Bottou, "Stochastic Gradient Descent Tricks", 2012 (shuffling each epoch).
  """
  rng = np.random.default_rng(seed)
  epochs = -(-steps * batch_size // size)
  order = np.concatenate([rng.permutation(size) for _ in range(epochs)])
  return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)
