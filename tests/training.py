"""Helpers shared by the tests that train and compare whole states."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax


def train(tx: optax.GradientTransformation, params: Any, state: Any, grads: Any) -> Any:
  """``(params, state)`` after ``tx`` steps over ``grads`` (leading axis), one jitted scan."""

  def step(carry: Any, g: Any) -> tuple[Any, None]:
    p, s = carry
    updates, s = tx.update(g, s, p)
    return (optax.apply_updates(p, updates), s), None

  return jax.jit(lambda p, s, gs: jax.lax.scan(step, (p, s), gs)[0])(params, state, grads)


def assert_trees_equal(actual: Any, expected: Any) -> None:
  """Same pytree types and structure; every leaf bit-identical with the same dtype."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    assert a.dtype == e.dtype
    np.testing.assert_array_equal(a, e)
