"""The one combination matrix of the test suite: the dimensions, their values, the cases.

As optax's ``_OPTIMIZERS_UNDER_TEST``, every test file draws its optimizers from
here. The seven dimensions below say what a user may combine with what;
tests/test_matrix.py runs :data:`CASES`, an all-pairs cover of them (every
pair of values of any two dimensions appears in some case), built by
:func:`all_pairs` from the full product minus :data:`EXCLUSIONS`, the
combinations that cannot work, each with its reason. tests/matrix_training.py
trains a case and tests/matrix_checks.py checks it.

Only jax, optax, numpy and adam_optax are imported here: .ci/min-versions runs
tests/test_min_versions.py, which imports this module, in a virtual
environment without flax or orbax.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import optax

import adam_optax as ao

Factory = Callable[..., optax.GradientTransformation]

# --- optimizer ---------------------------------------------------------------

#: Each adam_optax optimizer with the optax optimizer of the same name, which
#: takes the same positional parameters: a test builds both from one set of arguments.
OPTIMIZERS: dict[str, tuple[Factory, Factory]] = {
  "adam": (ao.adam, optax.adam),
  "adamw": (ao.adamw, optax.adamw),
  "nadam": (ao.nadam, optax.nadam),
  "nadamw": (ao.nadamw, optax.nadamw),
  "adamax": (ao.adamax, optax.adamax),
  "amsgrad": (ao.amsgrad, optax.amsgrad),
}
NAMES = sorted(OPTIMIZERS)

#: The optimizers whose moments take ``mu_dtype``/``nu_dtype`` (AdaMax's do not).
WITH_STORAGE = tuple(name for name in NAMES if name != "adamax")

#: Params dtypes every optimizer supports.
FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def both(name: str, *args: Any, **kwargs: Any) -> tuple[optax.GradientTransformation, ...]:
  """``(ao.<name>(*args, **kwargs), optax.<name>(*args, **kwargs))``."""
  ours, theirs = OPTIMIZERS[name]
  return ours(*args, **kwargs), theirs(*args, **kwargs)


def ours(name: str, *args: Any, **kwargs: Any) -> optax.GradientTransformation:
  """``ao.<name>(*args, **kwargs)``."""
  return OPTIMIZERS[name][0](*args, **kwargs)


# --- storage -----------------------------------------------------------------

#: The storage of both moments (``mu_dtype`` and ``nu_dtype``); ``None`` is the
#: params' dtype, float32 here, and what optax's optimizers keep.
STORAGES: dict[str, Any] = {
  "float32": None,
  "bfloat16": jnp.bfloat16,
  "8bit": ao.Quantized(8),
  "4bit": ao.Quantized(4),
}


def storage_kwargs(storage: str) -> dict[str, Any]:
  """The keyword arguments that store both moments as ``storage`` says."""
  fmt = STORAGES[storage]
  return {} if fmt is None else {"mu_dtype": fmt, "nu_dtype": fmt}


# --- wrapper -----------------------------------------------------------------

LEARNING_RATE = 1e-2
#: The learning rate that ``inject_hyperparams`` keeps in the state, changing every step.
SCHEDULE = optax.linear_schedule(LEARNING_RATE, LEARNING_RATE / 5, 4)
#: Below the gradient norms of tests/matrix_training.py's model (12 to 76), so the clip acts.
MAX_NORM = 1.0

#: Each optax wrapper around an optimizer ``make(learning_rate, **kwargs)``.
WRAPPERS: dict[str, Callable[[Factory, dict[str, Any]], optax.GradientTransformation]] = {
  "clip": lambda make, kw: optax.chain(
    optax.clip_by_global_norm(MAX_NORM), make(LEARNING_RATE, **kw)
  ),
  "multisteps": lambda make, kw: optax.MultiSteps(
    make(LEARNING_RATE, **kw), every_k_schedule=2
  ).gradient_transformation(),
  # A dtype is callable, so inject_hyperparams would take it for a schedule: static.
  "inject": lambda make, kw: optax.inject_hyperparams(
    make, static_args=[key for key in kw if key.endswith("_dtype")]
  )(learning_rate=SCHEDULE, **kw),
  "if_finite": lambda make, kw: optax.apply_if_finite(
    make(LEARNING_RATE, **kw), max_consecutive_errors=2
  ),
}


def optimizer(
  name: str, storage: str, wrapper: str, *, reference: bool = False
) -> optax.GradientTransformation:
  """A case's transformation: ``ao.<name>`` with diagnostics on, its storage, in its wrapper.

  With ``reference=True``, the same wrapper around ``optax.<name>`` (which
  stores its moments in the params' dtype: float32 storage only).
  """
  if reference:
    assert STORAGES[storage] is None, f"optax.{name} has no {storage} storage"
    return WRAPPERS[wrapper](OPTIMIZERS[name][1], {})
  return WRAPPERS[wrapper](OPTIMIZERS[name][0], {**storage_kwargs(storage), "diagnostics": True})


# --- the dimensions and what cannot be combined ----------------------------------

#: Every dimension and its values. front_end: a jitted optax loop over a params
#: pytree, ``nnx.Optimizer`` with ``nnx.jit``, or Linen's ``TrainState`` with
#: ``jax.jit``. path: the params as a tree, or ``ao.flatten_params`` buffers
#: (``ao.flat_train_step`` in the optax loop). layout: one device, or 8 host
#: devices with every matrix split by rows, or the hidden layer split by columns
#: as tensor parallelism does (tests/matrix_training.py's SPECS). reader:
#: ``ao.diagnostics`` on the live state, on ``nnx.state(optimizer)``, or on the
#: state saved and restored by orbax without a target.
DIMENSIONS: dict[str, tuple[str, ...]] = {
  "optimizer": tuple(NAMES),
  "storage": tuple(STORAGES),
  "front_end": ("optax", "nnx", "linen"),
  "path": ("tree", "flat"),
  "wrapper": tuple(WRAPPERS),
  "layout": ("one_device", "rows", "columns"),
  "reader": ("live", "nnx_state", "checkpoint"),
}


@dataclasses.dataclass(frozen=True)
class Exclusion:
  """The combinations that match every ``{dimension: values}`` item, and why none can work."""

  match: Mapping[str, frozenset[str]]
  reason: str

  def excludes(self, case: Mapping[str, str]) -> bool:
    """Whether ``case`` is one of the excluded combinations."""
    return all(case[dimension] in values for dimension, values in self.match.items())


def _exclusion(reason: str, **match: tuple[str, ...]) -> Exclusion:
  return Exclusion({dimension: frozenset(values) for dimension, values in match.items()}, reason)


EXCLUSIONS: tuple[Exclusion, ...] = (
  _exclusion(
    "ao.adamax keeps optax.adamax's signature, which has no mu_dtype or nu_dtype: "
    "its moments take the params' dtype",
    optimizer=("adamax",),
    storage=("bfloat16", "8bit", "4bit"),
  ),
  _exclusion(
    "nnx.state reads an nnx object; the optax loop and TrainState hold plain pytrees",
    reader=("nnx_state",),
    front_end=("optax", "linen"),
  ),
  _exclusion(
    "nnx.Optimizer updates the nnx.Param variables of a module, a tree; the flat path keeps "
    "the params in FlatParams buffers that no module holds (an NNX model on the flat path "
    "is stepped by the optax loop: nnx.split, then ao.flat_train_step)",
    front_end=("nnx",),
    path=("flat",),
  ),
  _exclusion(
    "a flat buffer is 1-D: it is split over devices along its length (rows), and a "
    "leaf's columns are not contiguous in it",
    path=("flat",),
    layout=("columns",),
  ),
)


def excluded(case: Mapping[str, str], exclusions: tuple[Exclusion, ...] = EXCLUSIONS) -> bool:
  """Whether any of ``exclusions`` excludes ``case``."""
  return any(exclusion.excludes(case) for exclusion in exclusions)


def _pairs(case: Mapping[str, str]) -> frozenset[tuple[str, ...]]:
  """Every pair of (dimension, value) items of ``case``, in the dimensions' order."""
  return frozenset((a, case[a], b, case[b]) for a, b in itertools.combinations(list(case), 2))


def _values(case: Mapping[str, str]) -> frozenset[tuple[str, ...]]:
  """Every (dimension, value) item of ``case``."""
  return frozenset(case.items())


def _greedy(covers: list[frozenset], uncovered: frozenset) -> list[int]:
  """Indices into ``covers``: each time the first that covers the most of ``uncovered``."""
  chosen = []
  while uncovered:
    best = max(range(len(covers)), key=lambda i: len(covers[i] & uncovered))
    chosen.append(best)
    uncovered -= covers[best]
  return chosen


def all_pairs(
  dimensions: Mapping[str, tuple[str, ...]], exclusions: tuple[Exclusion, ...] = ()
) -> list[dict[str, str]]:
  """A small list of allowed combinations in which every allowed pair of values appears.

  A pair is allowed when some combination of the full product that no
  exclusion matches contains it. Greedy and deterministic: from the allowed
  combinations, in the product's order, it takes the first that covers the
  most pairs not yet covered, until none is left.

  Args:
    dimensions: each dimension's values.
    exclusions: the combinations that cannot work.

  Returns:
    The cases, each a dict from dimension to value.
  """
  product = (
    dict(zip(dimensions, values, strict=True)) for values in itertools.product(*dimensions.values())
  )
  allowed = [case for case in product if not excluded(case, exclusions)]
  chosen: list[dict[str, str]] = []
  # The pairs, then any value they leave out (with one dimension there are no pairs).
  for cover in (_pairs, _values):
    covers = [cover(case) for case in allowed]
    uncovered = frozenset().union(*covers).difference(*map(cover, chosen))
    chosen += [allowed[i] for i in _greedy(covers, uncovered)]
  return chosen


@dataclasses.dataclass(frozen=True)
class Case:
  """One combination: a value of every dimension of :data:`DIMENSIONS`."""

  optimizer: str
  storage: str
  front_end: str
  path: str
  wrapper: str
  layout: str
  reader: str

  @property
  def id(self) -> str:
    """The values joined by dashes, e.g. ``adam-8bit-nnx-tree-clip-rows-live``."""
    return "-".join(dataclasses.astuple(self))

  @property
  def devices(self) -> int:
    """How many devices the case's layout needs."""
    return 1 if self.layout == "one_device" else 8


#: The cases tests/test_matrix.py runs.
CASES = [Case(**case) for case in all_pairs(DIMENSIONS, EXCLUSIONS)]
