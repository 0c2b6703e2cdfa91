"""Bad input: every error path the docs promise, and what must not be an error.

Concrete hyper-parameters are checked when a transformation is built
(``ValueError`` naming the parameter, the value and the valid range); arrays
and tracers pass unchecked. Gradients that do not match the state name the
first mismatching path; integer gradients and pieces in the wrong order raise
``TypeError`` naming the piece and what it expected.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from matrix import NAMES

import adam_optax as ao

# Every public factory with the positional arguments it needs to be built.
FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {
  "adam": functools.partial(ao.adam, 1e-3),
  "adamw": functools.partial(ao.adamw, 1e-3),
  "nadam": functools.partial(ao.nadam, 1e-3),
  "adamax": functools.partial(ao.adamax, 1e-3),
  "nadamw": functools.partial(ao.nadamw, 1e-3),
  "amsgrad": functools.partial(ao.amsgrad, 1e-3),
  "scale_by_moments": ao.scale_by_moments,
  "scale_by_infinity_moments": ao.scale_by_infinity_moments,
  "bias_correct": ao.bias_correct,
  "normalize": ao.normalize,
  "running_max": ao.running_max,
  "scale_by_lr": ao.scale_by_lr,
}

_DECAY = "0 <= {name} < 1"
_NON_NEGATIVE = "{name} >= 0"
_FINITE = "a finite number"
# (parameter, bad values, the valid range the message must state)
BAD_HYPERPARAMETERS = [
  ("b1", (-0.1, 1.0, 1.5, math.nan, np.float64(-1.0)), _DECAY),
  ("b2", (-1e-9, 1.0, 2.0, math.nan, np.float32(1.0)), _DECAY),
  ("eps", (-1e-8, -math.inf, math.nan), _NON_NEGATIVE),
  ("eps_root", (-1e-8, math.nan), _NON_NEGATIVE),
  ("learning_rate", (math.inf, -math.inf, math.nan, np.float32("inf")), _FINITE),
  ("weight_decay", (math.inf, math.nan), _FINITE),
]


def _takes(factory: str, parameter: str) -> bool:
  function = getattr(FACTORIES[factory], "func", FACTORIES[factory])  # unwrap the partials
  return parameter in inspect.signature(function).parameters


def _build(factory: str, **kwargs: Any) -> optax.GradientTransformation:
  """Builds ``factory``; the learning rate of the partials is overridden by keyword."""
  if "learning_rate" in kwargs and isinstance(FACTORIES[factory], functools.partial):
    return FACTORIES[factory].func(**kwargs)
  return FACTORIES[factory](**kwargs)


BAD_DTYPES = [(jnp.int32, "int32 is out of range"), (bool, "bool is out of range")]
BAD_DTYPES += [("not-a-dtype", "'not-a-dtype' is not a dtype")]

# (factory, parameter, bad value, what the message must say)
BAD_ARGUMENT_CASES = [
  pytest.param(
    factory,
    name,
    value,
    (f"{name}={value!r}", valid.format(name=name)),
    id=f"{factory}-{name}={value}",
  )
  for name, values, valid in BAD_HYPERPARAMETERS
  for value in values
  for factory in FACTORIES
  if _takes(factory, name)
] + [
  pytest.param(
    factory,
    name,
    dtype,
    (f"{name}={message}", "floating or complex dtype"),
    id=f"{factory}-{name}={dtype}",
  )
  for name in ("mu_dtype", "nu_dtype")
  for dtype, message in BAD_DTYPES
  for factory in FACTORIES
  if _takes(factory, name)
]


@pytest.mark.parametrize(("factory", "name", "value", "expected"), BAD_ARGUMENT_CASES)
def test_bad_argument_raises_naming_it_its_value_and_range(
  factory: str, name: str, value: Any, expected: tuple[str, str]
) -> None:
  first, second = expected
  with pytest.raises(ValueError, match=re.escape(first)) as error:
    _build(factory, **{name: value})
  assert second in str(error.value)


CORE_MODULES = ("bias", "diagnosis", "lr", "moments", "normalize", "optimizers", "running_max")
READERS = {"diagnostics"}  # functions of a state, not factories


def test_the_factory_table_covers_every_core_transformation() -> None:
  """A new public factory of the core must be added to FACTORIES (so to these tests)."""
  factories = {
    name
    for name in ao.__all__
    if inspect.isfunction(getattr(ao, name))
    and getattr(ao, name).__module__ in {f"adam_optax.{module}" for module in CORE_MODULES}
  } - READERS
  assert factories == set(FACTORIES)


@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_valid_boundary_values_are_accepted(factory: str) -> None:
  """The ends of the ranges that are inside them: b = 0, eps = 0, float dtypes."""
  boundary = {"b1": 0.0, "b2": 0.0, "eps": 0.0, "eps_root": 0.0, "weight_decay": 0.0}
  boundary |= {"mu_dtype": jnp.bfloat16, "nu_dtype": np.float32, "learning_rate": 0.0}
  kwargs = {name: value for name, value in boundary.items() if _takes(factory, name)}
  assert isinstance(_build(factory, **kwargs), optax.GradientTransformation)


@pytest.mark.parametrize("name", NAMES)
def test_array_hyperparameters_are_accepted_unchecked(name: str) -> None:
  """Arrays are not checked in Python: even an out-of-range one builds and runs."""
  kwargs = {"b1": jnp.asarray(0.9), "b2": jnp.asarray(1.5), "eps": jnp.asarray(-1.0)}
  tx = _build(name, learning_rate=jnp.asarray(jnp.inf), **kwargs)
  params = jnp.ones(3)
  updates, _ = tx.update(jnp.ones(3), tx.init(params), params)
  assert updates.shape == params.shape


def test_bias_correct_refuses_nesterov_without_the_first_moment() -> None:
  with pytest.raises(ValueError, match=r"nesterov=True with mu=False"):
    ao.bias_correct(nesterov=True, mu=False)


@pytest.mark.parametrize("name", NAMES)
def test_integer_params_are_refused_at_init_naming_the_path(name: str) -> None:
  """Adam has no moments for an integer leaf: a clear TypeError, as for integer gradients."""
  tx = FACTORIES[name]()
  with pytest.raises(TypeError, match=re.escape("the param at ['i'] has dtype int32")):
    tx.init({"i": jnp.arange(3), "v": jnp.ones(2)})
  masked = optax.masked(tx, {"i": False, "v": True})  # the way to leave them out
  params = {"i": jnp.arange(3), "v": jnp.ones(2)}
  updates, _ = masked.update({"i": jnp.zeros(3), "v": jnp.ones(2)}, masked.init(params), params)
  assert updates["v"].shape == (2,)


# Gradients that do not match the state ------------------------------------------

PARAMS = {"layer": {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}, "seq": [jnp.ones(2), jnp.ones(())]}
W, B, SEQ = jnp.ones((2, 3)), jnp.ones(3), [jnp.ones(2), jnp.ones(())]

# (gradients, the error, the path its message must name)
BAD_GRADIENTS = {
  "extra_key": ({"layer": {"w": W, "b": B, "x": B}, "seq": SEQ}, ValueError, "['layer']['x']"),
  "missing_key": ({"layer": {"b": B}, "seq": SEQ}, ValueError, "['layer']['w']"),
  "missing_subtree": ({"layer": {"w": W, "b": B}}, ValueError, "['seq']"),
  "tuple_for_list": ({"layer": {"w": W, "b": B}, "seq": tuple(SEQ)}, ValueError, "['seq']"),
  "extra_element": ({"layer": {"w": W, "b": B}, "seq": [*SEQ, B]}, ValueError, "['seq'][2]"),
  "leaf_for_subtree": ({"layer": B, "seq": SEQ}, ValueError, "['layer']"),
  "shape": ({"layer": {"w": W.T, "b": B}, "seq": SEQ}, ValueError, "['layer']['w']"),
  "scalar_shape": ({"layer": {"w": W, "b": B}, "seq": [SEQ[0], B[:1]]}, ValueError, "['seq'][1]"),
  "integer": (
    {"layer": {"w": W, "b": B.astype(jnp.int32)}, "seq": SEQ},
    TypeError,
    "['layer']['b']",
  ),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", sorted(BAD_GRADIENTS))
def test_mismatched_gradients_name_the_first_mismatching_path(name: str, case: str) -> None:
  grads, error, path = BAD_GRADIENTS[case]
  tx = FACTORIES[name]()
  with pytest.raises(error, match=re.escape(path)) as raised:
    tx.update(grads, tx.init(PARAMS), PARAMS)
  assert re.search(r"ao\.scale_by(_infinity)?_moments", str(raised.value))


def test_tuple_for_list_message_says_which_containers() -> None:
  grads, _, _ = BAD_GRADIENTS["tuple_for_list"]
  tx = ao.adam(1e-3)
  with pytest.raises(ValueError, match=r"at \['seq'\] .* tuple .* list") as raised:
    tx.update(grads, tx.init(PARAMS), PARAMS)
  assert "['layer']" not in str(raised.value)


@pytest.mark.parametrize("case", ["extra_key", "shape", "integer"])
def test_failed_jitted_update_loses_nothing(case: str) -> None:
  """The error comes at trace time: a donated state is neither consumed nor changed."""
  grads, error, _ = BAD_GRADIENTS[case]
  tx = ao.adam(1e-3)
  state = tx.init(PARAMS)
  snapshot = jax.tree.map(np.array, state)
  update = jax.jit(tx.update, donate_argnums=1)
  with pytest.raises(error):
    update(grads, state, PARAMS)
  assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))
  chex.assert_trees_all_equal(state, snapshot)
  good = jax.tree.map(jnp.ones_like, PARAMS)
  # The same compiled update on a copy of the snapshot: jitted against jitted, since an
  # eager update may round differently (a GPU contracts multiply-adds under jit only).
  expected = update(good, jax.tree.map(jnp.asarray, snapshot), PARAMS)
  chex.assert_trees_all_equal(update(good, state, PARAMS), expected)


# Pieces in the wrong order --------------------------------------------------------


def _moments() -> ao.Moments:
  tx = ao.scale_by_moments()
  moments, _ = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
  return moments


JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


def _update(tx: optax.GradientTransformation, jit: bool) -> Callable[..., Any]:
  return jax.jit(tx.update) if jit else tx.update


@JIT
@pytest.mark.parametrize(
  ("factory", "message"),
  [
    (ao.bias_correct, "ao.bias_correct expected the ao.Moments"),
    (ao.normalize, "ao.normalize expected the ao.Moments"),
    (ao.running_max, "ao.running_max expected the ao.Moments"),
    (lambda: ao.normalize(diagnostics=True), "ao.normalize expected the ao.Moments"),
  ],
  ids=["bias_correct", "normalize", "running_max", "normalize_diagnosed"],
)
def test_param_shaped_updates_to_a_moments_piece(
  factory: Callable, message: str, jit: bool
) -> None:
  tx = factory()
  with pytest.raises(TypeError, match=re.escape(message)):
    _update(tx, jit)(jnp.ones(2), tx.init(jnp.zeros(2)))


@pytest.mark.parametrize(
  ("factory", "message"),
  [
    (lambda: ao.scale_by_lr(0.1), "ao.scale_by_lr expected param-shaped"),
    (ao.scale_by_moments, "ao.scale_by_moments expected gradients"),
    (ao.scale_by_infinity_moments, "ao.scale_by_infinity_moments expected gradients"),
  ],
  ids=["scale_by_lr", "scale_by_moments", "scale_by_infinity_moments"],
)
def test_moments_to_a_param_shaped_piece(factory: Callable, message: str) -> None:
  tx = factory()
  with pytest.raises(TypeError, match=re.escape(message)):
    tx.update(_moments(), tx.init(jnp.zeros(2)))
  # Moments cannot cross a jit boundary at all: flattening them names the pieces.
  with pytest.raises(TypeError, match=r"ao\.Moments, which ao\.scale_by_moments hands"):
    jax.jit(tx.update)(_moments(), tx.init(jnp.zeros(2)))


@JIT
@pytest.mark.parametrize(
  ("pieces", "piece"),
  [
    ((ao.scale_by_moments(), ao.scale_by_lr(0.1)), "ao.scale_by_lr expected"),
    ((ao.bias_correct(), ao.normalize()), "ao.bias_correct expected"),
    ((ao.scale_by_moments(), ao.scale_by_moments()), "ao.scale_by_moments expected"),
  ],
  ids=["no_normalize", "no_moments", "moments_twice"],
)
def test_a_misordered_chain(pieces: tuple, piece: str, jit: bool) -> None:
  tx = optax.chain(*pieces)
  with pytest.raises(TypeError, match=re.escape(piece)):
    _update(tx, jit)(jnp.ones(2), tx.init(jnp.zeros(2)))


def test_applying_moments_as_updates_is_refused() -> None:
  """A chain that ends before ``normalize``: JAX's tree check names ``Moments``; never a step."""
  tx = optax.chain(ao.scale_by_moments(), ao.bias_correct())
  params = {"w": jnp.zeros(2)}
  moments, _ = tx.update({"w": jnp.ones(2)}, tx.init(params))
  with pytest.raises((TypeError, ValueError), match="Moments"):
    optax.apply_updates(params, moments)


BETWEEN_THE_PIECES = {
  "scale": optax.scale(2.0),
  "clip": optax.clip(0.5),
  "clip_by_global_norm": optax.clip_by_global_norm(1.0),
  "add_decayed_weights": optax.add_decayed_weights(0.1),
}


@JIT
@pytest.mark.parametrize("where", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(BETWEEN_THE_PIECES))
def test_an_optax_transformation_between_the_pieces_raises_naming_them(
  name: str, where: int, jit: bool
) -> None:
  """Never a silent NaN or a clipped b1: a TypeError that says where transformations go."""
  pieces = [ao.scale_by_moments(), ao.bias_correct(), ao.running_max(), ao.normalize()]
  pieces.insert(where, BETWEEN_THE_PIECES[name])
  tx = optax.chain(*pieces, ao.scale_by_lr(1e-2))
  params = {"w": jnp.ones(3)}
  with pytest.raises(TypeError, match=r"before ao\.scale_by_moments\(\) or after ao\.normalize"):
    _update(tx, jit)({"w": jnp.ones(3)}, tx.init(params), params)
