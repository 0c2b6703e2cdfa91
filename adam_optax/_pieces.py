"""The type checks that keep the pieces of the chain in order."""

from __future__ import annotations

from typing import Any

from adam_optax.moments import Moments


def require_moments(piece: str, updates: Any) -> Moments:
  """Returns ``updates`` if it is :class:`Moments`, else raises ``TypeError``."""
  if not isinstance(updates, Moments):
    raise TypeError(
      f"{piece} expected the ao.Moments emitted by ao.scale_by_moments, but got "
      f"{type(updates).__name__} (param-shaped updates?): put "
      f"ao.scale_by_moments() before {piece} in the chain."
    )
  return updates


def require_param_shaped(piece: str, updates: Any) -> Any:
  """Returns ``updates`` unless it is :class:`Moments`, which raises ``TypeError``."""
  if isinstance(updates, Moments):
    raise TypeError(
      f"{piece} expected param-shaped updates, but got ao.Moments: put "
      f"ao.normalize() between ao.scale_by_moments() and {piece}."
    )
  return updates
