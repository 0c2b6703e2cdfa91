"""Checkpoints of params and optimizer state that restore exactly or not at all.

orbax-checkpoint writes and reads the arrays. What this module adds is the
check that orbax leaves out: before anything is read, every leaf of the
checkpoint (its path, shape and dtype) is compared with the target the caller
restores into, and the first difference is named. orbax alone would cast a
``bfloat16`` moment into a ``float32`` target without a word, and reports a
missing optimizer piece as a list length. The restored tree takes the target's
pytree types (``MomentsState``, ``optax.EmptyState``, ...), dtypes and
shardings, so it goes straight back into ``tx.update``.

Needs the ``orbax-checkpoint`` package.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp

_Leaves = dict[str, tuple[tuple[int, ...], np.dtype]]


def _key_name(key: Any) -> str:
  """One path entry as orbax names it on disk (``mu``, ``0``, ``w``)."""
  for attribute in ("name", "key", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
  """An array's (or array metadata's) shape and dtype; a Python scalar's as orbax stores it."""
  if hasattr(leaf, "dtype"):
    return tuple(leaf.shape), np.dtype(leaf.dtype)
  return (), np.result_type(leaf)


def _leaves(tree: Any) -> _Leaves:
  """Maps each leaf's dotted path (``opt_state.0.mu.w``) to its shape and dtype."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {".".join(_key_name(k) for k in path): _shape_dtype(leaf) for path, leaf in flat}


def _describe(shape: tuple[int, ...], dtype: np.dtype) -> str:
  return f"{dtype.name}{list(shape)}"


def _first_mismatch(saved: _Leaves, wanted: _Leaves) -> str | None:
  """The first difference between two leaf maps, in the target's order."""
  for path, (shape, dtype) in wanted.items():
    if path not in saved:
      return (
        f"the target has a leaf at {path} ({_describe(shape, dtype)}) that the checkpoint lacks"
      )
    if saved[path] != (shape, dtype):
      return (
        f"the leaf at {path} is {_describe(*saved[path])} in the checkpoint "
        f"but {_describe(shape, dtype)} in the target"
      )
  for path, (shape, dtype) in saved.items():
    if path not in wanted:
      return (
        f"the checkpoint has a leaf at {path} ({_describe(shape, dtype)}) that the target lacks"
      )
  return None


def save_checkpoint(directory: str | os.PathLike[str], tree: chex.ArrayTree) -> None:
  """Writes a tree of arrays, e.g. ``{"params": ..., "opt_state": ...}``, to a new directory.

  Blocks until the checkpoint is complete on disk. Leaves keep their dtypes
  (``bfloat16`` moments stay ``bfloat16``); empty states such as
  ``optax.EmptyState()`` hold no arrays and cost nothing.

  Examples:
    >>> import tempfile, jax.numpy as jnp, adam_optax as ao
    >>> from adam_optax.checkpoint import save_checkpoint, restore_checkpoint
    >>> params = {"w": jnp.ones(3)}
    >>> tx = ao.adam(1e-3)
    >>> path = tempfile.mkdtemp() + "/step_0"
    >>> save_checkpoint(path, {"params": params, "opt_state": tx.init(params)})
    >>> target = {"params": params, "opt_state": tx.init(params)}
    >>> restored = restore_checkpoint(path, target)
    >>> type(restored["opt_state"][0]).__name__
    'MomentsState'

  Args:
    directory: where to write; it must not exist yet.
    tree: a pytree whose leaves are arrays.

  Raises:
    ValueError: if ``directory`` already exists (nothing is overwritten).

  References:
    orbax-checkpoint, ``StandardCheckpointer``
    (https://orbax.readthedocs.io/en/latest/guides/checkpoint/checkpointing_pytrees.html).
  """
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(pathlib.Path(directory).resolve(), tree)


def restore_checkpoint(directory: str | os.PathLike[str], target: chex.ArrayTree) -> chex.ArrayTree:
  """Reads a checkpoint into the structure of ``target``, after checking that they match.

  Only a complete checkpoint is read: orbax writes into a temporary
  directory and renames it to ``directory`` once every process has written
  its part, so a save interrupted by a crash is never taken for one. Every
  leaf of the checkpoint must appear in ``target`` at the same path with
  the same shape and dtype, and vice versa; otherwise nothing is read and the
  error names the first mismatching path (in orbax's dotted form,
  ``opt_state.0.mu.w``, which is also the name of its files on disk). The
  ``target`` is not modified: its leaves only lend their shape, dtype and
  sharding (``jax.ShapeDtypeStruct`` leaves, as from :func:`jax.eval_shape`,
  work as well) and the result is a new tree of the target's pytree types.

  Examples:
    >>> import tempfile, jax.numpy as jnp, adam_optax as ao
    >>> from adam_optax.checkpoint import save_checkpoint, restore_checkpoint
    >>> params = {"w": jnp.ones(3)}
    >>> path = tempfile.mkdtemp() + "/adam"
    >>> save_checkpoint(path, ao.adam(1e-3).init(params))
    >>> restore_checkpoint(path, ao.amsgrad(1e-3).init(params))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...: the target has a leaf at 2.nu_max.w (float32[3]) that the checkpoint lacks.

  Args:
    directory: a directory written by :func:`save_checkpoint` (or by
      ``orbax.checkpoint.StandardCheckpointer``).
    target: a tree like the one saved: arrays or ``jax.ShapeDtypeStruct``.

  Returns:
    The restored tree: the structure, dtypes and shardings of ``target`` with
    the values of the checkpoint, bit for bit.

  Raises:
    ValueError: if ``directory`` is not a complete checkpoint (it does not
      exist, or it is what a save that never finished left behind); or naming
      the first path whose presence, shape or dtype differs.

  References:
    orbax-checkpoint, ``StandardCheckpointer``
    (https://orbax.readthedocs.io/en/latest/guides/checkpoint/checkpointing_pytrees.html).
  """
  path = pathlib.Path(directory).resolve()
  # A save that did not finish (a process killed, say) leaves only orbax's
  # temporary directory, which is never renamed to ``path``.
  if not ocp.utils.is_checkpoint_finalized(path):
    raise ValueError(
      f"{path} is not a complete checkpoint (missing, or a save that never finished); "
      "nothing was restored."
    )
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.metadata(path).item_metadata.tree
    mismatch = _first_mismatch(_leaves(saved), _leaves(abstract))
    if mismatch is not None:
      raise ValueError(
        f"The checkpoint at {path} does not fit the target (another optimizer "
        f"or model?); nothing was restored: {mismatch}."
      )
    return checkpointer.restore(path, abstract)
