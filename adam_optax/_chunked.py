"""One pass over memory for an elementwise update of a few large buffers.

XLA:CPU does not fuse a computation with several outputs, so a jitted Adam
step over one buffer runs as three loops (``m``, ``v``, then ``p``, which
reads ``m`` and ``v`` again): 40 bytes of memory traffic per float32
parameter instead of the 28 that the update needs. Run chunk by chunk inside
a ``fori_loop``, the three loops share each chunk in cache, so main memory
sees each byte once. Per chunk, in stages:

1. the outputs that read no other buffer (``m``, ``v``) are computed and
   written in place;
2. the outputs that read them (``p``) read them back from the written
   buffers, which is what the step computes (the new ``m`` is the stored
   ``m``), and are written in place.

So every buffer is read only by its own in-place update or after it was
written, and XLA needs no full-size copy. This is only correct when the step
is elementwise in the buffers (output position ``i`` depends only on position
``i`` of the inputs and on scalars): :func:`elementwise_loop` proves that, and
the staging, on the step's jaxpr. A reduction (``clip_by_global_norm``,
``apply_if_finite``), control flow, a position-dependent value, or a new ``p``
that reads an old moment other than through the stored new one (moments
stored in a narrower dtype than they are computed in) gives ``None``, and so
do 16-bit buffers (XLA:CPU computes them in float32 and would convert a whole
buffer around each chunk's update): the step then runs whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from adam_optax import _elementwise

Step = Callable[[Any, Any, Any], tuple[Any, Any]]


def _zero_after(values: Any) -> jax.Array:
  """0, computed from ``values`` in a way XLA does not see through.

  A loop whose trip count is this starts after ``values`` are computed, so
  those that read the params (the loss) read them before they are overwritten
  in place instead of from a full-size copy.
  """
  zero = jnp.int32(0)
  for x in jax.tree.leaves(values):
    if jnp.size(x) and jnp.dtype(x.dtype).itemsize in (2, 4):
      width = 8 * jnp.dtype(x.dtype).itemsize
      unsigned = {16: jnp.uint16, 32: jnp.uint32}[width]
      bits = lax.bitcast_convert_type(jnp.ravel(x)[0], unsigned)
      # The top bit of (bits without their top bit): always 0.
      low = bits & unsigned((1 << (width - 1)) - 1)
      zero = zero + lax.shift_right_logical(low, unsigned(width - 1)).astype(jnp.int32)
  return zero


def elementwise_loop(
  step: Step, params: Any, grads: Any, state: Any, chunk_size: int
) -> Step | None:
  """Builds ``step`` as one loop over chunks, or ``None`` where that would not pay or be exact.

  Args:
    step: ``(params, grads, state) -> (params, state)``.
    params: a few 1-D buffers (e.g. :class:`adam_optax.FlatParams`).
    grads: like ``params``.
    state: any optimizer state; its 1-D leaves as long as a params buffer
      are chunked with the params, every other leaf is passed whole.
    chunk_size: elements per chunk of the longest buffer.

  Returns:
    A function equal to ``step`` for arguments of these shapes (it runs the
    same operations on each chunk), or ``None`` when the params are not a few
    long 1-D buffers or the step cannot be run in stages (see the module).
  """
  param_leaves = jax.tree.leaves(params)
  if not 0 < len(param_leaves) <= 16 or any(jnp.ndim(p) != 1 for p in param_leaves):
    return None
  lengths = {jnp.shape(p)[0] for p in param_leaves}
  num_chunks = -(-max(lengths) // max(chunk_size, 1))
  if num_chunks < 2 or jax.tree.structure(grads) != jax.tree.structure(params):
    return None
  # Every buffer in num_chunks chunks; the last one ends at the buffer's end.
  size = {n: -(-n // num_chunks) for n in lengths}
  leaves, treedef = jax.tree.flatten((params, grads, state))
  n_params = len(param_leaves)
  chunked = [jnp.ndim(x) == 1 and jnp.shape(x)[0] in size for x in leaves]
  if any(jnp.dtype(x.dtype).itemsize < 4 for x, c in zip(leaves, chunked, strict=True) if c):
    # XLA:CPU computes 16-bit floats in float32 and converts a whole buffer around
    # each in-place update of a chunk of it: bfloat16 params run whole.
    return None
  # The outputs are laid out like (params, state): the inputs without the grads.
  out_index = [i for i in range(len(leaves)) if not n_params <= i < 2 * n_params]
  writes = {o: i for o, i in enumerate(out_index) if chunked[i]}
  out_structure = jax.tree.structure((params, state))

  def call(args: Sequence[Any]) -> list[Any]:
    return jax.tree.leaves(step(*jax.tree.unflatten(treedef, list(args))))

  probe = [
    jax.ShapeDtypeStruct((size[jnp.shape(x)[0]],), jnp.result_type(x)) if c else x
    for x, c in zip(leaves, chunked, strict=True)
  ]
  try:
    closed, out_shape = jax.make_jaxpr(lambda *xs: call(xs), return_shape=True)(*probe)
  except (TypeError, ValueError):
    return None
  if len(out_shape) != len(out_index) or any(
    (out_shape[o].shape, out_shape[o].dtype) != (probe[i].shape, probe[i].dtype)
    for o, i in writes.items()
  ):
    return None
  tags = [frozenset([i]) if c else frozenset() for i, c in enumerate(chunked)]
  chunks = frozenset((s,) for s in size.values())
  deps = _elementwise.dependencies(closed.jaxpr, tags, chunks)
  stages = _elementwise.stages(closed.jaxpr, tags, chunks, writes)
  if deps is None or stages is None or any(d for o, d in enumerate(deps) if o not in writes):
    return None

  def start(n: int, index: Any) -> Any:
    """Where chunk ``index`` of a buffer of length ``n`` starts (the last one ends at n)."""
    return jnp.minimum(index * size[n], n - size[n])

  def loop(params: Any, grads: Any, state: Any, after: Any = ()) -> tuple[Any, Any]:
    xs = jax.tree.leaves((params, grads, state))

    def body(index: Any, buffers: dict[int, Any], last: bool = False) -> dict[int, Any]:
      def cut(x: Any) -> Any:
        return lax.dynamic_slice_in_dim(x, start(x.shape[0], index), size[x.shape[0]])

      args = [
        cut(buffers.get(i, x)) if c else x for i, (x, c) in enumerate(zip(xs, chunked, strict=True))
      ]
      buffers, read_back = dict(buffers), {}
      for stage in stages:
        out = _elementwise.evaluate(closed, args, read_back)
        for o in stage:
          i = writes[o]
          n = xs[i].shape[0]
          new = out[o]
          if last:  # It may overlap the chunk before: keep what that one wrote.
            fresh = start(n, index) + lax.iota(jnp.int32, size[n]) >= index * size[n]
            new = jnp.where(fresh, new, args[i])
          buffers[i] = lax.dynamic_update_slice_in_dim(buffers[i], new, start(n, index), 0)
          read_back[closed.jaxpr.outvars[o]] = cut(buffers[i])
      return buffers

    buffers = {i: xs[i] for i in writes.values()}
    buffers = lax.fori_loop(0, num_chunks - 1 + _zero_after(after), body, buffers)

    # The last chunk in a loop of its own, whose trip count XLA cannot see: inlined,
    # its update would fuse with the gradient's computation, read the params it
    # overwrites, and need a full-size copy of them.
    def last(j: Any, buffers: dict[int, Any]) -> dict[int, Any]:
      return body(num_chunks - 1 + j, buffers, last=True)

    buffers = lax.fori_loop(0, lax.optimization_barrier(jnp.int32(1)), last, buffers)
    # The outputs that are not chunked (the step count...) do not read the buffers.
    out = call([x[:0] if c else x for x, c in zip(xs, chunked, strict=True)])
    for o, i in writes.items():
      out[o] = buffers[i]
    return jax.tree.unflatten(out_structure, out)

  return loop
