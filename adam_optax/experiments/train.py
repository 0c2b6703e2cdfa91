"""The training loop: a whole grid of runs of one problem and optimizer as one program.

A *run* is one seed and one setting of the injected hyper-parameters (the
learning rate; in the bias-correction study also ``b1`` and ``b2``). All runs
of a :class:`Grid` train at once: the step is :func:`jax.vmap`-ed over the
runs' parameters, optimizer states, keys and hyper-parameters, and
:func:`jax.lax.scan`-ned over a chunk of steps inside one :func:`jax.jit`.
The Python loop only walks over a few chunks (for the progress bar, and the
whole-training-set loss after the first and the last), reusing the same
compiled program. Minibatch orders are drawn with NumPy beforehand
(:func:`data.minibatches`); the step draws only its dropout or VAE noise.

Per step, every metric in ``metrics`` is recorded for every run (by default
only ``"train_loss"``, the minibatch loss); a metric is a function of the
:class:`StepInfo`, so more per-step diagnostics need no change here. At the
end, the test set is evaluated at the last iterate and, for each entry of
``evaluations``, at the parameters it derives from a run's final parameters
and optimizer state (e.g. their moving average kept in the optimizer state).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from adam_optax.experiments.data import Dataset, minibatches, standardize
from adam_optax.experiments.optimizers import Factory, injected
from adam_optax.experiments.problems import Problem

# The Python loop over chunks of steps, each one call of the compiled program.
DEFAULT_CHUNKS = 10
MIN_CHUNK_STEPS = 10
# Runs evaluated at once on a whole data set (bounds the memory of the evaluation).
EVALUATION_BATCH = 4


class Grid(NamedTuple):
  """The runs of one program, flattened: run ``r`` has ``seeds[r]`` and ``hyperparams[k][r]``.

  Attributes:
    seeds: the seed of each run, int.
    hyperparams: each injected hyper-parameter's value in each run.
  """

  seeds: np.ndarray
  hyperparams: dict[str, np.ndarray]

  @property
  def size(self) -> int:
    """The number of runs."""
    return len(self.seeds)


def make_grid(seeds: Sequence[int], **axes: Sequence[float]) -> Grid:
  """The Cartesian product of ``seeds`` and each hyper-parameter axis.

  Examples:
    >>> grid = make_grid([0, 1], learning_rate=[0.1, 0.01])
    >>> grid.seeds.tolist(), grid.hyperparams["learning_rate"].tolist()
    ([0, 0, 1, 1], [0.1, 0.01, 0.1, 0.01])

  Args:
    seeds: the seeds.
    **axes: the values of each hyper-parameter, by name.

  Returns:
    The :class:`Grid` of every combination, seeds varying slowest.

  References:
    Kingma & Ba, 2015, section 6 (a sweep per optimizer, the best one kept).
  """
  combos = list(itertools.product(seeds, *axes.values()))
  seed_column, *columns = zip(*combos, strict=True)
  hyperparams = {
    name: np.asarray(column, np.float32) for name, column in zip(axes, columns, strict=True)
  }
  return Grid(np.asarray(seed_column, np.int32), hyperparams)


class StepInfo(NamedTuple):
  """What a per-step metric can look at (one run, one step).

  Attributes:
    step: the step index, from 0.
    loss: the minibatch loss at ``params``.
    params: the parameters before the step.
    grads: the gradient of ``loss``.
    updates: the optimizer's updates.
    opt_state: the optimizer state after the step.
  """

  step: chex.Array
  loss: chex.Array
  params: chex.ArrayTree
  grads: chex.ArrayTree
  updates: chex.ArrayTree
  opt_state: optax.OptState


MetricFn = Callable[[StepInfo], chex.Array]
DEFAULT_METRICS: Mapping[str, MetricFn] = {"train_loss": lambda info: info.loss}
# The parameters to evaluate, from one run's final parameters and optimizer state.
ParamsFn = Callable[[chex.ArrayTree, optax.OptState], chex.ArrayTree]


class RunState(NamedTuple):
  """The carry of one run: parameters, optimizer state and its training key."""

  params: chex.ArrayTree
  opt_state: optax.OptState
  key: chex.Array


class TrainResult(NamedTuple):
  """Everything recorded for a grid; arrays have the runs on axis 0.

  Attributes:
    curves: each per-step metric, shape ``(runs, steps)``.
    checkpoint_steps: the step counts at which the whole training set was
      evaluated: after the first chunk (the paper's figure 4 shows the loss
      early as well as at the end) and after the last, shape ``(1 or 2,)``.
    checkpoint_losses: the whole-training-set loss there, ``(runs, 1 or 2)``.
    train_metrics: the problem's metrics on the full training set at the end.
    test_metrics: the problem's metrics on the test set at the end.
    evaluations: for each of ``train``'s ``evaluations``, by name, the
      problem's metrics on the test set at the parameters it gives.
  """

  curves: dict[str, np.ndarray]
  checkpoint_steps: np.ndarray
  checkpoint_losses: np.ndarray
  train_metrics: dict[str, np.ndarray]
  test_metrics: dict[str, np.ndarray]
  evaluations: dict[str, dict[str, np.ndarray]]


def _graphdef(problem: Problem) -> nnx.GraphDef:
  return nnx.split(nnx.eval_shape(lambda: problem.make_model(nnx.Rngs(0))))[0]


def _take(x: chex.ArrayTree, rows: jax.Array) -> chex.ArrayTree:
  """The examples ``rows`` of inputs ``x`` (an array, or a pytree such as a bag of words)."""
  return jax.tree.map(lambda leaf: leaf[rows], x)


@functools.partial(jax.jit, static_argnames="problem")
def _init_models(problem: Problem, seeds: jax.Array) -> tuple[chex.ArrayTree, jax.Array]:
  """Parameters and training keys of each run: a function of the seed alone.

  So runs with the same seed start from the same parameters whatever the
  optimizer (and see the same minibatches, :func:`data.minibatches`); and one
  compiled program serves every optimizer of a problem.
  """

  def one(seed: jax.Array) -> tuple[chex.ArrayTree, jax.Array]:
    # XLA's own bit generator ("rbg"): the same quality of randomness, and on CPU
    # about half the compile time of threefry for the initializers.
    init_key, train_key = jax.random.split(jax.random.key(seed, impl="rbg"))
    return nnx.state(problem.make_model(nnx.Rngs(init_key))), train_key

  return jax.vmap(one)(seeds)


@functools.partial(jax.jit, static_argnames=("factory", "decay"))
def _init_optimizers(
  factory: Factory, decay: bool, params: chex.ArrayTree, hyper: dict
) -> optax.OptState:
  return jax.vmap(lambda p, hp: injected(factory, decay=decay, **hp).init(p))(params, hyper)


@functools.partial(jax.jit, static_argnames=("problem", "factory", "metrics", "length"))
def _run_chunk(
  problem: Problem,
  factory: Factory,
  metrics: tuple[tuple[str, MetricFn], ...],
  length: int,
  states: RunState,
  hyper: dict,
  start: jax.Array,
  batches: jax.Array,
  x: jax.Array,
  y: jax.Array,
) -> tuple[RunState, dict[str, jax.Array]]:
  graphdef = _graphdef(problem)

  def step(
    state: RunState, t: jax.Array, batch: jax.Array, hp: dict
  ) -> tuple[RunState, dict[str, jax.Array]]:
    noise_key = jax.random.fold_in(state.key, t)  # dropout, or the VAE's sample

    def loss_fn(params: chex.ArrayTree) -> jax.Array:
      model = nnx.merge(graphdef, params)
      return problem.loss(model, _take(x, batch), y[batch], nnx.Rngs(noise_key))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    tx = injected(factory, decay=problem.decay_learning_rate, **hp)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    info = StepInfo(t, loss, state.params, grads, updates, opt_state)
    new_state = RunState(optax.apply_updates(state.params, updates), opt_state, state.key)
    return new_state, {name: fn(info) for name, fn in metrics}

  def one(
    state: RunState, run_batches: jax.Array, hp: dict
  ) -> tuple[RunState, dict[str, jax.Array]]:
    steps = (start + jnp.arange(length), run_batches)
    return jax.lax.scan(lambda s, xs: step(s, *xs, hp), state, steps)

  return jax.vmap(one)(states, batches, hyper)


@functools.partial(jax.jit, static_argnames="problem")
def _evaluate(problem: Problem, params: chex.ArrayTree, x: jax.Array, y: jax.Array) -> dict:
  graphdef = _graphdef(problem)
  return jax.lax.map(
    lambda p: dict(problem.evaluate(nnx.merge(graphdef, p), x, y)),
    params,
    batch_size=EVALUATION_BATCH,
  )


def chunk_count(steps: int, at_most: int) -> int:
  """The number of equal chunks to split ``steps`` into.

  The largest divisor of ``steps`` not above ``at_most`` that leaves chunks
  of at least :data:`MIN_CHUNK_STEPS` steps (or 1): equal chunks share one
  compiled program, and each call does enough work to hide its dispatch.

  Examples:
    >>> chunk_count(1000, 10), chunk_count(600, 7), chunk_count(50, 10), chunk_count(7, 10)
    (10, 6, 5, 1)
  """
  fits = range(1, min(steps // MIN_CHUNK_STEPS, at_most) + 1)
  return max((d for d in fits if steps % d == 0), default=1)


def train(
  problem: Problem,
  factory: Factory,
  grid: Grid,
  dataset: Dataset,
  steps: int,
  *,
  metrics: Mapping[str, MetricFn] = DEFAULT_METRICS,
  evaluations: Mapping[str, ParamsFn] = MappingProxyType({}),
  chunks: int = DEFAULT_CHUNKS,
  on_chunk: Callable[[], Any] | None = None,
) -> TrainResult:
  """Trains every run of ``grid`` on ``problem`` with ``factory``, as one program.

  Examples:
    >>> from adam_optax.experiments import data, optimizers, problems
    >>> digits = data.load_digits()
    >>> logreg = problems.PROBLEMS["logreg"].bind((8, 8, 1), 10, paper_scale=False)
    >>> grid = make_grid([0, 1], learning_rate=[0.1])
    >>> result = train(logreg, optimizers.sgd_nesterov, grid, digits, steps=20, chunks=2)
    >>> result.curves["train_loss"].shape, result.checkpoint_steps.tolist()
    ((2, 20), [10, 20])
    >>> bool(result.test_metrics["accuracy"].min() > 0.8)
    True

  Args:
    problem: the model, loss and evaluation, bound to the data (:meth:`Problem.bind`).
    factory: the optimizer factory; its keyword hyper-parameters are the
      grid's, injected as arrays (:func:`optimizers.injected`).
    grid: the runs: seeds and hyper-parameter values.
    dataset: the raw split (standardized here if the problem asks for it).
    steps: training steps per run.
    metrics: the per-step metrics to record, by name.
    evaluations: more parameters to evaluate on the test set at the end, by
      name: each a function of one run's final parameters and optimizer state.
    chunks: at most this many chunks of steps (see :func:`chunk_count`).
    on_chunk: called after each chunk (e.g. to advance a progress bar).

  Returns:
    The :class:`TrainResult`, as NumPy arrays.

  References:
    Kingma & Ba, 2015, section 6.
  """
  data = standardize(dataset) if problem.standardized else dataset
  x_train, y_train = jax.tree.map(jnp.asarray, data.x_train), jnp.asarray(data.y_train)
  hyper = {name: jnp.asarray(values) for name, values in grid.hyperparams.items()}
  metric_items = tuple(metrics.items())
  n_chunks = chunk_count(steps, chunks)
  length = steps // n_chunks
  params, keys = _init_models(problem, jnp.asarray(grid.seeds))
  opt_states = _init_optimizers(factory, problem.decay_learning_rate, params, hyper)
  states = RunState(params, opt_states, keys)
  orders = {
    seed: minibatches(seed, len(data.y_train), steps, problem.batch_size)
    for seed in np.unique(grid.seeds).tolist()
  }
  batches = np.stack([orders[seed] for seed in grid.seeds.tolist()])
  curves: list[dict[str, jax.Array]] = []
  checkpoints: list[dict[str, jax.Array]] = []
  checkpoint_steps: list[int] = []
  for chunk in range(n_chunks):
    start = chunk * length
    states, chunk_curves = _run_chunk(
      problem,
      factory,
      metric_items,
      length,
      states,
      hyper,
      jnp.asarray(start, jnp.int32),
      jnp.asarray(batches[:, start : start + length]),
      x_train,
      y_train,
    )
    curves.append(chunk_curves)
    if chunk in (0, n_chunks - 1):
      checkpoints.append(_evaluate(problem, states.params, x_train, y_train))
      checkpoint_steps.append(start + length)
    jax.block_until_ready(states)
    if on_chunk is not None:
      on_chunk()
  x_test, y_test = jax.tree.map(jnp.asarray, data.x_test), jnp.asarray(data.y_test)
  test = _evaluate(problem, states.params, x_test, y_test)
  evaluated = {
    name: _evaluate(problem, jax.vmap(params_fn)(states.params, states.opt_state), x_test, y_test)
    for name, params_fn in evaluations.items()
  }
  return TrainResult(
    curves={
      name: np.concatenate([np.asarray(c[name]) for c in curves], axis=1) for name in metrics
    },
    checkpoint_steps=np.asarray(checkpoint_steps),
    checkpoint_losses=np.stack([np.asarray(c["loss"]) for c in checkpoints], axis=1),
    train_metrics={k: np.asarray(v) for k, v in checkpoints[-1].items()},
    test_metrics={k: np.asarray(v) for k, v in test.items()},
    evaluations={
      name: {k: np.asarray(v) for k, v in values.items()} for name, values in evaluated.items()
    },
  )


def step_flops(problem: Problem, dataset: Dataset) -> float:
  """The floating-point operations of one run's gradient on one minibatch, by XLA's count.

  Lowered (not compiled) once per problem, and compiled where the backend
  counts nothing before compiling (XLA:GPU); the progress bar of ``compare``
  weighs each chunk of steps by it, so that its ETA accounts for problems
  whose steps cost very different amounts.

  Examples:
    >>> from adam_optax.experiments import data, problems
    >>> logreg = problems.PROBLEMS["logreg"].bind((8, 8, 1), 10, paper_scale=False)
    >>> step_flops(logreg, data.load_digits()) > 128 * 64 * 10
    True
  """
  graphdef, params = nnx.split(nnx.eval_shape(lambda: problem.make_model(nnx.Rngs(0))))
  rows = np.arange(problem.batch_size) % len(dataset.y_train)
  x = _take(jax.tree.map(jnp.asarray, dataset.x_train), jnp.asarray(rows))
  y = jnp.asarray(dataset.y_train[rows])

  def loss(params: chex.ArrayTree) -> jax.Array:
    return problem.loss(nnx.merge(graphdef, params), x, y, nnx.Rngs(0))

  def flops(cost: Any) -> float:
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    return float(cost.get("flops", 0.0))

  lowered = jax.jit(jax.grad(loss)).lower(params)
  counted = flops(lowered.cost_analysis()) or flops(lowered.compile().cost_analysis())
  return max(1.0, counted)
