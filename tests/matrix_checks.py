r"""Checks one trained case of the matrix against its reference.

The reference of a case (tests/matrix.py) depends on its storage:

* **float32**: the same case with the optax optimizer of the same name (same
  front end, path, wrapper and layout): params and moments bit for bit after
  every step, on a CPU; elsewhere within the 4 ulp per element that
  docs/index.md promises.
* **bfloat16, 8-bit, 4-bit**: the case's float32 twin, one step at a time:
  from the case's own state before step t, decoded to float32, one jitted step
  of the same optimizer and wrapper with float32 storage, on one device, on the
  gradient the case used. The step uses the unrounded float32 moments, so the
  params agree to :data:`ULPS` ulp of their operands; each stored moment is the
  twin's float32 moment rounded once, so it is within
  :math:`\rho |x| + \varphi s` plus :data:`ULPS` ulp of its operands, where
  :math:`\rho` is the storage's relative rounding (half a bfloat16 ulp,
  :math:`2^{-8}`; ``quantized.relative_error`` for a quantized leaf) and
  :math:`\varphi s` the format's smallest code times the leaf's largest value
  (smaller values round to 0 or to that code). The ulp are those of the
  operands (the larger of the value and its previous value) because XLA
  contracts a multiply and an add into one fused multiply-add in one program
  and not in another (tests/test_flat.py measured it).

Every case also checks, where it applies: that its jitted step compiled once
for all :data:`~matrix_training.STEPS` steps; that a NaN step under
``apply_if_finite`` leaves the params and the stored moments bit-identical;
that ``ao.diagnostics`` reads the same values, bit for bit, from the case's
reader form (``nnx.state``, a checkpoint restored without a target) as from
the live state, finite, with the last step's α and :math:`1 - \beta_1^t`;
and, on 8 devices, that the params keep their sharding, that no moment is
replicated where its param is split, and that the compiled optimizer step
holds no all-gather.

Run as a script (``python tests/matrix_checks.py DIR``, with
``JAX_PLATFORMS=cpu`` and ``XLA_FLAGS=--xla_force_host_platform_device_count=8``),
it checks every case of the matrix that needs 8 devices, one after another,
and prints one JSON object: for each case id, ``{"ok", "message", "seconds"}``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from matrix import CASES, LEARNING_RATE, SCHEDULE, STORAGES, Case, optimizer
from matrix_training import NAN_STEP, STEPS, Layout, Run, train

import adam_optax as ao
from adam_optax import quantized
from adam_optax.checkpoint import save_checkpoint
from adam_optax.flat import FlatParams, update_and_apply

#: Ulp of the operands by which two jitted programs may differ per step (fused multiply-adds):
#: 4 on a CPU; on a GPU, which fuses more, 6 were seen (H200: nadamw, bfloat16 moments, clip).
ULPS = 4 if jax.default_backend() == "cpu" else 8
#: On a CPU, ao's optimizers equal optax's bit for bit; elsewhere within 4 ulp (docs/index.md).
EXACT = jax.default_backend() == "cpu"
MOMENTS = ("mu", "nu", "nu_max")


def _decoded(tree: Any) -> Any:
  """``tree`` on the host with quantized leaves decoded and bfloat16 ones cast, to float32."""

  def leaf(x: Any) -> np.ndarray:
    x = np.asarray(quantized.decode(x))
    return x.astype(np.float32) if x.dtype == jnp.bfloat16 else x

  return jax.tree.map(leaf, tree, is_leaf=quantized.is_quantized)


class Leaf(NamedTuple):
  """A leaf of a state or params tree, decoded, with the moment it belongs to."""

  field: str | None  # "mu", "nu", "nu_max", or None outside the moments
  value: np.ndarray


def _leaves(tree: Any) -> dict[str, Leaf]:
  """Each leaf of a decoded tree by its path, flat buffers seen as their trees."""
  is_flat = lambda x: isinstance(x, FlatParams)  # noqa: E731
  tree = jax.tree.map(lambda x: x.tree() if is_flat(x) else x, tree, is_leaf=is_flat)
  found = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = {getattr(key, "name", getattr(key, "key", None)) for key in path}
    field = next((name for name in MOMENTS if name in names), None)
    found[jax.tree_util.keystr(path)] = Leaf(field, np.asarray(leaf))
  return found


def _ulps(error: np.ndarray, *operands: Any) -> np.ndarray:
  """``|error|`` in units in the last place of the largest float32 operand, elementwise."""
  scale = functools.reduce(np.maximum, [np.abs(np.float32(x)) for x in operands])
  return np.abs(error) / np.spacing(scale)


@functools.cache
def _rounding(storage: str, signed: bool) -> tuple[float, float]:
  """``(rho, phi)``: a stored moment's relative rounding and its smallest code (of the maximum)."""
  fmt = STORAGES[storage]
  if not isinstance(fmt, ao.Quantized):
    return float(jnp.finfo(fmt).eps) / 2, 0.0
  like = quantized.zeros(jnp.zeros(4096), dataclasses.replace(fmt, min_size=0), signed=signed)
  # Every code at scale 1: the bytes count through all 256 values (both nibbles at 4 bits).
  codes = (np.arange(like.codes.size) % 256).astype(np.uint8).reshape(like.codes.shape)
  values = np.abs(quantized.decode(dataclasses.replace(like, codes=codes, scales=like.scales + 1)))
  return quantized.relative_error(like), float(values[values > 0].min())


def _allowed(storage: str, leaf: Leaf, before: np.ndarray) -> np.ndarray:
  """Elementwise, how far a stored leaf may be from the twin's float32 ``leaf``: one rounding."""
  fmt, want = STORAGES[storage], leaf.value
  rho, phi = 0.0, 0.0
  if leaf.field is not None and not (isinstance(fmt, ao.Quantized) and want.size < fmt.min_size):
    rho, phi = _rounding(storage, leaf.field == "mu")
  # Of the largest value, and a little more: a block's bfloat16 scale may round up (2^-8).
  floor = phi * np.max(np.abs(want), initial=0) * (1 + 2**-7)
  operands = np.maximum(np.abs(want), np.abs(before)).astype(np.float32)
  return rho * np.abs(want) + floor + ULPS * np.spacing(operands)


class Failures:
  """What failed, by subject (a leaf), with the worst measure and the steps where it failed."""

  def __init__(self) -> None:
    self.found: dict[str, tuple[float, list[int], str]] = {}

  def add(self, step: int, subject: str, measure: float, unit: str) -> None:
    worst, steps, _ = self.found.get(subject, (measure, [], unit))
    self.found[subject] = (max(worst, measure), [*steps, step], unit)

  def lines(self) -> list[str]:
    return [
      f"{subject}: off by up to {worst:.3g} {unit} (steps {', '.join(map(str, steps))})"
      for subject, (worst, steps, unit) in self.found.items()
    ]


def against_twin(case: Case, run: Run) -> list[str]:
  """Each step of a 16-bit or low-bit case against one float32 step from its own state."""
  step = _twin_step(case.optimizer, case.wrapper)
  failures = Failures()
  for t in range(1, STEPS + 1):
    before = _decoded(run.states[t - 1])
    want_params, want_state = jax.device_get(step(run.params[t - 1], before, run.grads[t - 1]))
    got, want, old = (_leaves(x) for x in (run.params[t], want_params, run.params[t - 1]))
    for path, leaf in want.items():
      ulps = _ulps(got[path].value - leaf.value, leaf.value, old[path].value, LEARNING_RATE)
      if not np.max(ulps, initial=0) <= ULPS:
        failures.add(t, f"params{path}", np.max(ulps), f"ulp from the float32 twin's (> {ULPS})")
    got, want, old = (_leaves(x) for x in (_decoded(run.states[t]), want_state, before))
    if got.keys() != want.keys():
      return [
        f"step {t}: the state's leaves are not the twin's: {sorted(got.keys() ^ want.keys())}"
      ]
    for path, leaf in want.items():
      if jnp.issubdtype(leaf.value.dtype, jnp.inexact):
        allowed = _allowed(case.storage, leaf, old[path].value)
        ratio = np.max(np.abs(got[path].value - leaf.value) / allowed, initial=0)
      else:
        ratio = 0.0 if np.array_equal(got[path].value, leaf.value) else np.inf
      if not ratio <= 1:
        failures.add(t, f"state{path}", ratio, "times one rounding from the float32 twin's")
  return failures.lines()


@functools.cache
def _twin_step(name: str, wrapper: str) -> Any:
  """One jitted step of ``name`` in ``wrapper`` with float32 storage."""
  tx = optimizer(name, "float32", wrapper)
  return jax.jit(lambda p, s, g: update_and_apply(tx, g, s, p))


def against_optax(case: Case, run: Run) -> list[str]:
  """A float32 case against the same case with optax's optimizer, step by step."""
  reference, _ = train(case, optimizer(case.optimizer, case.storage, case.wrapper, reference=True))
  failures = Failures()
  for t in range(STEPS + 1):
    ours, theirs = (_decoded(x.states[t]) for x in (run, reference))
    pairs = [("params", run.params[t], reference.params[t])] + [
      (key, optax.tree_utils.tree_get(ours, key), optax.tree_utils.tree_get(theirs, key))
      for key in (*MOMENTS, "acc_grads")
      if optax.tree_utils.tree_get(theirs, key) is not None
    ]
    for key, got, want in pairs:
      for (path, a), b in zip(_leaves(got).items(), _leaves(want).values(), strict=True):
        same = np.array_equal(a.value, b.value) and a.value.dtype == b.value.dtype
        off = 0.0 if same else np.max(_ulps(a.value - b.value, a.value, b.value), initial=np.inf)
        if not (same if EXACT else off <= ULPS):
          failures.add(t, f"{key}{path}", off, f"ulp from optax's ({a.value.dtype})")
  return failures.lines()


def skipped_step(case: Case, run: Run) -> list[str]:
  """The NaN step of ``apply_if_finite``: params and stored moments bit-identical."""
  del case
  t = NAN_STEP
  if not any(np.isnan(g).any() for g in jax.tree.leaves(run.grads[t - 1])):
    return [f"step {t}: the gradient holds no NaN"]
  trees = [(run.params[t], run.params[t - 1], "params")] + [
    (*(optax.tree_utils.tree_get(run.states[s], key) for s in (t, t - 1)), key) for key in MOMENTS
  ]
  return [
    f"step {t}: a non-finite gradient changed the {key}"
    for after, before, key in trees
    if not all(
      np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True)
    )
  ]


def _readings(state: Any) -> dict[str, np.ndarray]:
  """``ao.diagnostics(state)`` as NumPy arrays, called eagerly.

  Jitted, it would compile once per form of the state, which costs more than the
  case's steps; tests/test_diagnostics.py checks the jitted reader.
  """
  return {key: np.asarray(value) for key, value in ao.diagnostics(state).items()}


def reader(case: Case, run: Run, *, workdir: pathlib.Path) -> list[str]:
  """``ao.diagnostics`` on the case's reader form equals it on the live state, and is right."""
  if case.reader == "nnx_state":
    form = run.nnx_state()
  elif case.reader == "checkpoint":
    save_checkpoint(workdir / case.id, run.saved)
    with ocp.StandardCheckpointer() as checkpointer:
      form = checkpointer.restore((workdir / case.id).resolve())
  else:
    form = run.live_state
  live, got = _readings(run.live_state), _readings(form)
  failures = [] if live.keys() == got.keys() else [f"keys {live.keys() ^ got.keys()} differ"]
  failures += [
    f"{key} is {got[key]} on the {case.reader} form, {live[key]} live"
    for key in live.keys() & got.keys()
    if not np.array_equal(got[key], live[key])
  ]
  updates = STEPS // 2 if case.wrapper == "multisteps" else STEPS - (case.wrapper == "if_finite")
  alpha = SCHEDULE(updates - 1) if case.wrapper == "inject" else LEARNING_RATE
  expected = {"alpha": alpha, "bias_correction_mu": 1 - 0.9**updates}
  for key, want in expected.items():
    if not np.isclose(live.get(key, np.nan), want, rtol=1e-6, atol=0):
      failures.append(f"{key} reads {live.get(key)} after {updates} updates, not {want}")
  if not all(np.all(np.isfinite(v)) for v in live.values()):
    failures.append(f"readings not finite: {live}")
  return [f"reader {case.reader}: {failure}" for failure in failures]


def layout_kept(
  case: Case, run: Run, *, where: Layout, tx: optax.GradientTransformation
) -> list[str]:
  """On 8 devices: params and moments keep their split; the optimizer step gathers nothing."""
  failures = []
  shardings = jax.tree.leaves(where.shardings(case.path))
  for p, s in zip(jax.tree.leaves(run.live_params), shardings, strict=True):
    if not p.sharding.is_equivalent_to(s, p.ndim):
      failures.append(f"params of shape {p.shape} moved from {s.spec} to {p.sharding}")
  for key in MOMENTS:
    moments = optax.tree_utils.tree_get(run.pure_state, key)
    if moments is None:
      continue
    leaves = jax.tree.leaves(moments, is_leaf=quantized.is_quantized)
    for m, p in zip(leaves, jax.tree.leaves(run.live_params), strict=True):
      stored = m.codes if quantized.is_quantized(m) else m
      if p.sharding.is_fully_replicated:
        continue
      if stored.sharding.is_fully_replicated or not (
        quantized.is_quantized(m) or stored.sharding.is_equivalent_to(p.sharding, p.ndim)
      ):
        failures.append(f"{key} of a {p.shape} param split {p.sharding.spec} is {stored.sharding}")
  with where.context():
    step = jax.jit(lambda g, s, p: update_and_apply(tx, g, s, p))
    text = step.lower(run.live_params, run.pure_state, run.live_params).compile().as_text()
  if "all-gather" in text:
    failures.append(f"the optimizer step gathers: {text.count('all-gather')} all-gather in its HLO")
  return [f"layout {case.layout}: {failure}" for failure in failures]


def _describe(error: BaseException) -> str:
  """An exception in a line or two, with the one it happened while handling (orbax nests them)."""
  text = f"{type(error).__name__}: {str(error)[:1000]}"
  cause = error.__cause__ or error.__context__
  return text if cause is None else f"{text} (while handling {_describe(cause)})"


def check(case: Case, workdir: pathlib.Path) -> None:
  """Trains ``case`` and checks it; raises ``AssertionError`` naming everything that failed."""
  tx = optimizer(case.optimizer, case.storage, case.wrapper)
  run, where = train(case, tx)
  checks = [against_optax if case.storage == "float32" else against_twin]
  checks += [skipped_step] if case.wrapper == "if_finite" else []
  checks += [functools.partial(reader, workdir=workdir)]
  checks += [functools.partial(layout_kept, where=where, tx=tx)] if where.mesh else []
  failures = [] if run.compiles == 1 else [f"the step compiled {run.compiles} times"]
  for check_one in checks:
    try:
      failures += check_one(case, run)
    except Exception as error:  # the other checks still run
      failures.append(f"{getattr(check_one, 'func', check_one).__name__}: {_describe(error)}")
  assert not failures, f"{case.id}:\n" + "\n".join(failures[:20])


def main() -> None:
  """Checks every 8-device case; prints ``{case id: {"ok", "message", "seconds"}}`` as JSON."""
  assert jax.device_count() == 8, f"expected 8 devices, got {jax.device_count()}"
  workdir = pathlib.Path(sys.argv[1])
  results = {}
  for case in CASES:
    if case.devices != 8:
      continue
    print(f"matrix_checks: checking {case.id}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
      check(case, workdir)
      ok, message = True, ""
    except Exception as error:  # each case's failure is reported, not raised
      ok, message = False, _describe(error)[:4000]
    results[case.id] = {"ok": ok, "message": message, "seconds": time.perf_counter() - start}
  print(json.dumps(results))


if __name__ == "__main__":
  main()
