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
  The low-bit moment of a param in a Flax NNX variable is kept outside the
  variable (:func:`zeros`), so that ``nnx.Optimizer``, which writes every new
  state back through ``nnx.state``, updates its arrays in place and the state
  keeps its tree structure from the first step (the step compiles once). A
  piece that owns a stored moment takes it through :func:`adopt` first, so
  that one in another form (outside its variable; or a ``{"codes",
  "scales"}`` mapping, its static metadata lost in a checkpoint restored
  without a target) steps exactly as the original, and is handed back in the
  form it came in.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from adam_optax import _block_layout, _fields, quantized
from adam_optax._codes import Rounding
from adam_optax._flat_buffers import FlatParams

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


def _stored(leaf: Any) -> Any:
  """A leaf of a moment: a low-bit one (in any form) as a QuantizedArray, others as they are."""
  return quantized.as_quantized(leaf) if quantized.is_stored(leaf) else leaf


def stored_leaves(tree: chex.ArrayTree) -> list[chex.Array]:
  """The leaves of a stored moment, decoded, in compute precision, in tree order.

  ``tree`` may be any pytree holding the moment: the params-shaped tree of a
  state, or its form in ``nnx.state`` or a checkpoint (mappings, variables;
  a low-bit leaf's layout is read from its arrays' shapes).
  """
  leaves = jax.tree.leaves(tree, is_leaf=quantized.is_stored)
  return [jnp.asarray(upcast(_stored(leaf))) for leaf in leaves]


def read_back_rounding(tree: chex.ArrayTree) -> list[Rounding]:
  """Per leaf, how far a moment read back from its storage lies from what the step used.

  :math:`(0, 0)` for 32- and 64-bit storage (what is read is what the step used); for 16-bit
  storage, rounding to nearest of a normal number, at most :math:`u/(1 + u)` either way
  with :math:`u` half the dtype's machine epsilon (:math:`2^{-8}` in bfloat16,
  :math:`2^{-11}` in float16; a subnormal errs absolutely, by half its spacing); for a
  quantized leaf its codebook's :func:`~adam_optax.quantized.rounding`. The step used the
  unrounded value.
  """
  roundings = []
  for leaf in jax.tree.leaves(tree, is_leaf=quantized.is_stored):
    if quantized.is_stored(leaf):
      roundings.append(quantized.rounding(quantized.as_quantized(leaf)))
      continue
    dtype = real_dtype(jnp.result_type(leaf))
    half_ulp = 0.0 if dtype.itemsize >= 4 else float(jnp.finfo(dtype).eps) / 2
    roundings.append(Rounding(half_ulp / (1 + half_ulp), half_ulp / (1 + half_ulp)))
  return roundings


def real_dtype(dtype: DTypeLike) -> np.dtype:
  """The real counterpart of a dtype (complex64 -> float32; float -> itself)."""
  return jnp.finfo(dtype).dtype


def _is_variable(x: Any) -> bool:
  """Whether ``x`` is a Flax NNX variable (a box around one array), without importing Flax."""
  nnx = sys.modules.get("flax.nnx")
  return nnx is not None and isinstance(x, nnx.Variable)


def zeros(
  params: chex.ArrayTree, dtype: DTypeLike | quantized.Quantized | None, *, real: bool = False
) -> chex.ArrayTree:
  """Storage for a moment: ``dtype`` if given, else the params' (real) dtype.

  A real moment (``real=True``: a second moment, a running maximum) is
  non-negative, so a :class:`~adam_optax.Quantized` format stores it with the
  unsigned, zero-free map; a fast-path :class:`~adam_optax.flat.FlatParams`
  has each of its buffers stored leaf by leaf, as the tree would be.

  A moment is boxed as its param is (a param in an ``nnx.Param`` has its
  moment in an ``nnx.Param``), except a low-bit one: a
  :class:`~adam_optax.quantized.QuantizedArray` sits where the param's
  variable does, its arrays unboxed. ``nnx.Optimizer`` boxes every array of
  the state in a variable and writes each step's new state back through
  ``nnx.state``, which would turn a QuantizedArray *inside* a variable into a
  mapping of its arrays: another tree, and a second compilation of the step.
  Outside, its arrays are the variables, updated in place.
  """

  def leaf(p: chex.Array) -> chex.Array:
    if isinstance(dtype, quantized.Quantized):
      return quantized.zeros(p, dtype, signed=not real)
    storage = jnp.result_type(p) if dtype is None else jnp.dtype(dtype)
    # zeros_like, not zeros(shape): the moment takes the param's sharding.
    return _block_layout.zeros_like(p, real_dtype(storage) if real else storage)

  def node(p: Any) -> Any:
    if _is_variable(p) and isinstance(dtype, quantized.Quantized):
      stored = leaf(jax.tree.leaves(p)[0])
      return stored if quantized.is_quantized(stored) else jax.tree.map(leaf, p)
    if not (isinstance(p, FlatParams) and isinstance(dtype, quantized.Quantized)):
      return jax.tree.map(leaf, p)
    layout = p.layout
    buffers = tuple(
      quantized.zeros(
        buffer,
        dtype,
        signed=not real,
        segments=tuple(math.prod(layout.shapes[i]) for i in layout.members(index)),
      )
      for index, buffer in enumerate(p.buffers)
    )
    return FlatParams(buffers, layout)

  return jax.tree.map(node, params, is_leaf=lambda x: isinstance(x, FlatParams) or _is_variable(x))


def adopt(
  stored: chex.ArrayTree, like: chex.ArrayTree, storage: Storage | None, *, real: bool = False
) -> tuple[chex.ArrayTree, Callable[[chex.ArrayTree], chex.ArrayTree]]:
  """A stored moment in the gradients' tree, low-bit leaves as QuantizedArrays; and the way back.

  A state may hold a low-bit moment in another form than the gradients'
  tree of QuantizedArrays: outside the variable its param is in (:func:`zeros`
  puts it there when ``tx.init`` is given ``nnx.Param`` variables, as in a
  plain optax loop over ``nnx.state(model, nnx.Param)``), or as a mapping of
  its arrays (a checkpoint restored without a target, an ``nnx.state`` of
  the optimizer). The piece that owns the moment knows its format
  (``storage``) and the params' shapes (``like``: the gradients), so the
  metadata is rebuilt exactly as ``init`` made it, at trace time. The
  function returned puts a new moment back in the form the state held it
  in, so that the state keeps its tree structure from step to step (as
  ``jit`` caches, ``optax.apply_if_finite`` and ``optax.MultiSteps`` need).

  Args:
    stored: the moment as the state holds it.
    like: a tree shaped like the params (the gradients).
    storage: the moment's storage format.
    real: a non-negative moment (unsigned map).

  Returns:
    ``(moment, back)``: ``stored`` in ``like``'s tree with QuantizedArrays,
    and ``back(new)``. Where ``stored`` does not fit ``like``, it is returned
    unchanged (the gradient check then names the mismatch).

  Raises:
    ValueError: when a mapping's arrays do not have the shapes ``storage``
      gives that leaf, naming the leaf's path.
  """
  unchanged = (stored, lambda new: new)
  if not isinstance(storage, quantized.Quantized):
    return unchanged
  if jax.tree.structure(stored, is_leaf=quantized.is_stored) == jax.tree.structure(like) and all(
    quantized.is_quantized(x) or not quantized.is_stored(x)
    for x in jax.tree.leaves(stored, is_leaf=quantized.is_stored)
  ):
    return unchanged  # as a plain optax loop holds it
  skeleton = jax.eval_shape(lambda tree: zeros(tree, storage, real=real), like)

  try:  # does ``stored`` have the params' structure, low-bit leaves in any form?
    jax.tree.map(lambda *_: None, skeleton, stored, is_leaf=quantized.is_quantized)
  except (TypeError, ValueError):
    return unchanged

  def rebuild(path: Any, skeleton_leaf: Any, leaf: Any) -> Any:
    if not quantized.is_quantized(skeleton_leaf) or quantized.is_quantized(leaf):
      return leaf
    named = _fields.children(leaf) or {}
    arrays = {name: jnp.asarray(jax.tree.leaves(child)[0]) for name, child in named.items()}
    got = {name: jnp.shape(x) for name, x in arrays.items()}
    want = {name: jnp.shape(x) for name, x in _fields.children(skeleton_leaf).items()}
    if got != want:
      raise ValueError(
        f"the stored moment at {jax.tree_util.keystr(path)} has arrays of shapes {got}, "
        f"where {storage!r} stores that leaf as {want}."
      )
    return dataclasses.replace(skeleton_leaf, **arrays)

  adopted = jax.tree_util.tree_map_with_path(
    rebuild, skeleton, stored, is_leaf=quantized.is_quantized
  )
  # One stored leaf per gradient leaf, whatever boxes either is in.
  moment = jax.tree.unflatten(
    jax.tree.structure(like), jax.tree.leaves(adopted, is_leaf=quantized.is_quantized)
  )
  forms, treedef = jax.tree.flatten(stored, is_leaf=quantized.is_stored)

  def back(new: chex.ArrayTree) -> chex.ArrayTree:
    def form(old: Any, new_leaf: Any) -> Any:
      if not quantized.is_stored(old) or quantized.is_quantized(old):
        return new_leaf
      children = jax.tree_util.tree_structure(old, is_leaf=lambda c: c is not old)
      return jax.tree_util.tree_unflatten(
        children, [getattr(new_leaf, name) for name in _fields.children(old)]
      )

    new_leaves = jax.tree.leaves(new, is_leaf=quantized.is_quantized)
    return treedef.unflatten([form(*pair) for pair in zip(forms, new_leaves, strict=True)])

  return moment, back


def warn_if_resharded(params: chex.ArrayTree, stored: chex.ArrayTree) -> None:
  """Warns, once per leaf, when a low-bit moment cannot keep its param's sharding.

  Its blocks would cross the param's shards, so every step gathers the
  leaf's trailing dimensions (or a whole fast-path buffer) and each device
  holds and updates all of that moment: correct, but not what ZeRO-1 or
  tensor parallelism is for.
  """

  def check(path: Any, param: Any, leaf: Any) -> None:
    if not quantized.is_quantized(leaf):
      return
    spec = _block_layout.resharded_spec(param, leaf.layout, len(leaf.logical_shape))
    if spec is None:
      return
    where = f"the param at {jax.tree_util.keystr(path) or '<root>'}"
    if leaf.layout is None:
      fix = "keep fast-path buffers replicated, or store these moments in float32."
    else:
      row = leaf.layout.per_row * leaf.layout.block
      fix = (
        "shard the leaf over its leading dimensions, or its first trailing one with "
        f"shards of a multiple of {row} elements (or pick a block_size that divides "
        "them), or store these moments in float32."
      )
    warnings.warn(
      f"ao.Quantized: {where} is sharded as PartitionSpec{spec}, but the blocks of its "
      "low-bit moments would cross its shards, so every step gathers them and each "
      f"device holds the whole moment. To keep the sharding, {fix}",
      UserWarning,
      # One place for every moment of the leaf (mu, nu, nu_max): Python's default
      # filter shows the warning once.
      stacklevel=2,
    )

  leaves = jax.tree.leaves(stored, is_leaf=quantized.is_quantized)
  for (path, param), leaf in zip(jax.tree_util.tree_leaves_with_path(params), leaves, strict=True):
    check(path, param, leaf)


def update_dtypes(grads: chex.ArrayTree, mu: chex.ArrayTree, nu: chex.ArrayTree) -> chex.ArrayTree:
  """Per leaf, the dtype of the updates: ``result_type`` of the gradient and both moments."""
  return jax.tree.map(lambda g, m, v: jnp.result_type(g, m.dtype, v.dtype), grads, mu, nu)


def cast_like(
  tree: chex.ArrayTree, like: chex.ArrayTree, *copies: chex.ArrayTree
) -> chex.ArrayTree:
  """Casts ``tree`` to the dtypes of ``like`` leaf by leaf (back to storage; encodes quantized).

  ``copies``, trees like ``tree``: what :func:`copies_apart` made, handed on to
  :func:`adam_optax.quantized.encode` (``scale_from``, ``codes_from``).
  """
  return jax.tree.map(quantized.encode, tree, like, *copies)


def copies_apart(
  compute: Callable[..., Any], inputs: tuple[Any, ...], stored: chex.ArrayTree
) -> tuple[Any, ...]:
  r"""``compute(*inputs)`` made again for low-bit storage: (for the scales, for 4-bit codes).

  A low-bit step cannot code a block before it has the block's scale, so a GPU
  reads the step's inputs in two passes. XLA:GPU does not find them by itself: it
  puts the parameter update inside the reduction that takes the scales, which runs
  at a fifth of the bandwidth. A copy of the new values computed from ``inputs``
  behind ``jax.lax.optimization_barrier`` can neither be merged with the first
  (CSE) nor fused with what the first feeds, so the scales taken from it
  (:func:`adam_optax.quantized.encode`'s ``scale_from``) make a first pass of
  their own. 4-bit codes are half as many bytes a row as the parameters, which
  XLA does not write in the parameters' loop: from the same values it writes the
  moment out in float32 and packs it in a third pass, so their codes come from a
  third copy, behind a second barrier (``codes_from``): a pass of their own that
  reads the inputs. On CUDA and ROCm only; elsewhere the barriers are the
  identity and the copies the same computation, merged by XLA: the same program,
  the same bits.

  Args:
    compute: makes the new values from ``inputs``.
    inputs: what they are made from (the gradient and the stored state).
    stored: the stored state the values go back to.

  Returns:
    The copies made, each ``compute``'s result: ``(scale_from, codes_from)``,
    ``(scale_from,)`` when nothing in ``stored`` is at 4 bits, ``()`` when
    nothing is quantized.

  References:
    docs/low_memory_states.md, "Where the GPU's time goes".
  """
  leaves = jax.tree.leaves(stored, is_leaf=quantized.is_quantized)
  formats = [x for x in leaves if quantized.is_quantized(x)]
  if not formats:
    return ()
  barrier = jax.lax.optimization_barrier

  def apart(tree: Any) -> Any:
    return jax.lax.platform_dependent(tree, cuda=barrier, rocm=barrier, default=lambda x: x)

  inputs = apart(inputs)
  scale_from = compute(*inputs)
  if all(x.bits != 4 for x in formats):
    return (scale_from,)
  return scale_from, compute(*apart(inputs))


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
