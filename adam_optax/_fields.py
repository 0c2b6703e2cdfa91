"""Finding a piece's state by its field names, wherever a chain or wrapper put it.

The readers (:func:`ao.diagnostics <adam_optax.diagnostics>`,
:func:`ao.averaged_params <adam_optax.averaged_params>`) look for states the
way :func:`optax.tree_utils.tree_get` does, by name, not by class: a state is
any node whose children carry the state's field names. So they work on the
NamedTuples of :func:`optax.chain`, :func:`optax.inject_hyperparams`,
:class:`optax.MultiSteps` and :func:`optax.multi_transform`, and equally on
``nnx.state(optimizer)`` or a checkpoint restored without a target, where the
NamedTuples have become mappings and the arrays may be wrapped in variables.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

Children = dict[Any, Any]
Path = tuple[Any, ...]


def _name(key: Any) -> Any:
  """The plain name of one level of a key path (an attribute, dict key or index)."""
  for attribute in ("name", "key", "idx"):
    if hasattr(key, attribute):
      return getattr(key, attribute)
  return key


def children(node: Any) -> Children | None:
  """The named children of a pytree node, or ``None`` for a leaf."""
  found, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda c: c is not node)
  if jax.tree_util.treedef_is_leaf(treedef):
    return None
  return {_name(path[0]): child for path, child in found}


def nodes(tree: Any, path: Path = ()) -> Iterator[tuple[Path, Children]]:
  """Every inner node of ``tree``, depth first, as ``(path, children)``; a path is its names."""
  named = children(tree)
  if named is None:
    return
  yield path, named
  for key, child in named.items():
    yield from nodes(child, (*path, key))


def path_name(path: Path) -> str:
  """A path as text, its names joined by ``/`` (empty for the root)."""
  return "/".join(map(str, path))


def has_fields(named: Children | None, fields: tuple[str, ...]) -> bool:
  """Whether a node's children carry all of ``fields``."""
  return named is not None and all(field in named for field in fields)


def find(tree: Any, fields: tuple[str, ...]) -> list[tuple[str, Children]]:
  """Every node of ``tree`` whose children carry ``fields``, with its path as text."""
  return [(path_name(path), named) for path, named in nodes(tree) if has_fields(named, fields)]


def sibling(parent: Children, fields: tuple[str, ...]) -> Children | None:
  """The first child of ``parent`` whose children carry ``fields``, if any."""
  for child in parent.values():
    named = children(child)
    if has_fields(named, fields):
      return named
  return None


def scalar(node: Any) -> jax.Array:
  """The one array inside ``node`` (an array, or a variable wrapping one), as a JAX array.

  A NumPy scalar from a restored checkpoint becomes a JAX array, so that the
  reader's arithmetic is JAX's (NumPy would promote float32 to float64).
  """
  (leaf,) = jax.tree.leaves(node)
  return jnp.asarray(leaf)
