"""Trains one case of the matrix (tests/matrix.py) in its front end, path and layout.

A case trains a two-layer perceptron for :data:`STEPS` jitted steps in its
front end and records, after each step, host copies of the params, the
optimizer state and the gradient the step used (:class:`Run`). The hidden
layer's kernel has 16,384 elements, so low-bit storage quantizes it; the other
leaves are below ``min_size`` (4,096) and stay float32. tests/matrix_checks.py checks
a run against its reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.training.train_state import TrainState
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from matrix import Case

import adam_optax as ao
from adam_optax.flat import FlatParams, update_and_apply

STEPS = 4
#: The step whose batch holds a NaN when the wrapper is ``apply_if_finite`` (from 1).
NAN_STEP = 2
DEVICES = 8

#: Each 8-device layout, a spec per leaf: every matrix split by rows, or the hidden
#: layer by columns and the output layer by rows, as tensor parallelism splits an MLP.
#: Each device holds whole rows of blocks of the hidden kernel (8 x 2048) either way, so
#: low-bit storage keeps the split. Replicated is P(None), the spec jit gives back (P()
#: would compile the step twice).
SPECS: dict[str, dict[str, dict[str, P]]] = {
  "rows": {
    "hidden": {"kernel": P("data", None), "bias": P(None)},
    "out": {"kernel": P("data", None), "bias": P(None)},
  },
  "columns": {
    "hidden": {"kernel": P(None, "data"), "bias": P("data")},
    "out": {"kernel": P("data", None), "bias": P(None)},
  },
}


def init_params() -> dict[str, dict[str, jax.Array]]:
  """The perceptron's params: 8 inputs, 2,048 hidden units, 1 output."""
  keys = jax.random.split(jax.random.key(0), 3)
  return {
    "hidden": {
      "kernel": jax.random.normal(keys[0], (8, 2048)) / 3,
      "bias": 0.1 * jax.random.normal(keys[1], (2048,)),
    },
    "out": {"kernel": jax.random.normal(keys[2], (2048, 1)) / 45, "bias": jnp.zeros(1)},
  }


def batches(case: Case) -> list[tuple[jax.Array, jax.Array]]:
  """``(x, y)`` for every step; for ``apply_if_finite``, step :data:`NAN_STEP` has a NaN."""
  keys = jax.random.split(jax.random.key(1), 2 * STEPS)
  data = [
    (jax.random.normal(keys[2 * t], (32, 8)), jax.random.normal(keys[2 * t + 1], (32, 1)))
    for t in range(STEPS)
  ]
  if case.wrapper == "if_finite":
    x, y = data[NAN_STEP - 1]
    data[NAN_STEP - 1] = (x.at[0, 0].set(jnp.nan), y)
  return data


def _gathered(x: jax.Array) -> jax.Array:
  """``x`` replicated on the mesh in use (the forward pass gathers the params, as FSDP does)."""
  return x if jax.sharding.get_abstract_mesh().empty else jax.sharding.reshard(x, P())


def as_tree(params: Any) -> Any:
  """The params as their tree, whether a tree or :class:`FlatParams`."""
  return params.tree() if isinstance(params, FlatParams) else params


def forward(params: Any, x: jax.Array) -> jax.Array:
  """The perceptron: ``relu(x W1 + b1) W2 + b2``."""
  p = jax.tree.map(_gathered, as_tree(params))
  hidden = jax.nn.relu(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
  return hidden @ p["out"]["kernel"] + p["out"]["bias"]


def mean_squared_error(prediction: jax.Array, y: jax.Array) -> jax.Array:
  """The loss every front end minimizes."""
  return jnp.mean((prediction - y) ** 2)


def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  """:func:`mean_squared_error` of :func:`forward`."""
  return mean_squared_error(forward(params, x), y)


# --- layout ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a case's arrays live: one device, or a mesh of 8 with a spec per leaf."""

  name: str
  mesh: jax.sharding.Mesh | None

  def context(self) -> contextlib.AbstractContextManager[Any]:
    """Enters the mesh (``jax.set_mesh``), if any."""
    return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

  def shardings(self, path: str) -> Any:
    """The params' shardings on this layout (``None`` on one device)."""
    if self.mesh is None:
      return None
    if path == "flat":
      return NamedSharding(self.mesh, P("data"))
    return jax.tree.map(lambda spec: NamedSharding(self.mesh, spec), SPECS[self.name])

  def params(self, path: str) -> Any:
    """:func:`init_params` on this layout, as a tree or flat buffers."""
    tree = init_params()
    if path == "flat":
      tree = ao.flatten_params(tree, multiple_of=DEVICES)
    return tree if self.mesh is None else jax.device_put(tree, self.shardings(path))

  def replicated(self, tree: Any) -> Any:
    """``tree`` (a batch) on every device of the mesh."""
    return tree if self.mesh is None else jax.device_put(tree, NamedSharding(self.mesh, P()))


def layout(name: str) -> Layout:
  """The layout of a case: ``one_device``, ``rows`` or ``columns``."""
  if name == "one_device":
    return Layout(name, None)
  assert jax.device_count() >= DEVICES, f"the {name} layout needs {DEVICES} devices"
  return Layout(name, jax.make_mesh((DEVICES,), ("data",)))


# --- front end ---------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """A trained case: host copies after each step, and the live objects after the last.

  Attributes:
    params: the params (tree or flat, as the front end holds them) at steps
      0..STEPS, on the host.
    states: the optimizer state at steps 0..STEPS, on the host, as optax's
      ``update`` receives it (arrays, not variables).
    grads: the gradient each of steps 1..STEPS used, on the host.
    live_params: the params after the last step, as the front end holds them.
    live_state: the optimizer state as the front end holds it (variables in NNX).
    pure_state: ``live_state`` as arrays, as optax's ``update`` receives it.
    saved: what a user of this front end saves in a checkpoint.
    nnx_state: ``nnx.state(optimizer)``, for NNX only.
    compiles: how many times the jitted training step was compiled.
  """

  params: list[Any] = dataclasses.field(default_factory=list)
  states: list[Any] = dataclasses.field(default_factory=list)
  grads: list[Any] = dataclasses.field(default_factory=list)
  live_params: Any = None
  live_state: Any = None
  pure_state: Any = None
  saved: Any = None
  nnx_state: Callable[[], Any] | None = None
  compiles: int = 0

  def record(self, params: Any, state: Any, grads: Any | None = None) -> None:
    """Keeps host copies (the next step may donate the device buffers)."""
    self.params.append(jax.device_get(params))
    self.states.append(jax.device_get(state))
    if grads is not None:
      self.grads.append(jax.device_get(grads))


def _optax_loop(tx: optax.GradientTransformation, path: str, where: Layout, data: list) -> Run:
  """A jitted loop of ``tx.update`` and ``optax.apply_updates`` (``ao.flat_train_step`` if flat)."""
  params = where.params(path)
  state = jax.jit(tx.init)(params)
  gradient = jax.jit(jax.grad(loss))
  if path == "flat":
    jitted = ao.flat_train_step(loss, tx)

    def step(p: Any, s: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, Any]:
      g = gradient(p, x, y)  # before the step, which donates p
      return (*jitted(p, s, x, y)[:2], g)
  else:

    @jax.jit
    def jitted(p: Any, s: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, Any]:
      g = jax.grad(loss)(p, x, y)
      return (*update_and_apply(tx, g, s, p), g)

    step = jitted

  run = Run()
  run.record(params, state)
  for x, y in data:
    params, state, g = step(params, state, *where.replicated((x, y)))
    run.record(params, state, g)
  run.live_params, run.live_state, run.pure_state = params, state, state
  run.saved = {"params": params, "opt_state": state}
  run.compiles = jitted._cache_size()
  return run


class _Dense(nnx.Module):
  def __init__(self, params: dict[str, jax.Array]) -> None:
    self.kernel = nnx.Param(params["kernel"])
    self.bias = nnx.Param(params["bias"])


class _Perceptron(nnx.Module):
  """:func:`forward` as an NNX module whose params are :func:`init_params`."""

  def __init__(self, params: dict[str, dict[str, jax.Array]]) -> None:
    self.hidden = _Dense(params["hidden"])
    self.out = _Dense(params["out"])

  def __call__(self, x: jax.Array) -> jax.Array:
    return forward(nnx.to_pure_dict(nnx.state(self, nnx.Param)), x)


def _nnx(tx: optax.GradientTransformation, path: str, where: Layout, data: list) -> Run:
  """``nnx.Optimizer(model, tx, wrt=nnx.Param)`` stepped by an ``nnx.jit`` function."""
  assert path == "tree", "nnx.Optimizer steps a module's variables (see matrix.EXCLUSIONS)"
  model = _Perceptron(where.params(path))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model: _Perceptron, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> Any:
    grads = nnx.grad(lambda m: mean_squared_error(m(x), y))(model)
    optimizer.update(model, grads)
    return grads

  def arrays() -> tuple[Any, Any]:
    """Params and state as ``Optimizer.update`` hands them to ``tx.update``."""
    return nnx.as_pure(nnx.state(model, nnx.Param)), nnx.as_pure(optimizer.opt_state)

  run = Run()
  run.record(*arrays())
  for x, y in data:
    grads = step(model, optimizer, *where.replicated((x, y)))
    run.record(*arrays(), nnx.as_pure(nnx.state(grads, nnx.Param)))
  run.live_params, run.pure_state = arrays()
  run.live_state = optimizer.opt_state
  run.saved = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
  run.nnx_state = lambda: nnx.state(optimizer)
  run.compiles = step.jitted_fn._cache_size()
  return run


def _linen(tx: optax.GradientTransformation, path: str, where: Layout, data: list) -> Run:
  """Linen's ``TrainState.create(..., tx=tx)`` and ``apply_gradients`` under ``jax.jit``."""
  # TrainState.create asks whether its params are a mapping holding an "overwrite with
  # gradient" collection, so flat buffers go in as a collection of their own.
  state = TrainState.create(
    apply_fn=lambda variables, x: forward(variables["params"]["layers"], x),
    params={"layers": where.params(path)},
    tx=tx,
  )
  # Its step count starts as a Python 0, weakly typed, and would compile the step twice.
  state = state.replace(step=jnp.asarray(state.step, jnp.int32))

  @jax.jit
  def step(state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, Any]:
    g = jax.grad(lambda p: mean_squared_error(state.apply_fn({"params": p}, x), y))(state.params)
    return state.apply_gradients(grads=g), g

  run = Run()
  run.record(state.params, state.opt_state)
  for x, y in data:
    state, g = step(state, *where.replicated((x, y)))
    run.record(state.params, state.opt_state, g)
  run.live_params, run.live_state, run.pure_state = state.params, state.opt_state, state.opt_state
  run.saved = {"params": state.params, "opt_state": state.opt_state}
  run.compiles = step._cache_size()
  return run


FRONT_ENDS: dict[str, Callable[[optax.GradientTransformation, str, Layout, list], Run]] = {
  "optax": _optax_loop,
  "nnx": _nnx,
  "linen": _linen,
}


def train(case: Case, tx: optax.GradientTransformation) -> tuple[Run, Layout]:
  """Trains ``tx`` as ``case`` says: its front end, path, layout and batches."""
  where = layout(case.layout)
  with where.context():
    return FRONT_ENDS[case.front_end](tx, case.path, where, batches(case)), where
