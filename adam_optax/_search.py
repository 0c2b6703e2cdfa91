"""Finding a piece's state wherever a chain or wrapper put it."""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import optax

State = TypeVar("State")


def find_states(opt_state: optax.OptState, kind: type[State]) -> list[tuple[str, State]]:
  """Every ``kind`` state inside ``opt_state``, with its path, in tree order.

  Searches the whole pytree, so states nested by :func:`optax.chain`,
  :func:`optax.inject_hyperparams`, :class:`optax.MultiSteps` or Flax's
  ``nnx.Optimizer`` are found alike.
  """

  def is_kind(node: Any) -> bool:
    return isinstance(node, kind)

  found, _ = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=is_kind)
  return [(jax.tree_util.keystr(path), node) for path, node in found if is_kind(node)]


def find_one(opt_state: optax.OptState, kind: type[State], reader: str, piece: str) -> State:
  """The one ``kind`` state inside ``opt_state``; ``ValueError`` for none or several."""
  found = find_states(opt_state, kind)
  if len(found) != 1:
    where = ", ".join(path or "<root>" for path, _ in found) or "nowhere"
    raise ValueError(
      f"{reader} expected exactly one {kind.__name__} in the optimizer state "
      f"(put {piece} in the chain), but found {len(found)}: {where}."
    )
  return found[0][1]
