"""The paper's experiments on scikit-learn's bundled handwritten digits.

Used by ``adam-optax compare`` and by the notebooks, so both run the same code:

* :mod:`~adam_optax.experiments.data`: ``load_digits``, a fixed stratified
  split, standardization (no download, ever);
* :mod:`~adam_optax.experiments.models`: the Flax NNX models of figures 1-4;
* :mod:`~adam_optax.experiments.problems`: each model with its loss and
  evaluation;
* :mod:`~adam_optax.experiments.optimizers`: the optimizers compared, each with
  its learning-rate grid;
* :mod:`~adam_optax.experiments.train`: the whole grid of seeds x
  hyper-parameters of one problem and optimizer as one vmapped, jit-compiled
  program;
* :mod:`~adam_optax.experiments.report` and
  :mod:`~adam_optax.experiments.plots`: ``results.json``, ``results.md`` and
  the figures;
* :mod:`~adam_optax.experiments.diagnostics`: what ``--diagnostics`` records
  (the SNR and the step size against its bounds) and evaluates (the averaged
  parameters);
* :mod:`~adam_optax.experiments.compare`: the ``compare`` subcommand.
"""
