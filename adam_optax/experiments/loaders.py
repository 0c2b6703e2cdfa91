"""A user's own data for ``compare --data DIR``: MNIST IDX files, CIFAR-10 batches, svmlight.

``DIR`` may hold any of three formats, each used by the problems it suits:

* the four IDX files of MNIST or Fashion-MNIST (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally ``.gz``): logreg, mlp, vae,
  and cnn unless CIFAR-10 is there too;
* CIFAR-10's python batches (``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch``, in ``DIR`` or ``DIR/cifar-10-batches-py``): cnn, as in the paper;
* a bag of words in svmlight format: IMDB's own ``train/labeledBow.feat`` and
  ``test/labeledBow.feat`` (ratings of 7 and more are positive, as in
  Maas et al.), or one ``bow.svmlight`` split here 80/20: bow. The
  :data:`~adam_optax.experiments.bow.VOCABULARY` most frequent words are kept, as
  in the paper.

A file that is missing a part, truncated or malformed raises
:class:`DataError`, whose message names the file and what is wrong.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path

import numpy as np
import sklearn.datasets

from adam_optax.experiments import bow
from adam_optax.experiments.data import Dataset

IDX_FILES = {
  "x_train": "train-images-idx3-ubyte",
  "y_train": "train-labels-idx1-ubyte",
  "x_test": "t10k-images-idx3-ubyte",
  "y_test": "t10k-labels-idx1-ubyte",
}
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_PIXELS = 32 * 32 * 3
IMDB_FILES = ("train/labeledBow.feat", "test/labeledBow.feat")
IMDB_POSITIVE = 7
SVMLIGHT_FILE = "bow.svmlight"
# The IDX type code of unsigned bytes, the only one MNIST uses.
IDX_UBYTE = 0x08


class DataError(ValueError):
  """A data file that cannot be used; the message names the file and what is wrong."""

  def __init__(self, path: Path, problem: str) -> None:
    super().__init__(f"{path}: {problem}")


def _read_bytes(path: Path) -> bytes:
  try:
    if path.suffix == ".gz":
      with gzip.open(path, "rb") as file:
        return file.read()
    return path.read_bytes()
  except (OSError, EOFError, zlib.error) as error:
    raise DataError(path, f"cannot read it ({error})") from error


def read_idx(path: Path) -> np.ndarray:
  """The array of an IDX file of unsigned bytes (gzipped if its name ends in ``.gz``).

  The header is two zero bytes, the type code ``0x08``, the number of
  dimensions, and each dimension as a big-endian int32; the data follows.

  Examples:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "labels"
    >>> _ = path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 9]))
    >>> read_idx(path).tolist()
    [7, 1, 9]

  Raises:
    DataError: on a bad header, a truncated file or trailing bytes.

  References:
    LeCun, Cortes & Burges, "The MNIST database", file format section.
  """
  raw = _read_bytes(path)
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != IDX_UBYTE:
    raise DataError(path, "not an IDX file of unsigned bytes (bad magic number)")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(path, f"truncated: the header of {ndim} dimensions needs {header} bytes")
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">i4"))
  expected = header + int(np.prod(shape))
  if len(raw) != expected:
    state = "truncated" if len(raw) < expected else "too long"
    raise DataError(path, f"{state}: {len(raw)} bytes, the header {shape} asks for {expected}")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find(folder: Path, name: str) -> Path | None:
  return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def load_idx(folder: Path) -> Dataset | None:
  """MNIST-format images from the four IDX files in ``folder``, or ``None`` if there are none.

  Raises:
    DataError: when only some of the four are there, or one is malformed.
  """
  paths = {key: _find(folder, name) for key, name in IDX_FILES.items()}
  if not any(paths.values()):
    return None
  missing = [IDX_FILES[key] for key, path in paths.items() if path is None]
  if missing:
    raise DataError(folder, f"missing {', '.join(missing)} (or .gz) beside the other IDX files")
  arrays = {key: read_idx(path) for key, path in paths.items()}
  for part in ("train", "test"):
    images, labels = arrays[f"x_{part}"], arrays[f"y_{part}"]
    if images.ndim != 3 or labels.ndim != 1:
      raise DataError(paths[f"x_{part}"], f"expected images (n, h, w), got shape {images.shape}")
    if len(images) != len(labels):
      raise DataError(paths[f"y_{part}"], f"{len(labels)} labels for {len(images)} images")
  x_train, x_test = ((arrays[k] / np.float32(255))[..., None] for k in ("x_train", "x_test"))
  y_train, y_test = (arrays[k].astype(np.int32) for k in ("y_train", "y_test"))
  source = f"IDX files in {folder} ({len(y_train):,} training, {len(y_test):,} test images)"
  return Dataset(x_train, y_train, x_test, y_test, source, x_train.shape[1:])


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
  try:
    with path.open("rb") as file:
      batch = pickle.load(file, encoding="bytes")
    data = np.asarray(batch[b"data"], np.uint8)
    labels = np.asarray(batch[b"labels"], np.int32)
  except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as error:
    raise DataError(
      path, f"not a CIFAR-10 python batch ({type(error).__name__}: {error})"
    ) from None
  if data.ndim != 2 or data.shape[1] != CIFAR_PIXELS or len(labels) != len(data):
    raise DataError(path, f"expected data (n, {CIFAR_PIXELS}) and n labels, got {data.shape}")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) / np.float32(255)
  return images, labels


def load_cifar10(folder: Path) -> Dataset | None:
  """CIFAR-10's python batches in ``folder`` (or its ``cifar-10-batches-py``), or ``None``.

  Raises:
    DataError: when a batch is missing or malformed.
  """
  folder = next(
    (f for f in (folder, folder / "cifar-10-batches-py") if (f / CIFAR_TEST).is_file()), None
  )
  if folder is None:
    return None
  missing = [name for name in CIFAR_TRAIN if not (folder / name).is_file()]
  if missing:
    raise DataError(folder, f"missing {', '.join(missing)} beside {CIFAR_TEST}")
  parts = [_cifar_batch(folder / name) for name in CIFAR_TRAIN]
  x_test, y_test = _cifar_batch(folder / CIFAR_TEST)
  x_train = np.concatenate([images for images, _ in parts])
  y_train = np.concatenate([labels for _, labels in parts])
  source = f"CIFAR-10 python batches in {folder} ({len(y_train):,} training images, 32x32x3)"
  return Dataset(x_train, y_train, x_test, y_test, source, x_train.shape[1:])


def _svmlight(path: Path, n_features: int | None = None) -> tuple:
  try:
    return sklearn.datasets.load_svmlight_file(str(path), n_features=n_features)
  except (OSError, ValueError, EOFError) as error:
    raise DataError(path, f"not a valid svmlight file ({error})") from None


def _most_frequent(train: object, *others: object) -> list:
  """The columns of the :data:`bow.VOCABULARY` words in most training documents."""
  frequency = np.asarray((train != 0).sum(axis=0)).ravel()
  keep = np.sort(np.argsort(-frequency, kind="stable")[: bow.VOCABULARY])
  return [matrix[:, keep] for matrix in (train, *others)]


def load_bag_of_words(folder: Path) -> Dataset | None:
  """A bag of words in svmlight format from ``folder``, or ``None`` if there is none.

  Raises:
    DataError: when a file is malformed or has no documents.
  """
  imdb = [folder / name for name in IMDB_FILES]
  if all(path.is_file() for path in imdb):
    x_train, ratings_train = _svmlight(imdb[0])
    x_test, ratings_test = _svmlight(imdb[1], n_features=x_train.shape[1])
    x_train, x_test = _most_frequent(x_train.tocsr(), x_test.tocsr())
    y_train, y_test = ((r >= IMDB_POSITIVE).astype(np.int32) for r in (ratings_train, ratings_test))
    source = f"IMDB bag of words in {folder} ({x_train.shape[1]:,} most frequent words)"
    train_bag, test_bag = bow.from_csr(x_train), bow.from_csr(x_test)
    return Dataset(train_bag, y_train, test_bag, y_test, source, (x_train.shape[1],))
  path = folder / SVMLIGHT_FILE
  if not path.is_file():
    return None
  matrix, raw_labels = _svmlight(path)
  if matrix.shape[0] < 10:
    raise DataError(
      path, f"needs at least 10 documents for a train/test split, got {matrix.shape[0]}"
    )
  (matrix,) = _most_frequent(matrix.tocsr())
  labels = np.unique(raw_labels, return_inverse=True)[1].astype(np.int32)
  if np.bincount(labels).min() < 2:
    raise DataError(path, "every label needs at least 2 documents for a stratified split")
  source = (
    f"svmlight bag of words {path} ({matrix.shape[0]:,} documents, {matrix.shape[1]:,} words)"
  )
  return bow.split_bag(bow.from_csr(matrix), labels, matrix.shape[1], source)
