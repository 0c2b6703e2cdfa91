"""Flat buffers: a tree of arrays kept as one 1-D buffer per dtype, the tree a view.

The storage of the fast path (:mod:`adam_optax.flat`): :func:`flatten_params`
copies a tree into a :class:`FlatParams`, whose :meth:`FlatParams.tree` gives
the tree back as static slices of the buffers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
from jax import lax

from adam_optax import _block_layout


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each leaf of a tree lives in the buffers of a :class:`FlatParams`.

  Static (hashable) metadata: two :class:`FlatParams` with equal layouts have
  equal tree structures, so optimizer states built from one fit the other.
  A buffer holds its leaves largest first, ties in tree order
  (:meth:`members`): Adam is elementwise, so the order changes nothing in
  float32, and it makes the leaves that a low-bit format stores alike (those
  under its ``min_size``, those of one size) contiguous, which keeps its step
  a few array operations whatever the tree (:mod:`adam_optax._stored_blocks`).

  Attributes:
    treedef: the structure of the tree.
    buffer_of: for each leaf, the index of its buffer.
    shapes: for each leaf, its shape.
    lengths: the length of each buffer (its leaves' sizes plus any padding).
  """

  treedef: jax.tree_util.PyTreeDef
  buffer_of: tuple[int, ...]
  shapes: tuple[tuple[int, ...], ...]
  lengths: tuple[int, ...]

  def members(self, index: int) -> tuple[int, ...]:
    """The leaves (indices in tree order) of buffer ``index``, in buffer order."""
    leaves = [i for i, b in enumerate(self.buffer_of) if b == index]
    return tuple(sorted(leaves, key=lambda i: -math.prod(self.shapes[i])))

  def flatten(self, tree: chex.ArrayTree) -> FlatParams:
    """Copies ``tree`` (structured and shaped like this layout's) into buffers laid out like it.

    E.g. a tree-mode optimizer state's moments, to continue in flat mode. The
    leaves of one buffer must share a dtype, which becomes the buffer's.

    Raises:
      ValueError: when the structure, a shape or the dtypes of a buffer differ.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if treedef != self.treedef or tuple(jnp.shape(x) for x in leaves) != self.shapes:
      raise ValueError(f"flatten: the tree does not match {self!r}: {treedef}.")
    buffers = []
    for index, length in enumerate(self.lengths):
      parts = [jnp.ravel(leaves[i]) for i in self.members(index)]
      dtypes = {p.dtype for p in parts}
      if len(dtypes) > 1:
        raise ValueError(f"flatten: buffer {index} would mix dtypes {sorted(map(str, dtypes))}.")
      dtype = parts[0].dtype if parts else jnp.float32
      size = sum(p.shape[0] for p in parts)
      buffers.append(jnp.concatenate([*parts, jnp.zeros(length - size, dtype)]))
    return FlatParams(tuple(buffers), self)

  def __repr__(self) -> str:
    shapes = ", ".join(map(str, self.shapes[:3])) + (", ..." if len(self.shapes) > 3 else "")
    return (
      f"Layout({len(self.shapes)} leaves of shapes {shapes} in buffers of lengths "
      f"{self.lengths}, #{hash(self) & 0xFFFFFF:06x})"
    )


def gathered(buffer: chex.Array) -> chex.Array:
  """``buffer`` whole on every device of its mesh when its axes are explicit; else itself."""
  if _block_layout.explicit_spec(buffer) is None:
    return buffer
  mesh = jax.typeof(buffer).sharding.mesh
  return jax.sharding.reshard(
    buffer, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  )


@dataclasses.dataclass(frozen=True)
class FlatParams:
  r"""A pytree of parameters stored as one 1-D buffer per dtype.

  Its leaves are the buffers, so any optax transformation sees one leaf per
  dtype; the :class:`Layout` is static metadata. ``tx.init(flat)`` builds
  moments that are :class:`FlatParams` too (``state[0].mu.tree()`` views
  them as a tree), and optimizer states remain ordinary pytrees (checkpoint
  them as usual).

  Examples:
    >>> import jax.numpy as jnp
    >>> from adam_optax.flat import flatten_params
    >>> flat = flatten_params({"w": jnp.ones((2, 3)), "b": jnp.zeros(3)})
    >>> [b.shape for b in flat.buffers]
    [(9,)]
    >>> flat.tree()["w"].shape
    (2, 3)

  Attributes:
    buffers: one 1-D array per dtype group, in order of first appearance.
    layout: where each leaf lives (static).

  References:
    Kingma & Ba, 2015, Algorithm 1 (the update is elementwise, so one buffer
    holding all parameters gives the same result as the tree).
  """

  buffers: tuple[chex.Array, ...]
  layout: Layout

  def tree(self) -> chex.ArrayTree:
    """The parameters as the original tree: static slices and reshapes of the buffers.

    Inside ``jit`` the slices are views fused into their consumers, and the
    gradient with respect to the buffers of a function of this tree is one
    concatenation per buffer. A buffer split over a mesh of explicit axes
    (:func:`jax.make_mesh`'s default) is first gathered whole, in one
    collective per buffer, as a data-parallel forward pass gathers its
    params: its leaves cross its shards, and JAX refuses to slice a split
    dimension into pieces the devices do not divide. The gradient goes back
    split like the buffer.
    """
    leaves: list[Any] = [None] * len(self.layout.shapes)
    for index, buffer in enumerate(map(gathered, self.buffers)):
      members = self.layout.members(index)
      sizes = [math.prod(self.layout.shapes[i]) for i in members]
      pieces = lax.split(buffer, [*sizes, buffer.shape[0] - sum(sizes)])
      for i, piece in zip(members, pieces, strict=False):
        leaves[i] = piece.reshape(self.layout.shapes[i])
    return jax.tree.unflatten(self.layout.treedef, leaves)


jax.tree_util.register_dataclass(FlatParams, data_fields=["buffers"], meta_fields=["layout"])


def flatten_params(params: chex.ArrayTree, *, multiple_of: int = 1) -> FlatParams:
  """Copies a tree of arrays into one 1-D buffer per dtype.

  Leaves keep their dtype (no promotion, unlike
  :func:`jax.flatten_util.ravel_pytree`): a model with float32 and bfloat16
  leaves gets two buffers. Padding elements are zeros and are not part of
  the tree; they receive zero gradients and stay zero under Adam.

  Examples:
    >>> import jax.numpy as jnp
    >>> from adam_optax.flat import flatten_params
    >>> flat = flatten_params({"a": jnp.ones(3), "b": jnp.ones(2, jnp.bfloat16)})
    >>> [(b.shape, b.dtype.name) for b in flat.buffers]
    [((3,), 'float32'), ((2,), 'bfloat16')]

  Args:
    params: a pytree of arrays (or numbers).
    multiple_of: pad each buffer to a multiple of this many elements, e.g. the
      size of a mesh axis to shard the buffers over.

  Returns:
    The :class:`FlatParams`; ``flatten_params(t).tree()`` equals ``t``.

  Raises:
    TypeError: naming the first leaf that is not an array or a number.
    ValueError: for ``multiple_of < 1``.

  References:
    The flat-parameter mode of docs/benchmarks.md.
  """
  if multiple_of < 1:
    raise ValueError(f"multiple_of={multiple_of!r} is out of range: expected multiple_of >= 1.")
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  leaves = []
  for path, leaf in paths_leaves:
    try:
      leaves.append(jnp.asarray(leaf))
    except TypeError as error:
      raise TypeError(
        f"ao.flatten_params: the leaf at {jax.tree_util.keystr(path) or '<root>'} is a "
        f"{type(leaf).__name__}, not an array or a number."
      ) from error
  dtypes = list(dict.fromkeys(leaf.dtype for leaf in leaves))
  buffer_of = tuple(dtypes.index(leaf.dtype) for leaf in leaves)
  sizes = [
    sum(leaf.size for leaf, b in zip(leaves, buffer_of, strict=True) if b == i)
    for i in range(len(dtypes))
  ]
  lengths = tuple(size + -size % multiple_of for size in sizes)
  layout = Layout(treedef, buffer_of, tuple(leaf.shape for leaf in leaves), lengths)
  return layout.flatten(jax.tree.unflatten(treedef, leaves))
