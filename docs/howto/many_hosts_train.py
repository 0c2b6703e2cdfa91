"""The program every process of docs/howto/many_hosts.md runs: ZeRO-1 Adam, then a checkpoint.

Run by ``adam_optax.distributed.launch`` (or a cluster's launcher) as
``python many_hosts_train.py CHECKPOINT_DIR`` in every process.
"""

import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adam_optax as ao
from adam_optax import distributed
from adam_optax.checkpoint import save_checkpoint
from adam_optax.sharding import zero1_shardings

distributed.initialize()  # before any other JAX call; the timeouts are the defaults
mesh = jax.make_mesh((jax.device_count(),), ("data",))  # every device of every process
replicated, batch_split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def loss(params, x, y):
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((hidden @ params["w2"] + params["b2"] - y) ** 2)


def local_batch(step, rows_per_process=32):
  """This process's rows of the global batch: here drawn, in a real run read from its files."""
  rng = np.random.default_rng([step, jax.process_index()])
  x = rng.normal(size=(rows_per_process, 16)).astype(np.float32)
  return x, np.tanh(x[:, :4])


tx = ao.adam(learning_rate=1e-2)
keys = jax.random.split(jax.random.key(0), 2)
with jax.set_mesh(mesh):
  params = jax.device_put(
    {
      "w1": jax.random.normal(keys[0], (16, 8)) / 4,
      "b1": jnp.zeros(8),
      "w2": jax.random.normal(keys[1], (8, 4)) / 4,
      "b2": jnp.zeros(4),
    },
    replicated,
  )
  state_shardings = zero1_shardings(jax.eval_shape(tx.init, params), mesh)
  opt_state = jax.jit(tx.init, out_shardings=state_shardings)(params)

  @partial(jax.jit, out_shardings=(replicated, state_shardings, replicated))
  def train_step(params, opt_state, x, y):
    value, grads = jax.value_and_grad(loss)(params, x, y)
    grads = jax.sharding.reshard(grads, optax.tree_utils.tree_get(state_shardings, "mu"))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  for step in range(20):
    x, y = (jax.make_array_from_process_local_data(batch_split, a) for a in local_batch(step))
    params, opt_state, value = train_step(params, opt_state, x, y)
    if step in (0, 19) and jax.process_index() == 0:
      print(f"step {step}: loss {float(value):.4f}")

  # Every process writes its own shards of the one checkpoint.
  save_checkpoint(sys.argv[1], {"params": params, "opt_state": opt_state})

mu = opt_state[0].mu["w1"]
held = sum(shard.data.nbytes for shard in mu.addressable_shards)
print(f"process {jax.process_index()} holds {held} of the {mu.nbytes} bytes of mu['w1']")
