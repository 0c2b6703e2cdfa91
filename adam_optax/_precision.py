"""The dtype policy of every piece, stated once.

* Storage: a moment is stored in the dtype the user asked for (``mu_dtype``,
  ``nu_dtype``) or else in the params' dtype, as in optax. A second moment of
  complex params is real (it averages ``|g|^2``), so it is stored in the
  params' real dtype.
* Arithmetic: every piece computes in at least float32 (``compute_dtype``), so
  bfloat16/float16 storage loses precision only when a result is stored, and
  ``eps = 1e-8`` never underflows to 0. For float32 and float64 inputs the
  upcast is the identity, which keeps results bit-identical to optax.
* Updates: the param-shaped updates of a leaf take the promotion of the
  gradient's dtype and the stored moments' dtypes (``update_dtypes``), which is
  the dtype optax's arithmetic gives them: float32 params (hence float32
  moments) with bfloat16 gradients give float32 updates, so nothing is rounded
  to bfloat16 before it reaches float32 master weights.
* Low-bit storage: a storage "dtype" may be an :class:`adam_optax.Quantized`
  format; such a moment is stored as a :class:`~adam_optax.quantized.QuantizedArray`,
  decoded to float32 by :func:`upcast` and encoded again by :func:`cast_like`.
"""

from __future__ import annotations

import warnings
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from adam_optax import quantized

#: A moment's storage format, as ``mu_dtype=``/``nu_dtype=`` accept it.
Storage = DTypeLike | quantized.Quantized


def compute_dtype(dtype: DTypeLike) -> np.dtype:
  """The dtype arithmetic is done in: ``dtype`` promoted to at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def upcast(tree: chex.ArrayTree) -> chex.ArrayTree:
  """Casts every leaf to its :func:`compute_dtype` (a no-op for float32); decodes quantized ones."""

  def leaf(x: Any) -> chex.Array:
    x = jnp.asarray(quantized.decode(x))
    return x.astype(compute_dtype(jnp.result_type(x)))

  return jax.tree.map(leaf, tree, is_leaf=quantized.is_quantized)


def stored_leaves(tree: chex.ArrayTree) -> list[chex.Array]:
  """The leaves of a stored moment, decoded, in compute precision, in tree order.

  ``tree`` may be any pytree holding the moment: the params-shaped tree of a
  state, or its form in ``nnx.state`` or a checkpoint (mappings, variables).
  """
  leaves = jax.tree.leaves(tree, is_leaf=quantized.is_quantized)
  return [jnp.asarray(upcast(quantized.unwrapped(leaf))) for leaf in leaves]


def read_back_error(tree: chex.ArrayTree) -> list[float]:
  """Per leaf, the relative error of a moment read back from its storage.

  0 for 32- and 64-bit storage (what is read is what the step used), half an
  ulp of the storage dtype for 16-bit storage and the codebook's bound for a
  quantized leaf (the step used the unrounded value).
  """
  errors = []
  for leaf in jax.tree.leaves(tree, is_leaf=quantized.is_quantized):
    if quantized.is_quantized(leaf):
      errors.append(quantized.relative_error(leaf))
      continue
    dtype = real_dtype(jnp.result_type(leaf))
    errors.append(0.0 if dtype.itemsize >= 4 else float(jnp.finfo(dtype).eps) / 2)
  return errors


def real_dtype(dtype: DTypeLike) -> np.dtype:
  """The real counterpart of a dtype (complex64 -> float32; float -> itself)."""
  return jnp.finfo(dtype).dtype


def zeros(
  params: chex.ArrayTree, dtype: DTypeLike | quantized.Quantized | None, *, real: bool = False
) -> chex.ArrayTree:
  """Storage for a moment: ``dtype`` if given, else the params' (real) dtype.

  A real moment (``real=True``: a second moment, a running maximum) is
  non-negative, so a :class:`~adam_optax.Quantized` format stores it with the
  unsigned, zero-free map.
  """

  def leaf(p: chex.Array) -> chex.Array:
    if isinstance(dtype, quantized.Quantized):
      return quantized.zeros(p, dtype, signed=not real)
    storage = jnp.result_type(p) if dtype is None else jnp.dtype(dtype)
    # zeros_like, not zeros(shape): the moment takes the param's sharding.
    return jnp.zeros_like(p, dtype=real_dtype(storage) if real else storage)

  return jax.tree.map(leaf, params)


def update_dtypes(grads: chex.ArrayTree, mu: chex.ArrayTree, nu: chex.ArrayTree) -> chex.ArrayTree:
  """Per leaf, the dtype of the updates: ``result_type`` of the gradient and both moments."""
  return jax.tree.map(lambda g, m, v: jnp.result_type(g, m.dtype, v.dtype), grads, mu, nu)


def cast_like(tree: chex.ArrayTree, like: chex.ArrayTree) -> chex.ArrayTree:
  """Casts ``tree`` to the dtypes of ``like`` leaf by leaf (back to storage; encodes quantized)."""
  return jax.tree.map(quantized.encode, tree, like)


def warn_if_decay_vanishes(
  name: str, decay: Any, storage: chex.ArrayTree, *, what: str, fix: str
) -> None:
  """Warns when a storage dtype cannot represent one step of an EMA.

  With ``decay`` closer to 1 than half the dtype's machine epsilon,
  ``decay * x`` rounds back to ``x`` (e.g. ``0.999 * v`` in bfloat16), so the
  moving average stops moving once stored. Traced decays and leaves that are
  not floating point are not checked, nor are quantized leaves (their block
  scales follow each block's largest element, which the codes do not).

  Args:
    name: the decay's argument name, e.g. ``"b2"``.
    decay: its value.
    storage: the tree the average is stored in.
    what: the average, for the message, e.g. ``"a moment"``.
    fix: the caller's argument that sets the storage dtype, e.g. ``"nu_dtype"``;
      the message tells to set it to ``jnp.float32``.
  """
  if not isinstance(decay, (int, float)):
    return
  leaves = jax.tree.leaves(storage, is_leaf=quantized.is_quantized)
  dtypes = {jnp.result_type(x) for x in leaves if not quantized.is_quantized(x)}
  inexact = {real_dtype(d) for d in dtypes if jnp.issubdtype(d, jnp.inexact)}
  stuck = sorted(d.name for d in inexact if (1.0 - decay) < float(jnp.finfo(d).eps) / 2)
  if stuck:
    warnings.warn(
      f"{name}={decay} cannot move {what} stored in {', '.join(stuck)}: "
      f"{name} * x rounds back to x, so the moving average stops moving. "
      f"Store it in float32 ({fix}=jnp.float32).",
      UserWarning,
      stacklevel=3,
    )
