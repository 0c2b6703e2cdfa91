"""``adam-optax compare --data``: each loader on a tiny file in its format, and bad files."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adam_optax import cli
from adam_optax.experiments import bow, loaders, models

RNG = np.random.default_rng(0)


def _idx(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
  return header + array.astype(np.uint8).tobytes()


def _write_idx(folder: Path, *, train: int = 30, test: int = 20, gz: bool = False) -> None:
  arrays = {
    "train-images-idx3-ubyte": RNG.integers(0, 256, (train, 6, 6)),
    "train-labels-idx1-ubyte": np.arange(train) % 3,
    "t10k-images-idx3-ubyte": RNG.integers(0, 256, (test, 6, 6)),
    "t10k-labels-idx1-ubyte": np.arange(test) % 3,
  }
  for name, array in arrays.items():
    if gz:
      (folder / f"{name}.gz").write_bytes(gzip.compress(_idx(array)))
    else:
      (folder / name).write_bytes(_idx(array))


def _write_cifar(folder: Path, n: int = 4) -> None:
  for name in (*loaders.CIFAR_TRAIN, loaders.CIFAR_TEST):
    batch = {b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [1, 2, 3, 4][:n]}
    (folder / name).write_bytes(pickle.dumps(batch))


def _write_svmlight(path: Path, documents: int = 20) -> None:
  lines = [f"{i % 2} {i % 7 + 1}:1 {i % 5 + 10}:2" for i in range(documents)]
  path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_load_with_or_without_gzip(tmp_path: Path, gz: bool) -> None:
  _write_idx(tmp_path, gz=gz)
  dataset = loaders.load_idx(tmp_path)
  assert dataset is not None
  assert dataset.x_train.shape == (30, 6, 6, 1)
  assert dataset.x_test.shape == (20, 6, 6, 1)
  assert dataset.input_shape == (6, 6, 1)
  assert dataset.classes == 3
  assert dataset.x_train.min() >= 0
  assert dataset.x_train.max() <= 1


def test_cifar_batches_load_as_32x32x3(tmp_path: Path) -> None:
  _write_cifar(tmp_path)
  dataset = loaders.load_cifar10(tmp_path)
  assert dataset is not None
  assert dataset.x_train.shape == (20, 32, 32, 3)
  assert dataset.x_test.shape == (4, 32, 32, 3)


def test_svmlight_bag_of_words_loads_as_padded_word_lists(tmp_path: Path) -> None:
  _write_svmlight(tmp_path / loaders.SVMLIGHT_FILE)
  dataset = loaders.load_bag_of_words(tmp_path)
  assert dataset is not None
  assert isinstance(dataset.x_train, bow.BagOfWords)
  assert dataset.x_train.indices.shape == (16, 2)  # two words a document
  assert dataset.classes == 2
  assert sorted(set(dataset.x_train.values.ravel().tolist())) == [1.0, 2.0]


def _truncate(path: Path) -> None:
  path.write_bytes(path.read_bytes()[:-7])


def _garble(path: Path) -> None:
  path.write_bytes(b"this is not a pickle")


@pytest.mark.parametrize(
  ("write", "break_file", "name", "message"),
  [
    (_write_idx, _truncate, "t10k-images-idx3-ubyte", "truncated"),
    (
      _write_idx,
      lambda p: p.write_bytes(b"\x08\x03" + p.read_bytes()[2:]),
      "train-labels-idx1-ubyte",
      "bad magic number",
    ),
    (lambda f: _write_idx(f, gz=True), _truncate, "train-images-idx3-ubyte.gz", "cannot read"),
    (_write_idx, lambda p: p.unlink(), "t10k-labels-idx1-ubyte", "missing t10k-labels"),
    (_write_cifar, _garble, "data_batch_3", "not a CIFAR-10 python batch"),
    (
      lambda f: _write_svmlight(f / loaders.SVMLIGHT_FILE),
      lambda p: p.write_text("1 3:x\n"),
      loaders.SVMLIGHT_FILE,
      "not a valid svmlight file",
    ),
  ],
)
def test_a_bad_file_is_a_one_line_error_naming_it(
  tmp_path: Path,
  capsys: pytest.CaptureFixture,
  write: object,
  break_file: object,
  name: str,
  message: str,
) -> None:
  folder = tmp_path / "data"
  folder.mkdir()
  write(folder)
  break_file(folder / name)
  out = tmp_path / "out"
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["compare", "--quick", "--data", str(folder), "--out", str(out)])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert err.startswith("adam-optax compare: error: --data: ")
  assert str(folder / name) in err or (name.startswith("t10k-labels") and str(folder) in err)
  assert message in err
  assert not out.exists()


def test_a_folder_without_data_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["compare", "--quick", "--data", str(tmp_path), "--out", str(tmp_path / "out")])
  assert exit_info.value.code == 2
  assert "holds no IDX, CIFAR-10 or svmlight files" in capsys.readouterr().err


def test_synthetic_reviews_have_zipf_frequencies_and_both_labels() -> None:
  reviews = bow.synthetic_reviews(documents=400, vocabulary=2000)
  counts = np.bincount(reviews.x_train.indices[reviews.x_train.values > 0], minlength=2000)
  assert counts[:10].mean() > 10 * counts[1000:].mean()  # frequent words are far more common
  share = reviews.y_train.mean()
  assert 0.3 < share < 0.7
  assert "synthetic" in reviews.source


def test_sparse_logistic_regression_has_a_sparse_gradient() -> None:
  model = models.SparseLogisticRegression(50, 2, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  batch = bow.BagOfWords(jnp.array([[3, 7], [7, 9]], jnp.int32), jnp.ones((2, 2)))

  def loss(params: nnx.State) -> jax.Array:
    logits = nnx.merge(graphdef, params)(batch, rngs=nnx.Rngs(dropout=1))
    return -jax.nn.log_softmax(logits)[:, 0].sum()

  grads = jax.grad(loss)(params)
  touched = np.flatnonzero(np.abs(np.asarray(grads["kernel"][...])).sum(axis=1))
  assert set(touched.tolist()) <= {3, 7, 9}


def test_compare_trains_on_a_users_idx_files(tmp_path: Path) -> None:
  folder = tmp_path / "mnist"
  folder.mkdir()
  _write_idx(folder, gz=True)
  flags = ["--quick", "--problems", "logreg", "--steps", "10", "--seeds", "1"]
  assert cli.main(["compare", *flags, "--data", str(folder), "--out", str(tmp_path / "out")]) == 0
  payload = json.loads((tmp_path / "out" / "results.json").read_text())
  assert payload["differences"]["logreg"][0].startswith(f"data: IDX files in {folder}")
  assert all(r["final_train_loss"] is not None for r in payload["runs"])


def test_imdb_layout_binarizes_ratings_and_keeps_one_vocabulary(tmp_path: Path) -> None:
  for part, ratings in (("train", [1, 2, 8, 9, 10, 3]), ("test", [7, 4])):
    (tmp_path / part).mkdir()
    lines = [f"{r} 0:{r} {r + 2}:1" for r in ratings]
    (tmp_path / part / "labeledBow.feat").write_text("\n".join(lines) + "\n")
  dataset = loaders.load_bag_of_words(tmp_path)
  assert dataset is not None
  assert dataset.y_train.tolist() == [0, 0, 1, 1, 1, 0]  # ratings of 7 and more are positive
  assert dataset.y_test.tolist() == [1, 0]
  assert dataset.input_shape == (13,)  # words 0..12 seen in training
  assert "IMDB bag of words" in dataset.source
