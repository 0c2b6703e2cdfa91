"""Hyper-parameter and gradient-tree checks, in one place.

Concrete Python numbers are checked once, when a transformation is built.
Arrays and tracers (what :func:`optax.inject_hyperparams` passes) go through
unchecked: their values are not known to Python, and checking them on device
would cost every step.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from adam_optax.quantized import Quantized, is_quantized


def _is_concrete(value: Any) -> bool:
  return isinstance(value, numbers.Real)


def check_decay(name: str, value: Any) -> None:
  """Checks ``0 <= value < 1`` for a decay rate such as ``b1`` or ``b2``."""
  if _is_concrete(value) and not 0.0 <= value < 1.0:
    raise ValueError(f"{name}={value!r} is out of range: expected 0 <= {name} < 1.")


def check_non_negative(name: str, value: Any) -> None:
  """Checks ``value >= 0`` for an epsilon such as ``eps`` or ``eps_root``."""
  if _is_concrete(value) and not value >= 0.0:
    raise ValueError(f"{name}={value!r} is out of range: expected {name} >= 0.")


def check_finite(name: str, value: Any) -> None:
  """Checks that a number (a learning rate, a weight decay) is finite.

  Schedules (callables), arrays and tracers are accepted as they are.
  """
  if _is_concrete(value) and not math.isfinite(value):
    raise ValueError(f"{name}={value!r} is out of range: expected a finite number.")


def check_inexact_dtype(name: str, dtype: DTypeLike | None) -> None:
  """Checks that a storage dtype, when given, is floating or complex."""
  if dtype is None:
    return
  try:
    inexact = jnp.issubdtype(jnp.dtype(dtype), jnp.inexact)
  except TypeError as error:
    raise ValueError(
      f"{name}={dtype!r} is not a dtype: expected a floating or complex dtype such as jnp.float32."
    ) from error
  if not inexact:
    raise ValueError(
      f"{name}={jnp.dtype(dtype).name} is out of range: expected "
      "a floating or complex dtype such as jnp.float32."
    )


def check_storage(name: str, storage: DTypeLike | Quantized | None) -> None:
  """Checks a moment's storage format: ``None``, a floating or complex dtype, or a ``Quantized``."""
  if not isinstance(storage, Quantized):
    check_inexact_dtype(name, storage)


def check_params(piece: str, params: Any) -> None:
  """Checks at ``init`` that every param is floating or complex (naming the first that is not).

  Adam's moments of an integer leaf have no meaning (its gradient is ``float0``),
  so integer leaves are refused rather than given integer moments: leave them
  out with :func:`optax.masked`, :func:`optax.partition` or, in Flax NNX,
  ``nnx.Optimizer(..., wrt=nnx.Param)``.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      raise TypeError(
        f"{piece}: the param at {_path_str(path)} has dtype {jnp.result_type(leaf).name}; "
        "Adam's moments need floating or complex params. Leave integer leaves out of "
        "the optimizer (optax.masked, optax.partition, or nnx.Optimizer(..., wrt=nnx.Param))."
      )


def _path_str(path: tuple[Any, ...]) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def _children(node: Any) -> tuple[list[tuple[Any, Any]], Any]:
  """The keyed children of the root of a tree, and the root's one-level treedef."""
  return jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda child: child is not node)


def _first_mismatch(got: Any, want: Any, path: tuple[Any, ...] = ()) -> str | None:
  """Describes the first node (depth first) where two trees differ, or ``None``.

  Compares one level at a time, so that containers of another type (a tuple
  for a list) are found as well as extra or missing entries.
  """
  got_children, got_def = _children(got)
  want_children, want_def = _children(want)
  if got_def == want_def:
    if jax.tree_util.treedef_is_leaf(got_def):
      return None
    for (key, g), (_, w) in zip(got_children, want_children, strict=True):
      found = _first_mismatch(g, w, path + key)
      if found is not None:
        return found
    return None
  got_keys = [key for key, _ in got_children]
  want_keys = [key for key, _ in want_children]
  if type(got) is type(want) and got_keys != want_keys:
    for key in got_keys:
      if key not in want_keys:
        return f"the gradients have an entry at {_path_str(path + key)} that the state lacks"
    for key in want_keys:
      if key not in got_keys:
        return f"the gradients lack the entry at {_path_str(path + key)}"
  return (
    f"at {_path_str(path)} the gradients have a node of type {type(got).__name__} "
    f"({got_def}) where the state has one of type {type(want).__name__} ({want_def})"
  )


def check_gradients(piece: str, updates: Any, reference: Any) -> None:
  """Checks that gradients match the state's tree, shapes and kind of dtype.

  All checks are on static structure and shapes, so they run once at trace
  time and cost nothing per step.

  Args:
    piece: the name of the transformation, for the error message.
    updates: the gradients handed to ``update``.
    reference: a state tree laid out like the params (e.g. ``state.mu``).

  Raises:
    ValueError: naming the first path where structure or shape differ.
    TypeError: naming the first path whose gradient is not floating/complex.
  """
  got, got_def = jax.tree_util.tree_flatten_with_path(updates)
  want, want_def = jax.tree_util.tree_flatten_with_path(reference, is_leaf=is_quantized)
  if got_def != want_def:
    mismatch = _first_mismatch(updates, reference) or f"{got_def} != {want_def}"
    raise ValueError(
      f"{piece}: the gradient tree does not match the optimizer state (built from "
      f"the params given to init): {mismatch}."
    )
  for (path, g), (_, w) in zip(got, want, strict=True):
    want_shape = w.shape if is_quantized(w) else jnp.shape(w)
    if jnp.shape(g) != want_shape:
      raise ValueError(
        f"{piece}: the gradient at {_path_str(path)} has shape {jnp.shape(g)} "
        f"but the optimizer state expects {want_shape}."
      )
    if not jnp.issubdtype(jnp.result_type(g), jnp.inexact):
      raise TypeError(
        f"{piece}: the gradient at {_path_str(path)} has dtype "
        f"{jnp.result_type(g).name}; gradients must be floating or complex."
      )
