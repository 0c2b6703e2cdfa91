r"""Converting an optimizer state into another's layout and storage: formats, optax, topologies.

Every Adam-family state holds, per optimizer, the step count and the moments:
``count``, ``mu``, ``nu`` and AMSGrad's ``nu_max``. What differs between two
states of "the same" optimizer is where those sit (``ao.adam`` has four chain
links where ``optax.adam`` has two; AMSGrad's maximum is a piece of its own
here and a field of the moments state in optax), how they are stored (float32,
bfloat16, :class:`~adam_optax.Quantized` codes) and on which devices.
:func:`convert_state` finds the moments by field name, as
:func:`optax.tree_utils.tree_get` does, and stores them as the target stores
them; :func:`adam_optax.checkpoint.restore_checkpoint` reads a checkpoint in
its own saved format and runs the same :class:`Plan`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from adam_optax import _fields, quantized
from adam_optax.lr import ScaleByLrState
from adam_optax.normalize import NormalizeState

Path = tuple[str, ...]
# A leaf's place in a state: its owner (a field of an optimizer's moments, a
# piece of the optimizer's chain, or outside every optimizer) and its path
# inside that owner. Leaves of two states with the same place correspond.
Place = tuple[tuple[Any, ...], Path]

_MOMENTS = ("count", "mu", "nu")
_STORED = ("mu", "nu", "nu_max")  # param-shaped, in a storage format: converted
# The diagnostics records of normalize and scale_by_lr (diagnostics=True): each
# step writes them anew, so a state may lose them or start them at zero.
_RECORDS = (NormalizeState._fields, ScaleByLrState._fields)


def _derived(owner: tuple[Any, ...], rest: Path) -> str | None:
  """How a leaf of a chain's piece is remade when the other state lacks it, if it can be.

  ``"count"``: a step count (a schedule's, ``optax.scale_by_learning_rate``'s,
  also inside ``scale_by_lr``'s record), which is the moments' ``count``;
  ``"zeros"``: a diagnostics record; ``None``: state that only the state holds.
  """
  if owner[0] != "piece":
    return None
  if "count" in rest:
    return "count"
  fields = set(owner[2])
  if any(record[0] in fields and fields <= set(record) for record in _RECORDS):
    return "zeros"
  return None


@dataclasses.dataclass(frozen=True)
class Rule:
  """How one leaf of the target is made.

  Attributes:
    kind: ``"copy"`` (the state's leaf as it is), ``"convert"`` (decoded and
      encoded in the target's storage format), ``"cast"`` (an integer count
      in the target's dtype) or ``"zeros"`` (a derived piece the state lacks).
    source: the index of the state's leaf it is made from (flattened with
      :func:`adam_optax.quantized.is_quantized` as ``is_leaf``), if any.
  """

  kind: str
  source: int | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
  """One :class:`Rule` per leaf of the target, checked before anything is read or computed."""

  rules: tuple[Rule, ...]


@dataclasses.dataclass(frozen=True)
class _Optimizer:
  """Where one optimizer's moments sit in a state."""

  moments: Path  # the node with count, mu and nu
  nu_max: Path | None  # a RunningMaxState beside it (ao.amsgrad), if any
  chain: Path | None  # the chain both sit in, if they sit in one
  pieces: dict[str, tuple[Path, int]]  # chain key -> (field names, occurrence)


def key_name(key: Any) -> str:
  """One entry of a key path as a string: ``mu``, ``0``, ``w`` (as orbax names it on disk)."""
  return str(_fields._name(key))


def _nodes(tree: Any, path: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
  """Every inner node of ``tree`` above the stored leaves, as ``(path, named children)``."""
  named = _fields.children(tree)
  if named is None or quantized.is_quantized(tree):
    return
  named = {str(key): child for key, child in named.items()}
  yield path, named
  for key, child in named.items():
    yield from _nodes(child, (*path, key))


def _optimizers(tree: Any) -> list[_Optimizer]:
  """The optimizers of a state, depth first: a node with count, mu and nu, and its chain."""
  named_at = dict(_nodes(tree))
  found: list[_Optimizer] = []
  for path, named in named_at.items():
    if not _fields.has_fields(named, _MOMENTS) or any(
      path[: len(o.moments)] == o.moments for o in found
    ):
      continue
    chain = named_at.get(path[:-1]) if path else None
    if chain is None or not all(key.isdigit() for key in chain):  # a chain is a tuple
      found.append(_Optimizer(path, None, None, {}))
      continue
    nu_max, pieces, seen = None, {}, {}
    for key in chain:
      if key == path[-1]:
        continue
      fields = tuple(sorted(named_at.get((*path[:-1], key), {})))
      if fields == ("nu_max",) and nu_max is None and "nu_max" not in named:
        nu_max = (*path[:-1], key, "nu_max")
        continue
      pieces[key] = (fields, seen.get(fields, 0))
      seen[fields] = seen.get(fields, 0) + 1
    found.append(_Optimizer(path, nu_max, path[:-1], pieces))
  return found


def _place(path: Path, optimizers: list[_Optimizer]) -> Place:
  """Where the leaf at ``path`` sits: which optimizer's which field or piece, and the rest."""
  for index, o in enumerate(optimizers):
    if path[: len(o.moments)] == o.moments:
      return ("field", index, path[len(o.moments)]), path[len(o.moments) + 1 :]
    if o.nu_max is not None and path[: len(o.nu_max)] == o.nu_max:
      return ("field", index, "nu_max"), path[len(o.nu_max) :]
    if o.chain is not None and path[: len(o.chain)] == o.chain:
      return ("piece", index, *o.pieces[path[len(o.chain)]]), path[len(o.chain) + 1 :]
  return ("outside",), path


@dataclasses.dataclass(frozen=True)
class _Layout:
  """A state's stored leaves with their paths and places."""

  paths: list[Path]
  leaves: list[Any]
  places: list[Place]
  optimizers: int

  @classmethod
  def of(cls, tree: Any) -> _Layout:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=quantized.is_quantized)
    paths = [tuple(key_name(key) for key in path) for path, _ in flat]
    found = _optimizers(tree)
    places = [_place(path, found) for path in paths]
    return cls(paths, [leaf for _, leaf in flat], places, len(found))


def dotted(path: Path) -> str:
  """A path as orbax names it on disk: ``opt_state.0.mu.w``."""
  return ".".join(path) or "<root>"


def shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
  """An array's (or abstract array's) shape and dtype; a Python scalar's as NumPy types it."""
  if hasattr(leaf, "dtype"):
    return tuple(leaf.shape), np.dtype(leaf.dtype)
  return (), np.result_type(leaf)


def describe(leaf: Any) -> str:
  """``float32[3, 4]``, or ``Quantized(8)[3, 4]`` for a quantized moment."""
  shape, dtype = shape_dtype(leaf)
  name = f"Quantized({leaf.bits})" if quantized.is_quantized(leaf) else dtype.name
  return f"{name}{list(shape)}"


def same_format(a: Any, b: Any) -> bool:
  """Whether two stored leaves have one format: the same arrays, the same static fields."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(
    shape_dtype(x) == shape_dtype(y)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def _same_values(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
  """Whether shape ``a`` is ``b``, or ``b`` with trailing dimensions flattened into one.

  A quantized moment read from its arrays alone (a mapping of codes and
  scales, in a checkpoint) has the shape of its leaf with the trailing
  dimensions that its rows span flattened.
  """
  lead = len(a) - 1
  return a == b or (0 <= lead < len(b) and a[:lead] == b[:lead] and a[lead] == math.prod(b[lead:]))


def _convertible(a: Any, b: Any) -> bool:
  """Whether moment ``a`` can be stored as ``b``: the same values, both real or both complex."""
  (shape_a, dtype_a), (shape_b, dtype_b) = shape_dtype(a), shape_dtype(b)
  complex_a, complex_b = (jnp.issubdtype(d, jnp.complexfloating) for d in (dtype_a, dtype_b))
  inexact = all(jnp.issubdtype(d, jnp.inexact) for d in (dtype_a, dtype_b))
  same = shape_a == shape_b or (quantized.is_quantized(a) and _same_values(shape_a, shape_b))
  return same and complex_a == complex_b and inexact


def decoded_dtype(leaf: Any) -> np.dtype:
  """The dtype a stored leaf is read back in: float32 for a quantized moment, else its own."""
  return np.dtype(jnp.float32) if quantized.is_quantized(leaf) else shape_dtype(leaf)[1]


def rounding(stored: Any, target: Any) -> str | None:
  """How much storing moment ``stored`` as ``target`` rounds each value; ``None`` if exactly.

  Exact when the target's dtype holds every value of the stored leaf decoded,
  i.e. the decoded dtype promotes to it (bfloat16 or codes to float32); a
  quantized target holds exactly only its own format (a copy). Otherwise the
  relative bound, for values inside the target's range: ``quantized.relative_error``
  of a quantized target, half an ulp of a dtype (``2^-8`` for bfloat16).
  """
  if same_format(stored, target):
    return None
  if quantized.is_quantized(target):
    return f"{quantized.relative_error(target):.3g} of it (quantized.relative_error, in range)"
  dtype = shape_dtype(target)[1]
  if jnp.promote_types(decoded_dtype(stored), dtype) == dtype:
    return None
  return f"2^-{jnp.finfo(dtype).nmant + 1} of it (half an ulp of {dtype.name}, in range)"


def plan(state: Any, like: Any, *, lossy: bool = False, source: str = "state") -> Plan:
  """Matches the leaves of ``like`` with those of ``state``; raises naming the first misfit.

  Args:
    state: the state to convert (arrays or ``jax.ShapeDtypeStruct``).
    like: the target's layout (arrays or ``jax.ShapeDtypeStruct``).
    lossy: allow a conversion that loses data: moments rounded into narrower
      storage, state that the target has no place for dropped.
    source: what ``state`` is called in messages ("state", "checkpoint").

  Returns:
    The :class:`Plan` of :func:`apply`.

  Raises:
    ValueError: a one-line clause naming the first path that does not fit,
      or, without ``lossy``, the first one whose data would be lost.
  """
  have, want = _Layout.of(state), _Layout.of(like)
  index = {place: i for i, place in enumerate(have.places)}
  rules = []
  for path, leaf, place in zip(want.paths, want.leaves, want.places, strict=True):
    (owner, _), i = place, index.get(place)
    if i is None:
      rules.append(_fill(place, have, f"at {dotted(path)} ({describe(leaf)})", source))
    elif same_format(have.leaves[i], leaf):
      rules.append(Rule("copy", i))
    elif owner[0] == "field" and owner[2] in _STORED and _convertible(have.leaves[i], leaf):
      bound = rounding(have.leaves[i], leaf)
      if bound is not None and not lossy:
        raise ValueError(
          f"converting would round the leaf at {dotted(path)} from {describe(have.leaves[i])} "
          f"into {describe(leaf)}, each value by up to {bound} (pass lossy=True to convert it)"
        )
      rules.append(Rule("convert", i))
    elif owner[0] == "field" and owner[2] == "count" and shape_dtype(leaf)[0] == ():
      rules.append(Rule("cast", i))
    else:
      raise ValueError(
        f"the leaf at {dotted(path)} is {describe(have.leaves[i])} in the {source} "
        f"but {describe(leaf)} in the target"
      )
  used = {rule.source for rule in rules}
  owners = {owner for owner, _ in want.places}
  for i, (path, (owner, rest)) in enumerate(zip(have.paths, have.places, strict=True)):
    if i in used or _derived(owner, rest) is not None:
      continue
    # A field or piece the target lacks altogether is dropped; a leaf missing
    # from one the target has (or outside the optimizers) is another model.
    if owner[0] == "outside" or owner in owners or owner[1] >= want.optimizers:
      raise ValueError(
        f"the {source} has a leaf at {dotted(path)} ({describe(have.leaves[i])}) "
        "that the target lacks"
      )
    if not lossy:
      what = dotted(path[: len(path) - len(rest)])
      raise ValueError(
        f"converting would drop {what}, which the target has no place for "
        "(pass lossy=True to drop it)"
      )
  return Plan(tuple(rules))


def _fill(place: Place, have: _Layout, where: str, source: str) -> Rule:
  """The rule for a target leaf the state lacks: a derived one, or an error."""
  owner, rest = place
  derived = _derived(owner, rest)
  if derived == "zeros":
    return Rule("zeros")
  if derived == "count":
    count = ("field", owner[1], "count")
    for i, (have_owner, _) in enumerate(have.places):
      if have_owner == count:
        return Rule("cast", i)
  raise ValueError(f"the target has a leaf {where} that the {source} lacks")


def placement(leaf: Any) -> jax.sharding.Sharding | None:
  """Where a leaf of a target lives: its sharding, on a concrete mesh; ``None`` if it has none.

  A sharding over an abstract mesh (what :func:`jax.eval_shape` gives on a
  mesh of explicit axes) is made concrete with the current mesh
  (:func:`jax.set_mesh`) or else :func:`jax.make_mesh` over all devices.
  """
  if isinstance(leaf, jax.core.Tracer):
    return None
  sharding = getattr(leaf, "sharding", None)
  if not isinstance(sharding, jax.sharding.Sharding):
    return None
  mesh = getattr(sharding, "mesh", None)
  if not isinstance(mesh, jax.sharding.AbstractMesh):
    return sharding
  current = jax.sharding.get_mesh()
  if not current.empty and current.abstract_mesh == mesh:
    return jax.sharding.NamedSharding(current, sharding.spec)
  if mesh.size != jax.device_count():
    raise ValueError(
      f"the target is sharded over a mesh of {mesh.size} devices ({dict(mesh.shape)}) "
      f"but this process sees {jax.device_count()}: set the mesh with jax.set_mesh"
    )
  concrete = jax.make_mesh(mesh.axis_sizes, mesh.axis_names, axis_types=mesh.axis_types)
  return jax.sharding.NamedSharding(concrete, sharding.spec)


@functools.partial(jax.jit, static_argnums=1)
def _recode(stored: Any, target: tuple[Any, tuple[Any, ...]]) -> Any:
  """A moment decoded (to float32, or its stored dtype) and encoded as ``target`` stores it.

  Jitted, as a training step's encoding is, and compiled once per format:
  ``target`` is the target leaf's tree structure and arrays' shapes and dtypes.
  """
  treedef, layout = target
  like = treedef.unflatten([jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in layout])
  return quantized.encode(quantized.decode(stored).reshape(like.shape), like)


def apply(plan: Plan, state: Any, like: Any) -> Any:
  """Runs a :class:`Plan`: ``like``'s tree, each leaf made by its rule and put where it is."""
  leaves = jax.tree.leaves(state, is_leaf=quantized.is_quantized)
  targets, treedef = jax.tree.flatten(like, is_leaf=quantized.is_quantized)

  def make(rule: Rule, target: Any) -> Any:
    if rule.kind == "copy":
      return leaves[rule.source]
    if rule.kind == "convert":
      layout = tuple(shape_dtype(x) for x in jax.tree.leaves(target))
      stored = leaves[rule.source]
      stored = quantized.unwrapped(stored) if quantized.is_quantized(stored) else stored
      return _recode(stored, (jax.tree.structure(target), layout))
    if rule.kind == "cast":
      return jnp.asarray(leaves[rule.source]).astype(target.dtype)
    return jnp.zeros(target.shape, target.dtype)

  def put(value: Any, target: Any) -> Any:
    sharding = placement(target)
    return value if sharding is None else jax.device_put(value, sharding)

  made = [make(rule, t) for rule, t in zip(plan.rules, targets, strict=True)]
  return treedef.unflatten([jax.tree.map(put, m, t) for m, t in zip(made, targets, strict=True)])


def convert_state(
  state: chex.ArrayTree, like: chex.ArrayTree, *, lossy: bool = False
) -> chex.ArrayTree:
  r"""An optimizer state in the layout, storage formats and shardings of another, ``like``.

  For each optimizer in the states (found by the field names ``count``,
  ``mu``, ``nu`` and AMSGrad's ``nu_max``, wherever a chain, wrapper or
  ``nnx.state`` put them, and paired in order), every stored moment
  :math:`x` of ``state`` becomes

  .. math::

    x' = E_{\text{like}}\big(D_{\text{state}}(x)\big)

  where :math:`D` decodes a :class:`~adam_optax.Quantized` leaf to float32
  (the identity for a dtype) and :math:`E` stores float32 values as ``like``
  stores them: a cast to its dtype, or block codes in its format, exactly as
  a step stores the moments it computed (``quantized.encode``). A leaf
  already in the target's format is copied, bit for bit, so converting
  ``optax.adam``'s state into ``ao.adam``'s (or back, for adamw, nadam,
  nadamw, adamax, amsgrad) changes no number, and training continued from
  either is the same. A conversion is exact when the target's dtype holds
  every decoded value, :math:`\mathrm{promote}(d_{\text{state}},
  d_{\text{like}}) = d_{\text{like}}` with float32 as a quantized leaf's
  decoded dtype (bfloat16 or codes to float32); a quantized target is exact
  only from its own format (a copy). Any other conversion loses data and
  needs ``lossy=True``: it rounds once, as one step's storage does, each
  value by at most half an ulp of the target's dtype, :math:`2^{-8}` of it for
  bfloat16, :math:`2^{-11}` for float16 (float32 to either, bfloat16 to
  float16 and back; inside the dtype's range: float16 overflows above 65504)
  or, into ``Quantized(b)``, by ``adam_optax.quantized.relative_error`` of it
  within the code's range (values under the block's smallest code go to 0, a
  first moment, or up to that code, a second moment).

  The rest is matched by path (wrappers around the optimizer, the params
  beside it) or, inside the optimizer's chain, by its fields. Two kinds of
  leaves are derived, not needed: a step count of a piece (a schedule's, as
  ``optax.scale_by_learning_rate`` keeps) is the moments' ``count``; the
  diagnostics records (:class:`~adam_optax.NormalizeState`,
  :class:`~adam_optax.ScaleByLrState`'s ``alpha``) are carried when both
  states have them, dropped when the target has none, and start at zero when
  only the target has them (:func:`~adam_optax.diagnostics` reads "no step
  yet" until the next update writes them).
  Leaves with a sharding in ``like`` are put there; an abstract ``like``
  (:func:`jax.eval_shape`) works as well. The state does not record which
  optimizer made it: an Adam state converts into an AdaMax target (both have
  ``count``, ``mu``, ``nu``) without a word.

  Examples:
    >>> import jax.numpy as jnp, optax, adam_optax as ao
    >>> params = {"w": jnp.ones(3)}
    >>> state = optax.adam(1e-3).init(params)
    >>> state = ao.convert_state(state, like=ao.adam(1e-3).init(params))
    >>> type(state[0]).__name__
    'MomentsState'
    >>> ao.convert_state(ao.amsgrad(1e-3).init(params), like=state)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ao.convert_state: ... would drop 2.nu_max, ... (pass lossy=True to drop it).
    >>> bf16 = ao.adam(1e-3, mu_dtype=jnp.bfloat16).init(params)
    >>> ao.convert_state(state, like=bf16)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ao.convert_state: ... would round the leaf at 0.mu.w from float32[3] into ...
    >>> state = ao.convert_state(state, like=bf16, lossy=True)

  Args:
    state: an optimizer state, or any tree holding some (``{"params": ...,
      "opt_state": ...}``, ``nnx.state(optimizer)``), of arrays.
    like: the target: a tree of the same kind from the optimizer to convert
      to, e.g. ``new_tx.init(params)`` or its :func:`jax.eval_shape`.
    lossy: allow a conversion that loses data: moments rounded into
      narrower storage (float32 to bfloat16 or ``Quantized``, 8-bit to
      4-bit, bfloat16 to float16), state that ``like`` has no place for
      dropped (AMSGrad's ``nu_max`` converted to Adam). Otherwise either is
      an error naming the first such leaf, its storage and the target's, and
      the rounding bound.

  Returns:
    A new tree of ``like``'s pytree types, formats and shardings; ``state``
    and ``like`` are not modified.

  Raises:
    ValueError: one line naming the first path that does not fit (another
      model, another optimizer, a moment the target has and the state lacks,
      a complex moment into a real one), or, without ``lossy``, what would
      be rounded or dropped.

  References:
    Kingma & Ba, 2015, Algorithm 1 (the state: :math:`m_t`, :math:`v_t`,
    :math:`t`); Dettmers et al., "8-bit Optimizers via Block-wise
    Quantization", ICLR 2022, section 2.1 (block-wise codes).
  """
  try:
    conversion = plan(state, like, lossy=lossy)
  except ValueError as error:
    raise ValueError(f"ao.convert_state: the state does not fit the target: {error}.") from None
  return apply(conversion, state, like)
