"""The stored form of a low-bit moment, and reading it back when its metadata is gone.

A :class:`QuantizedArray` is a pytree of its arrays (``codes``, ``scales``,
and a fast-path buffer's ``rest``) with its layout as static metadata.
``nnx.state`` and a checkpoint restored without a target keep the arrays and
lose the metadata: :func:`as_quantized` reads it back from the arrays' shapes
(:mod:`adam_optax.quantized` documents the layout), a fast-path buffer's too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp

from adam_optax import _block_layout, _fields, _stored_blocks
from adam_optax._block_layout import BlockLayout
from adam_optax._stored_blocks import Runs


@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """One stored leaf (or fast-path buffer) in a :class:`Quantized` format; a pytree of arrays.

  ``codes`` and ``scales`` may have leading batch dimensions (a state made by
  ``jax.vmap(tx.init)``); ``logical_shape`` is the shape of one unbatched
  leaf. The module docstring gives the layout of the arrays. A fast-path
  buffer's are tuples, one array per run of its leaves
  (:func:`adam_optax._stored_blocks.encode_buffer`).

  Attributes:
    codes: ``uint8`` codes, ``block`` bytes a row (a tuple for a buffer).
    scales: one per block, bfloat16 (signed) or float32 (unsigned) (a tuple for a buffer).
    rest: a fast-path buffer's elements kept in float32, or ``None``.
    logical_shape: static; the shape of one unbatched leaf.
    bits: static; 8 or 4.
    signed: static; the signed map (a first moment) or the unsigned one.
    layout: static; a leaf's :class:`~adam_optax._block_layout.BlockLayout`.
    runs: static; a fast-path buffer's runs of leaves (then ``layout`` is ``None``).
  """

  codes: chex.Array | tuple[chex.Array, ...]
  scales: chex.Array | tuple[chex.Array, ...]
  rest: chex.Array | None
  logical_shape: tuple[int, ...]
  bits: int
  signed: bool
  layout: BlockLayout | None = None
  runs: Runs | None = None

  @property
  def shape(self) -> tuple[int, ...]:
    """The shape :func:`decode` returns: batch dimensions, then the leaf's."""
    if self.layout is None:  # a buffer's runs: (*batch, count, rows, block) each
      return tuple(self.codes[0].shape[:-3]) + self.logical_shape
    unbatched = len(self.layout.codes_shape)
    return tuple(self.codes.shape[: self.codes.ndim - unbatched]) + self.logical_shape

  @property
  def dtype(self) -> jnp.dtype:
    """The dtype :func:`decode` returns."""
    return jnp.dtype(jnp.float32)

  @property
  def nbytes(self) -> int:
    """The bytes stored: codes, scales and any float32 rest."""
    return sum(int(x.nbytes) for x in jax.tree.leaves((self.codes, self.scales, self.rest)))


def _has_rest(runs: Runs | None) -> bool:
  """Whether a stored moment has a float32 ``rest``: a buffer with a run kept in float32."""
  return runs is not None and any(run.layout is None for run in runs)


_NAMES = ("codes", "scales", "rest")
_KEYS = tuple(map(jax.tree_util.GetAttrKey, _NAMES))


def _flatten(x: QuantizedArray) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
  # Which children there are follows from the static fields alone, so that a
  # tree whose leaves were replaced (orbax puts None in them) has the same node.
  children = (x.codes, x.scales, x.rest) if _has_rest(x.runs) else (x.codes, x.scales)
  return children, (x.logical_shape, x.bits, x.signed, x.layout, x.runs)


def _flatten_with_keys(x: QuantizedArray) -> tuple[list[tuple[Any, Any]], tuple[Any, ...]]:
  children, aux = _flatten(x)
  return list(zip(_KEYS, children, strict=False)), aux


def _unflatten(aux: tuple[Any, ...], children: Any) -> QuantizedArray:
  # jit flattens every stored moment it is passed and unflattens every one it
  # returns, on each dispatched step, on the host. Skipping the frozen dataclass's
  # __init__ (a checked setattr per field), with the plain flatten below, takes
  # that from 2.9-3.8 to 1.1-1.5 us per stored moment (docs/low_memory_states.md).
  x = object.__new__(QuantizedArray)
  fields = x.__dict__
  fields["codes"], fields["scales"] = children[0], children[1]
  fields["rest"] = children[2] if len(children) == 3 else None
  fields["logical_shape"], fields["bits"], fields["signed"], fields["layout"], fields["runs"] = aux
  return x


# The plain flatten is what jit's dispatch calls; the keyed one names checkpoint paths.
jax.tree_util.register_pytree_with_keys(QuantizedArray, _flatten_with_keys, _unflatten, _flatten)


def is_quantized(x: Any) -> bool:
  """Whether ``x`` is a :class:`QuantizedArray` (usable as ``is_leaf=``)."""
  return isinstance(x, QuantizedArray)


def _array(node: Any) -> Any:
  """The one array inside ``node`` (an array, or a variable wrapping one)."""
  leaves = jax.tree.leaves(node)
  return leaves[0] if len(leaves) == 1 else None


def _arrays(node: Any) -> Any:
  """A child of a stored moment's mapping: its array, or a buffer's tuple of them, or ``None``.

  A fast-path buffer's codes and scales are sequences, one array per run (a
  list in a checkpoint restored without a target).
  """
  named = _fields.children(node)
  if named and all(str(key).isdigit() for key in named):
    parts = tuple(_array(named[key]) for key in sorted(named, key=int))
    return None if any(part is None for part in parts) else parts
  return _array(node)


def _dtypes(arrays: Any) -> set[Any]:
  return {jnp.result_type(x) for x in (arrays if isinstance(arrays, tuple) else (arrays,))}


def _stored_arrays(node: Any) -> dict[str, Any] | None:
  """The arrays of a stored moment that lost its metadata (a mapping), or ``None``."""
  named = _fields.children(node)
  if named is None or set(named) not in ({"codes", "scales"}, {"codes", "scales", "rest"}):
    return None
  arrays = {name: _arrays(child) for name, child in named.items()}
  codes, scales = arrays["codes"], arrays["scales"]
  if codes is None or scales is None or isinstance(codes, tuple) != isinstance(scales, tuple):
    return None
  if _dtypes(codes) != {jnp.dtype(jnp.uint8)}:
    return None
  if _dtypes(scales) not in ({jnp.dtype(jnp.bfloat16)}, {jnp.dtype(jnp.float32)}):
    return None
  if "rest" in arrays:  # a fast-path buffer's float32 elements
    rest = arrays["rest"]
    if not isinstance(codes, tuple) or rest is None or _dtypes(rest) != {jnp.dtype(jnp.float32)}:
      return None
  return arrays


def is_stored(x: Any) -> bool:
  """Whether ``x`` is a stored low-bit moment: a :class:`QuantizedArray` or its mapping form.

  The mapping form is what ``nnx.state`` and a checkpoint restored without a
  target make of a :class:`QuantizedArray`: a node whose children are named
  ``codes`` (``uint8``) and ``scales`` (its arrays possibly in variables; a
  fast-path buffer's are sequences, and it may have a float32 ``rest``).
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
    leading dimensions taken as the leaf's; a fast-path buffer as it was
    stored (its runs read by :func:`adam_optax._stored_blocks.read_runs`).

  Raises:
    ValueError: for arrays that are not a stored moment.
  """
  if is_quantized(stored):
    return unwrapped(stored)
  arrays = _stored_arrays(stored)
  if arrays is None:
    raise ValueError(f"{type(stored).__name__} is not a low-bit moment stored by ao.Quantized.")
  codes, scales, rest = arrays["codes"], arrays["scales"], arrays.get("rest")
  signed = bool(_dtypes(scales) == {jnp.dtype(jnp.bfloat16)})
  if isinstance(codes, tuple):
    runs = _stored_blocks.read_runs(
      tuple(map(jnp.shape, codes)),
      tuple(map(jnp.shape, scales)),
      None if rest is None else jnp.shape(rest),
    )
    length = sum(run.count * run.size for run in runs)
    bits = next(run.layout.bits for run in runs if run.layout is not None)
    return QuantizedArray(codes, scales, rest, (length,), bits, signed, runs=runs)
  layout = _block_layout.read(jnp.shape(codes), jnp.shape(scales))
  return QuantizedArray(
    codes, scales, None, (*layout.lead, layout.size), layout.bits, signed, layout=layout
  )


def unwrapped(stored: QuantizedArray) -> QuantizedArray:
  """``stored`` with its arrays taken out of containers (``nnx.state`` wraps them in variables)."""

  def plain(arrays: Any) -> Any:
    if isinstance(arrays, tuple):
      return tuple(jnp.asarray(_array(x)) for x in arrays)
    return None if arrays is None else jnp.asarray(_array(arrays))

  return dataclasses.replace(
    stored, codes=plain(stored.codes), scales=plain(stored.scales), rest=plain(stored.rest)
  )
