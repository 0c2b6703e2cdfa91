"""The paper's experiments (section 6), on bundled data or a user's own files.

Used by ``adam-optax compare`` and by the notebooks, so both run the same code:

* :mod:`~adam_optax.experiments.data`: the bundled MNIST subset and
  scikit-learn's digits, a fixed stratified split, standardization (no
  download, ever);
* :mod:`~adam_optax.experiments.bow`: the sparse bag-of-words problem's
  documents (synthetic unless given);
* :mod:`~adam_optax.experiments.loaders`: ``--data``: IDX, CIFAR-10 and
  svmlight files, with errors that name the file;
* :mod:`~adam_optax.experiments.models`: the Flax NNX models of figures 1-4;
* :mod:`~adam_optax.experiments.problems`: each model with its loss,
  evaluation, data and the paper's protocol;
* :mod:`~adam_optax.experiments.optimizers`: the optimizers compared and their
  log-spaced learning-rate grids;
* :mod:`~adam_optax.experiments.train`: the whole grid of seeds x
  hyper-parameters of one problem and optimizer as one vmapped, jit-compiled
  program;
* :mod:`~adam_optax.experiments.claims`: the paper's claims, split into
  parts, each paraphrased with its section and figure, and the margins;
* :mod:`~adam_optax.experiments.comparisons` and
  :mod:`~adam_optax.experiments.stability`: two settings compared seed by
  seed with a margin; figure 4's step sizes counted across the sweep;
* :mod:`~adam_optax.experiments.report`,
  :mod:`~adam_optax.experiments.verdicts` and
  :mod:`~adam_optax.experiments.plots`: ``results.json``, ``results.md`` (with
  a verdict on each part of each of the paper's claims) and the figures;
* :mod:`~adam_optax.experiments.diagnostics`: what ``--diagnostics`` records
  (the SNR and the step size against its bounds) and evaluates (the averaged
  parameters);
* :mod:`~adam_optax.experiments.sources`,
  :mod:`~adam_optax.experiments.programs`,
  :mod:`~adam_optax.experiments.progress`,
  :mod:`~adam_optax.experiments.flags` and
  :mod:`~adam_optax.experiments.compare`: the ``compare`` subcommand (which
  data, which programs, the progress bar, the flags, the run).
"""
