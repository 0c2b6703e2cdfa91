"""Shared fixtures: the parameter trees the tests run on, float64 mode, and the digits."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adam_optax.experiments import data


def _nested(rng: np.random.Generator) -> chex.ArrayTree:
  """Dict, list and tuple nesting with a scalar leaf."""
  return {
    "scale": jnp.asarray(rng.normal(), jnp.float32),
    "blocks": [
      jnp.asarray(rng.normal(size=(3,)), jnp.float32),
      (
        jnp.asarray(rng.normal(size=(2, 2)), jnp.float32),
        jnp.asarray(rng.normal(size=(1,)), jnp.float32),
      ),
    ],
  }


def _mlp(rng: np.random.Generator) -> chex.ArrayTree:
  """A two-layer perceptron's weights and biases."""
  return {
    "layer": {
      "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
      "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
    },
    "out": {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
  }


def _matrix(rng: np.random.Generator) -> chex.ArrayTree:
  """A bare array is a tree too."""
  return jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)


TREES: dict[str, Callable[[np.random.Generator], chex.ArrayTree]] = {
  "nested": _nested,
  "mlp": _mlp,
  "matrix": _matrix,
}


@pytest.fixture(params=sorted(TREES))
def tree(request: pytest.FixtureRequest) -> chex.ArrayTree:
  """Random float32 params, one test per tree shape in ``TREES``."""
  return TREES[request.param](np.random.default_rng(0))


@pytest.fixture
def rng() -> np.random.Generator:
  """A seeded NumPy generator, fresh for each test."""
  return np.random.default_rng(1234)


@pytest.fixture
def x64() -> Iterator[None]:
  """Runs the test with 64-bit JAX types (float64 params and arithmetic)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="session")
def digits() -> data.Dataset:
  """scikit-learn's bundled digits on the package's fixed split, standardized (no download).

  The same data as ``adam-optax compare`` trains its classifiers on: images
  ``(n, 8, 8, 1)``, 1,437 for training and 360 for testing.
  """
  return data.standardize(data.load_digits())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  """Runs the docs build first: it executes every notebook (about 2 minutes of one core).

  Under ``pytest -n 2`` it then runs beside the rest of the suite instead of starting
  late and finishing alone after everything else.
  """
  items.sort(key=lambda item: item.name != "test_docs_build_without_warnings")
