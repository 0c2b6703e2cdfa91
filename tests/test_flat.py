"""The flat fast path: layout, exactness against tree ao.adam, composition, memory, errors."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fresh_python import run_python
from matrix import optimizer, ours

import adam_optax as ao
from adam_optax.flat import FlatParams, flat_train_step, flatten_params, update_and_apply

STEPS = 200
LEARNING_RATE = 1e-2


def _tree(kind: str) -> dict:
  keys = iter(jax.random.split(jax.random.key(0), 8))

  def normal(shape, dtype=jnp.float32):
    return jax.random.normal(next(keys), shape).astype(dtype)

  if kind == "f32":
    return {"w": normal((7, 13)), "b": normal((13,)), "layers": [normal((3, 5, 2)), normal(())]}
  if kind == "mixed":
    return {"w": normal((33, 9)), "emb": normal((50, 4), jnp.bfloat16), "b": normal((9,))}
  if kind == "bf16":
    return {"w": normal((64, 31), jnp.bfloat16), "b": normal((31,), jnp.bfloat16)}
  return {"w": normal((10007,))}  # "long": one long leaf


def _ulps(a: jax.Array, b: jax.Array, *operands: jax.Array) -> jax.Array:
  """Largest |a - b| in units in the last place of the largest operand, elementwise.

  XLA:CPU contracts a multiply and an add into one fused multiply-add in some
  kernels and not in others, a difference of one rounding of the operands. An
  EMA such as 0.9 m + 0.1 g that nearly cancels makes that rounding many ulp
  of the small result, so the unit is the ulp of the operands.
  """
  dtype = jnp.dtype(a.dtype)
  scale = jnp.maximum(jnp.abs(a), jnp.abs(b)).astype(jnp.float32)
  for x in operands:
    scale = jnp.maximum(scale, jnp.abs(x).astype(jnp.float32))
  scale = jnp.maximum(scale, 1e-30)  # keeps the spacing a normal number (no flush to 0)
  spacing = jnp.finfo(dtype).eps * jnp.exp2(jnp.floor(jnp.log2(scale)))
  return jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)) / spacing, initial=0)


def _loss(tree):
  return sum(jnp.sum(jnp.sin(1.7 * x.astype(jnp.float32) + 0.3)) for x in jax.tree.leaves(tree))


def _gradients(params):
  """STEPS gradients per leaf: waves of growing amplitude."""
  steps = jnp.arange(STEPS, dtype=jnp.float32)[:, None]

  def leaf(x):
    waves = jnp.sin(0.37 * steps + 0.11 * jnp.arange(x.size)) * (1.0 + steps / 50.0)
    return waves.reshape(STEPS, *x.shape).astype(x.dtype)

  return jax.tree.map(leaf, params)


def _per_step_ulp(tx, params):
  """Runs STEPS tree steps; at each, also the flat step from the same params, grads
  and state; returns the largest distance of params, mu and nu per step, in ulp."""
  treedef = jax.tree.structure(params)
  layout = flatten_params(params).layout

  def like_params(x):
    return jax.tree.structure(x) == treedef

  def to_flat(state):
    """The tree state with its param-shaped parts flattened like the params."""
    return jax.tree.map(
      lambda x: layout.flatten(x) if like_params(x) else x, state, is_leaf=like_params
    )

  def tree_step(p, g, s):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  def body(carry, grads):
    (p, s), flat_grads = carry, flatten_params(grads)
    want = tree_step(p, grads, s)
    got = update_and_apply(tx, flat_grads, to_flat(s), flatten_params(p))
    lr = jnp.float32(LEARNING_RATE)  # Adam's step is about lr: the scale of a param's change
    leaves = zip(*map(jax.tree.leaves, (got[0].tree(), want[0], p)), strict=True)
    ulps = [_ulps(a, b, old, lr) for a, b, old in leaves]
    for k, power in (("mu", 1), ("nu", 2)):
      trees = (optax.tree_utils.tree_get(x, k) for x in (got[1], want[1], s))
      leaves = zip(*map(jax.tree.leaves, (next(trees).tree(), *trees, grads)), strict=True)
      ulps += [_ulps(a, b, old, jnp.abs(g.astype(jnp.float32)) ** power) for a, b, old, g in leaves]
    return want, jnp.max(jnp.stack(ulps))

  run = jax.jit(lambda p, gs: jax.lax.scan(body, (p, tx.init(p)), gs)[1])
  return np.asarray(run(params, _gradients(params)))


# Settings of the optimizers of tests/matrix.py; the clip is the matrix's wrapper.
SETTINGS = {
  "adam": lambda: ours("adam", LEARNING_RATE),
  "adam-f32-moments": lambda: ours(
    "adam", LEARNING_RATE, mu_dtype=jnp.float32, nu_dtype=jnp.float32
  ),
  "schedule": lambda: ours("adam", optax.cosine_decay_schedule(LEARNING_RATE, STEPS)),
  "adamw": lambda: ours("adamw", LEARNING_RATE, weight_decay=0.1),
  "amsgrad": lambda: ours("amsgrad", LEARNING_RATE),
  "clip-chain": lambda: optimizer("adam", "float32", "clip"),
}


@pytest.mark.parametrize(
  ("kind", "optimizer"),
  [
    ("f32", "adam"),
    ("mixed", "adam-f32-moments"),
    ("bf16", "adam-f32-moments"),
    ("long", "adam"),
    ("long", "schedule"),
    ("long", "adamw"),
    ("long", "amsgrad"),
    ("long", "clip-chain"),
  ],
)
def test_every_flat_step_is_within_4_ulp_of_tree_adam(kind, optimizer):
  ulps = _per_step_ulp(SETTINGS[optimizer](), _tree(kind))
  assert ulps.shape == (STEPS,)
  assert ulps.max() <= 4, ulps


def test_update_and_apply_is_update_then_apply_updates():
  tx = ao.adam(1e-3)
  params, grads = jnp.linspace(-1.0, 1.0, 10007), jnp.sin(jnp.arange(10007.0))
  state = tx.init(params)
  got = update_and_apply(tx, grads, state, params)
  updates, want_state = tx.update(grads, state, params)
  want = (optax.apply_updates(params, updates), want_state)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)


def test_inject_hyperparams_changes_the_learning_rate_between_steps():
  tx = optax.inject_hyperparams(ao.adam)(learning_rate=1e-2)
  tree = _tree("long")
  flat = flatten_params(tree)
  step = jax.jit(lambda p, g, s: update_and_apply(tx, g, s, p))
  tree_state, flat_state = tx.init(tree), tx.init(flat)
  for lr in (1e-2, 0.0, 3e-2):
    tree_state.hyperparams["learning_rate"] = jnp.asarray(lr)
    flat_state.hyperparams["learning_rate"] = jnp.asarray(lr)
    before = flat.tree()["w"]
    grads = jax.grad(_loss)(tree)
    tree, tree_state = step(tree, grads, tree_state)
    flat, flat_state = step(flat, flatten_params(grads), flat_state)
    assert _ulps(flat.tree()["w"], tree["w"], before) <= 4
    assert (lr == 0.0) == bool(jnp.all(flat.tree()["w"] == before))


def test_flatten_round_trips_and_groups_by_dtype():
  tree = {"a": jnp.ones((2, 3)), "b": [jnp.zeros(0), 2.0], "c": jnp.arange(4, dtype=jnp.bfloat16)}
  flat = flatten_params(tree, multiple_of=4)
  assert [(b.shape, b.dtype) for b in flat.buffers] == [((8,), jnp.float32), ((4,), jnp.bfloat16)]
  got = flat.tree()
  assert jax.tree.structure(got) == jax.tree.structure(tree)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(tree), strict=True):
    np.testing.assert_array_equal(a, jnp.asarray(b))
    assert a.dtype == jnp.asarray(b).dtype
  assert float(flat.buffers[0][-1]) == 0.0  # padding: 6 + 0 + 1 elements, then 1 zero


def test_state_is_a_plain_pytree_that_round_trips():
  tx = ao.adam(1e-3, mu_dtype=jnp.float32, nu_dtype=jnp.float32)
  flat = flatten_params(_tree("mixed"))
  state = tx.init(flat)
  leaves, treedef = jax.tree.flatten(state)
  assert all(isinstance(x, jax.Array) for x in leaves)
  again = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])
  assert jax.tree.structure(again) == jax.tree.structure(state)
  assert isinstance(again[0].mu, FlatParams)
  assert {b.dtype for b in again[0].nu.buffers} == {jnp.dtype(jnp.float32)}
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  assert "[0].mu.buffers[1]" in paths


def test_train_step_donates_and_matches_tree_adam():
  tx = ao.adam(1e-2)
  tree = _tree("f32")

  def loss(params, scale):
    return scale * _loss(params)

  step = flat_train_step(loss, tx)
  flat = flatten_params(tree)
  state = tx.init(flat)
  tree_state = tx.init(tree)
  for _ in range(3):
    old = flat
    flat, state, value = step(flat, state, 2.0)
    assert old.buffers[0].is_deleted()
    np.testing.assert_allclose(value, loss(tree, 2.0), rtol=1e-5)
    updates, tree_state = tx.update(jax.grad(loss)(tree, 2.0), tree_state, tree)
    tree = optax.apply_updates(tree, updates)
  for a, b in zip(jax.tree.leaves(flat.tree()), jax.tree.leaves(tree), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_train_step_with_aux():
  step = flat_train_step(lambda p: (jnp.sum(p["w"] ** 2), {"n": 1}), ao.adam(0.1), has_aux=True)
  flat = flatten_params({"w": jnp.ones(3)})
  flat, _, (value, aux) = step(flat, ao.adam(0.1).init(flat))
  assert float(value) == 3.0
  assert aux == {"n": 1}


SIZE = 1 << 16


def _full_size_copies(compiled) -> int:
  return sum(
    " copy(" in line and f"f32[{SIZE}]" in line for line in compiled.as_text().splitlines()
  )


def test_donated_step_needs_no_full_size_copy():
  tx = ao.adam(1e-3)
  params = jnp.zeros(SIZE)
  step = jax.jit(lambda p, g, s: update_and_apply(tx, g, s, p), donate_argnums=(0, 2))
  compiled = step.lower(params, params, tx.init(params)).compile()
  assert _full_size_copies(compiled) == 0
  stats = compiled.memory_analysis()
  assert stats.alias_size_in_bytes >= 3 * 4 * SIZE  # p, m, v updated in place
  assert stats.temp_size_in_bytes < 4 * SIZE


def test_train_step_needs_params_grads_and_state_only():
  tx = ao.adam(1e-3)
  flat = flatten_params({"w": jnp.zeros(SIZE)})
  step = flat_train_step(lambda p: jnp.sum(p["w"] ** 2), tx)
  compiled = step.lower(flat, tx.init(flat)).compile()
  stats = compiled.memory_analysis()
  assert stats.alias_size_in_bytes >= 3 * 4 * SIZE  # p, m, v updated in place
  # One full-size temporary, the gradient's worth (XLA:CPU may schedule it as a copy
  # of the params from which the gradient is computed).
  assert stats.temp_size_in_bytes < 4 * SIZE + 4096


def test_errors_are_clear():
  with pytest.raises(TypeError, match=r"\['b'\] is a str"):
    flatten_params({"a": jnp.ones(2), "b": "oops"})
  with pytest.raises(ValueError, match="multiple_of=0"):
    flatten_params({"a": jnp.ones(2)}, multiple_of=0)
  tx = ao.adam(1e-3)
  flat = flatten_params({"a": jnp.ones(3), "b": jnp.ones(2)})
  other = flatten_params({"a": jnp.ones(2), "b": jnp.ones(3)})
  with pytest.raises(ValueError, match=r"shapes \(3,\), \(2,\)"):
    update_and_apply(tx, other, tx.init(flat), flat)


SHARDED = textwrap.dedent(
  """
  import contextlib
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  import adam_optax as ao
  from adam_optax.flat import flat_train_step, flatten_params
  # Leaves of 3,000 and 37 elements: the buffer's 8 shards cut through both.
  tree = {"w": jnp.linspace(-1, 1, 3000).reshape(3, 1000), "b": jnp.linspace(0, 1, 37)}
  loss = lambda p: jnp.sum(jnp.sin(p["w"])) + jnp.sum(p["b"] ** 2)
  tx = ao.adam(1e-2)
  def train(mesh):
    flat = flatten_params(tree, multiple_of=8)
    if mesh is not None:
      flat = jax.device_put(flat, NamedSharding(mesh, P("d")))
    with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
      step = flat_train_step(loss, tx)
      state = tx.init(flat)
      for _ in range(5):
        flat, state, _ = step(flat, state)
    return flat, state
  want, _ = train(None)
  # Automatic axes, and explicit ones (jax.make_mesh's default), where a slice of a split
  # dimension must be a multiple of its shards.
  for mesh in (Mesh(np.array(jax.devices()), ("d",)), jax.make_mesh((8,), ("d",))):
    got, state = train(mesh)
    assert got.buffers[0].sharding.spec == P("d"), got.buffers[0].sharding
    assert state[0].mu.buffers[0].sharding.spec == P("d"), state[0].mu.buffers[0].sharding
    np.testing.assert_allclose(got.buffers[0], want.buffers[0], rtol=0, atol=1e-6)
  print("ok")
  """
)


def test_sharded_flat_buffers_equal_single_device():
  out = run_python(["-c", SHARDED], host_devices=8)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith("ok")
