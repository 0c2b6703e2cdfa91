"""Checkpoints of params and optimizer state that restore anywhere, exactly, or not at all.

orbax-checkpoint writes and reads the arrays. What this module adds:

* **A check before anything is read.** Every leaf of the checkpoint (its
  path, shape and dtype) is matched with the target the caller restores into,
  and the first difference is named. orbax alone would cast a ``bfloat16``
  moment into a ``float32`` target without a word, and reports a missing
  optimizer piece as a list length.
* **Any topology.** Every leaf is read straight into the target's sharding;
  one the target does not place (a ``jax.ShapeDtypeStruct`` from
  :func:`jax.eval_shape`) goes to the current default device, or replicated
  over the current mesh under :func:`jax.set_mesh`, as a new array would.
  orbax alone falls back to the devices the checkpoint was written from.
* **Any storage format, optax's layout or ours.** The checkpoint is read in
  the format it was saved in (a quantized moment's codes and scales say their
  layout by their shapes), then converted in memory by
  :func:`adam_optax.convert_state`'s own plan, so restoring into another
  format equals converting in memory, bit for bit.

The restored tree takes the target's pytree types (``MomentsState``,
``optax.EmptyState``, ...), storage formats and shardings, so it goes straight
back into ``tx.update``. Needs the ``orbax-checkpoint`` package.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from adam_optax import conversion, quantized


def _stored_leaves(tree: Any) -> list[tuple[str, Any]]:
  """The tree's leaves, quantized moments whole, with their paths as orbax names them."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=quantized.is_quantized)
  return [(".".join(conversion.key_name(k) for k in path), leaf) for path, leaf in flat]


def _static_fields(stored: quantized.QuantizedArray) -> dict[str, Any]:
  """A quantized moment's fields other than its arrays (its shape, bits, layout, ...)."""
  arrays = {path[0].name for path, _ in jax.tree_util.tree_flatten_with_path(stored)[0]}
  return {
    field.name: getattr(stored, field.name)
    for field in dataclasses.fields(stored)
    if field.name not in arrays
  }


def save_checkpoint(directory: str | os.PathLike[str], tree: chex.ArrayTree) -> None:
  """Writes a tree of arrays, e.g. ``{"params": ..., "opt_state": ...}``, to a new directory.

  Blocks until the checkpoint is complete on disk. Leaves keep their dtypes
  (``bfloat16`` moments stay ``bfloat16``); empty states such as
  ``optax.EmptyState()`` hold no arrays and cost nothing. Quantized moments
  are saved as their codes and scales.

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


def _default_sharding() -> jax.sharding.Sharding:
  """Where a new array goes: the default device, or replicated over :func:`jax.set_mesh`'s mesh."""
  return jnp.zeros(()).sharding


def _placed(leaf: Any, default: jax.sharding.Sharding) -> Any:
  """A target's leaf as an abstract array with a concrete sharding (a Python scalar as it is)."""
  struct = ocp.utils.to_shape_dtype_struct(leaf)
  if not isinstance(struct, jax.ShapeDtypeStruct):
    return struct
  return _on(struct, conversion.placement(struct) or default)


def _on(struct: jax.ShapeDtypeStruct, sharding: jax.sharding.Sharding) -> jax.ShapeDtypeStruct:
  """``struct`` with ``sharding`` (``ShapeDtypeStruct.update`` is newer than jax 0.5.3)."""
  return jax.ShapeDtypeStruct(struct.shape, struct.dtype, sharding=sharding)


def _abstract(node: Any) -> Any:
  """An array's metadata as an abstract array, a list of them (a buffer's runs) as a tuple."""
  if isinstance(node, list):
    parts = tuple(map(_abstract, node))
    return parts if parts and all(isinstance(x, jax.ShapeDtypeStruct) for x in parts) else None
  return jax.ShapeDtypeStruct(node.shape, node.dtype) if hasattr(node, "dtype") else None


def _as_saved(node: Any, path: str, wanted: dict[str, Any]) -> Any:
  """The checkpoint's metadata tree as abstract arrays, quantized moments as such.

  A quantized moment (its codes and scales) takes the static fields of the
  target's leaf at the same path if its arrays are that leaf's, and is then
  copied as it is; otherwise its layout is read from its arrays' shapes.
  """
  if isinstance(node, dict):
    arrays = {k: _abstract(v) for k, v in node.items()}
    if all(v is not None for v in arrays.values()) and quantized.is_stored(arrays):
      target = wanted.get(path)
      if quantized.is_quantized(target):
        rebuilt = quantized.QuantizedArray(**arrays, **_static_fields(target))
        if conversion.same_format(rebuilt, target):
          return rebuilt
      return quantized.as_quantized(arrays)
    return {k: _as_saved(v, f"{path}.{k}" if path else k, wanted) for k, v in node.items()}
  if isinstance(node, list):
    return [_as_saved(v, f"{path}.{i}" if path else str(i), wanted) for i, v in enumerate(node)]
  if node is None:
    return None
  return jax.ShapeDtypeStruct(node.shape, node.dtype)


def _read_as(plan: conversion.Plan, saved: Any, target: Any, default: Any) -> Any:
  """What orbax reads: each saved leaf placed where its rule needs it.

  A leaf copied as it is goes straight to its target's sharding; one to be
  converted (its shape changes) is read whole onto the devices of its target.
  """
  leaves, treedef = jax.tree.flatten(saved, is_leaf=quantized.is_quantized)
  targets = jax.tree.leaves(target, is_leaf=quantized.is_quantized)
  uses: dict[int, tuple[str, Any]] = {}
  for rule, wanted in zip(plan.rules, targets, strict=True):
    if rule.source is not None:
      uses.setdefault(rule.source, (rule.kind, wanted))

  def read(index: int, leaf: Any) -> Any:
    if index not in uses:  # dropped; orbax reads every leaf of the tree it is given
      return jax.tree.map(lambda s: _on(s, default), leaf)
    kind, wanted = uses[index]
    if kind == "copy":
      return jax.tree.map(lambda s, w: _on(s, conversion.placement(w) or default), leaf, wanted)
    sharding = conversion.placement(jax.tree.leaves(wanted)[0]) or default
    if isinstance(sharding, jax.sharding.NamedSharding):
      sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    elif len(sharding.device_set) > 1:
      sharding = default
    return jax.tree.map(lambda s: _on(s, sharding), leaf)

  return treedef.unflatten([read(i, leaf) for i, leaf in enumerate(leaves)])


def _reading(path: pathlib.Path, read: Callable[[], Any]) -> Any:
  """``read()``; a checkpoint that cannot be read (a damaged file) raises one clear line."""
  try:
    return read()
  except Exception as error:  # orbax and TensorStore raise many kinds
    message = str(error)
    # TensorStore names the array it failed on as the path of its kvstore.
    array = re.search(r"'path': '([^'/]+)/'", message)
    where = f" the array {array.group(1)}" if array else ""
    first = f"{type(error).__name__}: {message.splitlines()[0][:200] if message else ''}"
    raise ValueError(
      f"The checkpoint at {path} could not be read (a truncated or damaged file?):{where} "
      f"{first}; nothing was restored."
    ) from None


def restore_checkpoint(
  directory: str | os.PathLike[str], target: chex.ArrayTree, *, lossy: bool = False
) -> chex.ArrayTree:
  """Reads a checkpoint into the structure, storage formats and shardings of ``target``.

  Only a complete checkpoint is read: orbax writes into a temporary
  directory and renames it to ``directory`` once every process has written
  its part, so a save interrupted by a crash is never taken for one.

  The checkpoint is matched with ``target`` as :func:`adam_optax.convert_state`
  matches two states, before anything is read: the optimizers' moments by
  field name (so ``optax.adam``'s checkpoint restores into ``ao.adam``'s
  state, and back), every other leaf by path, with the same shape and
  dtype. A moment stored in another format (float32, bfloat16, 8-bit or
  4-bit codes) is read as it was saved and converted into the target's,
  exactly as :func:`~adam_optax.convert_state` converts it in memory (into
  narrower storage only with ``lossy=True``). What does not fit raises,
  naming the first mismatching path (in orbax's dotted form,
  ``opt_state.0.mu.w``, which is also the name of its files on disk).

  The ``target`` is not modified: its leaves lend their shape, dtype and
  sharding, and the result is a new tree of the target's pytree types.
  Leaves may be ``jax.ShapeDtypeStruct`` (as from :func:`jax.eval_shape`),
  in any topology: a leaf with a sharding is read into it (a sharding over an
  abstract mesh into the current mesh, or :func:`jax.make_mesh`'s over all
  devices); a leaf without one lands on the current default device, or
  replicated over the mesh of :func:`jax.set_mesh`, wherever the checkpoint
  was written from.

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
    target: a tree like the one saved (arrays or ``jax.ShapeDtypeStruct``),
      possibly of another storage format, or optax's layout for ours.
    lossy: allow a restore that loses data, as :func:`~adam_optax.convert_state`
      says: moments rounded into narrower storage than saved (a float32
      checkpoint into 8-bit moments), saved state the target has no place
      for dropped (an AMSGrad checkpoint restored into Adam drops
      ``nu_max``); otherwise that is an error naming the first such leaf.

  Returns:
    The restored tree: the structure, formats and shardings of ``target``
    with the values of the checkpoint, bit for bit where the formats agree.

  Raises:
    ValueError: if ``directory`` is not a complete checkpoint (it does not
      exist, or it is what a save that never finished left behind) or cannot
      be read (a truncated file); naming the first path whose presence,
      shape or dtype differs, or what restoring would drop.

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
  default = _default_sharding()
  target = jax.tree.map(lambda leaf: _placed(leaf, default), target)
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = _reading(path, lambda: checkpointer.metadata(path))
    saved = _as_saved(metadata.item_metadata.tree, "", dict(_stored_leaves(target)))
    try:
      plan = conversion.plan(saved, target, lossy=lossy, source="checkpoint")
    except ValueError as error:
      raise ValueError(
        f"The checkpoint at {path} does not fit the target; nothing was restored: {error}."
      ) from None
    read = _reading(
      path, lambda: checkpointer.restore(path, _read_as(plan, saved, target, default))
    )
  return conversion.apply(plan, read, target)
