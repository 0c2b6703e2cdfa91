"""The stored form of a low-bit moment, and reading it back when its metadata is gone.

A :class:`QuantizedArray` is a pytree of its arrays (``codes``, ``scales``,
and a fast-path buffer's ``rest``) with its layout as static metadata.
``nnx.state`` and a checkpoint restored without a target keep the arrays and
lose the metadata: :func:`as_quantized` reads it back from the arrays' shapes
(:mod:`adam_optax.quantized` documents the layout).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp

from adam_optax import _block_layout, _fields
from adam_optax._block_layout import BlockLayout
from adam_optax._stored_blocks import Runs


@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """One stored leaf (or fast-path buffer) in a :class:`Quantized` format; a pytree of arrays.

  ``codes`` and ``scales`` may have leading batch dimensions (a state made by
  ``jax.vmap(tx.init)``); ``logical_shape`` is the shape of one unbatched
  leaf. The module docstring gives the layout of the arrays.

  Attributes:
    codes: ``uint8`` codes, ``block`` bytes a row.
    scales: one per block, bfloat16 (signed) or float32 (unsigned).
    rest: a fast-path buffer's elements kept in float32, or ``None``.
    logical_shape: static; the shape of one unbatched leaf.
    bits: static; 8 or 4.
    signed: static; the signed map (a first moment) or the unsigned one.
    layout: static; a leaf's :class:`~adam_optax._block_layout.BlockLayout`.
    runs: static; a fast-path buffer's runs of leaves (then ``layout`` is ``None``).
  """

  codes: chex.Array
  scales: chex.Array
  rest: chex.Array | None
  logical_shape: tuple[int, ...]
  bits: int
  signed: bool
  layout: BlockLayout | None = None
  runs: Runs | None = None

  @property
  def shape(self) -> tuple[int, ...]:
    """The shape :func:`decode` returns: batch dimensions, then the leaf's."""
    unbatched = 1 if self.layout is None else len(self.layout.codes_shape)
    return tuple(self.codes.shape[: self.codes.ndim - unbatched]) + self.logical_shape

  @property
  def dtype(self) -> jnp.dtype:
    """The dtype :func:`decode` returns."""
    return jnp.dtype(jnp.float32)

  @property
  def nbytes(self) -> int:
    """The bytes stored: codes, scales and any float32 rest."""
    return sum(int(x.nbytes) for x in (self.codes, self.scales, self.rest) if x is not None)


def _flatten(x: QuantizedArray) -> tuple[list[tuple[Any, Any]], tuple[Any, ...]]:
  names = ("codes", "scales") + (("rest",) if x.rest is not None else ())
  children = [(jax.tree_util.GetAttrKey(name), getattr(x, name)) for name in names]
  return children, (x.logical_shape, x.bits, x.signed, x.layout, x.runs, x.rest is not None)


def _unflatten(aux: tuple[Any, ...], children: Any) -> QuantizedArray:
  logical_shape, bits, signed, layout, runs, has_rest = aux
  codes, scales, *rest = children
  rest = rest[0] if has_rest else None
  return QuantizedArray(codes, scales, rest, logical_shape, bits, signed, layout, runs)


jax.tree_util.register_pytree_with_keys(QuantizedArray, _flatten, _unflatten)


def is_quantized(x: Any) -> bool:
  """Whether ``x`` is a :class:`QuantizedArray` (usable as ``is_leaf=``)."""
  return isinstance(x, QuantizedArray)


def _array(node: Any) -> Any:
  """The one array inside ``node`` (an array, or a variable wrapping one)."""
  leaves = jax.tree.leaves(node)
  return leaves[0] if len(leaves) == 1 else None


def _stored_arrays(node: Any) -> dict[str, Any] | None:
  """The arrays of a stored moment that lost its metadata (a mapping), or ``None``."""
  named = _fields.children(node)
  if named is None or set(named) not in ({"codes", "scales"}, {"codes", "scales", "rest"}):
    return None
  arrays = {name: _array(child) for name, child in named.items()}
  codes, scales = arrays["codes"], arrays["scales"]
  if codes is None or scales is None or jnp.result_type(codes) != jnp.uint8:
    return None
  if jnp.result_type(scales) not in (jnp.bfloat16, jnp.float32):
    return None
  return arrays


def is_stored(x: Any) -> bool:
  """Whether ``x`` is a stored low-bit moment: a :class:`QuantizedArray` or its mapping form.

  The mapping form is what ``nnx.state`` and a checkpoint restored without a
  target make of a :class:`QuantizedArray`: a node whose children are named
  ``codes`` (``uint8``) and ``scales`` (its arrays possibly in variables).
  Usable as ``is_leaf=``.
  """
  return is_quantized(x) or _stored_arrays(x) is not None


def as_quantized(stored: Any) -> QuantizedArray:
  """The :class:`QuantizedArray` of a stored moment, its layout read from its arrays' shapes.

  Args:
    stored: a :class:`QuantizedArray`, or its mapping form (see :func:`is_stored`).

  Returns:
    ``stored`` with plain arrays; for a mapping, a leaf of shape
    ``(*lead, rows * per_row * block)`` or ``(n,)`` (module docstring), any
    leading dimensions taken as the leaf's.

  Raises:
    ValueError: for a fast-path buffer's mapping (where its leaves lie is not
      in the arrays), or arrays that are not a stored moment.
  """
  if is_quantized(stored):
    return unwrapped(stored)
  arrays = _stored_arrays(stored)
  if arrays is None:
    raise ValueError(f"{type(stored).__name__} is not a low-bit moment stored by ao.Quantized.")
  codes, scales = arrays["codes"], arrays["scales"]
  if "rest" in arrays or jnp.ndim(codes) < 2:
    raise ValueError(
      "a low-bit moment of a fast-path buffer (ao.FlatParams) lost its static metadata "
      "(nnx.state, or a checkpoint restored without a target): where each leaf lies in "
      "the buffer is not in its arrays. Restore it into a target, e.g. "
      "adam_optax.checkpoint.restore_checkpoint(path, target)."
    )
  layout = _block_layout.read(jnp.shape(codes), jnp.shape(scales))
  return QuantizedArray(
    codes,
    scales,
    None,
    (*layout.lead, layout.size),
    layout.bits,
    bool(jnp.result_type(scales) == jnp.bfloat16),
    layout=layout,
  )


def unwrapped(stored: QuantizedArray) -> QuantizedArray:
  """``stored`` with its arrays taken out of containers (``nnx.state`` wraps them in variables)."""
  return dataclasses.replace(
    stored,
    codes=jnp.asarray(_array(stored.codes)),
    scales=jnp.asarray(_array(stored.scales)),
    rest=None if stored.rest is None else jnp.asarray(_array(stored.rest)),
  )
