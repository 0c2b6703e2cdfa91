"""Reading a step's jaxpr: is it elementwise, and in which stages can it be written?

Used by :mod:`adam_optax._chunked` to prove that running a step chunk by
chunk computes the step, before it does so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jax.extend import core

Tags = frozenset

# Primitives whose output at position i reads their operands at position i only.
# fmt: off
ELEMENTWISE = frozenset({
  "abs", "acos", "acosh", "add", "and", "asin", "asinh", "atan", "atan2", "cbrt", "ceil",
  "clamp", "complex", "conj", "convert_element_type", "copy", "copy_p", "cos", "cosh", "div",
  "eq", "erf", "erf_inv", "erfc", "exp", "exp2", "expm1", "floor", "ge", "gt", "imag",
  "integer_pow", "is_finite", "le", "log", "log1p", "logistic", "lt", "max", "min", "mul", "ne",
  "neg", "nextafter", "not", "or", "pow", "real", "reduce_precision", "rem", "round", "rsqrt",
  "select_n", "sign", "sin", "sinh", "sqrt", "square", "sub", "tan", "tanh", "xor",
  "broadcast_in_dim", "reshape", "squeeze", "expand_dims",
})
# fmt: on
# Primitives that call a sub-jaxpr on their operands.
CALLS = frozenset(
  ["jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "remat", "checkpoint"]
)


def _sub_jaxpr(eqn: core.JaxprEqn) -> core.Jaxpr | None:
  for value in eqn.params.values():
    if isinstance(value, core.ClosedJaxpr):
      return value.jaxpr
    if isinstance(value, core.Jaxpr):
      return value
  return None


def _read(tags: dict[Any, Tags], var: Any) -> Tags:
  return tags.get(var, frozenset()) if isinstance(var, core.Var) else frozenset()


def dependencies(
  jaxpr: core.Jaxpr, inputs: Sequence[Tags], chunks: frozenset, fixed: dict | None = None
) -> list[Tags] | None:
  """The tags of the inputs each output depends on; ``None`` if not elementwise.

  Values with a tag may flow only through :data:`ELEMENTWISE` primitives
  that keep their shape, and every value shaped like a chunk must be made by
  one (no ``iota``, no gather), so that the jaxpr evaluated on a chunk of its
  inputs gives that chunk of its outputs.

  Args:
    jaxpr: the step.
    inputs: the tags of each input (empty for unchunked inputs).
    chunks: the shapes of chunks.
    fixed: top-level variables whose tags are given (values read back).
  """
  fixed = fixed or {}
  tags: dict[Any, Tags] = dict(zip(jaxpr.invars, inputs, strict=True))
  for eqn in jaxpr.eqns:
    ins = [_read(tags, v) for v in eqn.invars]
    if eqn.primitive.name in CALLS and (sub := _sub_jaxpr(eqn)) is not None:
      outs = dependencies(sub, ins, chunks)
      if outs is None:
        return None
    else:
      used = frozenset().union(*ins)
      in_shapes = {tuple(v.aval.shape) for v, t in zip(eqn.invars, ins, strict=True) if t}
      out_shapes = {tuple(v.aval.shape) for v in eqn.outvars}
      if (used or out_shapes & chunks) and eqn.primitive.name not in ELEMENTWISE:
        return None
      if used and (len(in_shapes) != 1 or out_shapes != in_shapes):
        return None
      outs = [used] * len(eqn.outvars)
    tags.update((v, fixed.get(v, t)) for v, t in zip(eqn.outvars, outs, strict=True))
  return [_read(tags, v) for v in jaxpr.outvars]


def stages(
  jaxpr: core.Jaxpr, inputs: Sequence[Tags], chunks: frozenset, writes: dict[int, int]
) -> list[list[int]] | None:
  """Groups the outputs that overwrite an input into stages; ``None`` if impossible.

  An output joins a stage once everything it reads, besides the input it
  overwrites and the inputs nothing overwrites (the grads), is an output of
  an earlier stage, read back from where it was written.

  Args:
    jaxpr: the step.
    inputs: the tags of each input.
    chunks: the shapes of chunks.
    writes: output position -> position of the input it overwrites.
  """
  read_only = frozenset().union(*(t for i, t in enumerate(inputs) if i not in writes.values()))
  result: list[list[int]] = []
  written: dict[Any, Tags] = {}
  while sum(map(len, result)) < len(writes):
    deps = dependencies(jaxpr, inputs, chunks, written)
    if deps is None:
      return None
    allowed = read_only.union(*written.values())
    staged = {o for stage in result for o in stage}
    ready = [o for o, i in writes.items() if o not in staged and deps[o] <= allowed | inputs[i]]
    if not ready:
      return None
    result.append(ready)
    written.update((jaxpr.outvars[o], frozenset([("written", o)])) for o in ready)
  return result


def evaluate(closed: core.ClosedJaxpr, args: Sequence[Any], given: dict) -> list[Any]:
  """Evaluates ``closed`` on ``args``, taking the variables in ``given`` as given."""
  env: dict[Any, Any] = {**dict(zip(closed.jaxpr.constvars, closed.consts, strict=True)), **given}
  env.update(zip(closed.jaxpr.invars, args, strict=True))

  def read(var: Any) -> Any:
    return var.val if isinstance(var, core.Literal) else env[var]

  for eqn in closed.jaxpr.eqns:
    if all(v in given for v in eqn.outvars):
      continue
    outs = eqn.primitive.bind(*map(read, eqn.invars), **eqn.primitive.get_bind_params(eqn.params))
    outs = outs if eqn.primitive.multiple_results else [outs]
    env.update((v, x) for v, x in zip(eqn.outvars, outs, strict=True) if v not in given)
  return [read(v) for v in closed.jaxpr.outvars]
