"""The data each problem of ``adam-optax compare`` trains on.

``--data`` first, then the bundled images ``--dataset`` names, then each
problem's default (:func:`load_datasets`).
"""

from __future__ import annotations

import argparse

from adam_optax.experiments import bow, data, loaders
from adam_optax.experiments.problems import PROBLEMS


def _user_data(args: argparse.Namespace) -> dict[str, data.Dataset | None]:
  """The data sets found in ``--data``, by kind: ``"images"``, ``"cifar"``, ``"bow"``."""
  folder = args.data
  if folder is None:
    return {}
  if not folder.is_dir():
    raise loaders.DataError(folder, "not a folder")
  kinds = {PROBLEMS[name].data for name in args.problems}
  found = {
    "images": loaders.load_idx(folder),
    "cifar": loaders.load_cifar10(folder) if "cnn" in kinds else None,
    "bow": loaders.load_bag_of_words(folder) if "bow" in kinds else None,
  }
  if not any(found.values()):
    raise loaders.DataError(folder, "holds no IDX, CIFAR-10 or svmlight files (see --help)")
  return found


def load_datasets(args: argparse.Namespace) -> dict[str, data.Dataset]:
  """The data each chosen problem trains on, by problem name.

  ``--data`` first (CIFAR-10 before IDX images for the CNN), then the
  bundled images that ``--dataset`` names, or by default each problem's
  :attr:`~Problem.bundled` (MNIST for all at ``--paper-scale``; the digits
  for all with ``--quick``); the bag of words is synthetic unless given.

  Raises:
    loaders.DataError: when a file of ``--data`` is missing a part or malformed.
  """
  user = _user_data(args)
  bundled = {"mnist": data.load_mnist, "digits": data.load_digits}
  loaded: dict[str, data.Dataset] = {}
  out: dict[str, data.Dataset] = {}
  for problem in (PROBLEMS[name] for name in args.problems):
    if problem.data == "bow":
      chosen = user.get("bow") or loaded.get("bow") or bow.synthetic_reviews()
      loaded["bow"] = chosen
    else:
      chosen = (user.get("cifar") if problem.data == "cnn" else None) or user.get("images")
    if chosen is None:
      default = "digits" if args.quick else "mnist" if args.paper_scale else problem.bundled
      name = args.dataset or default
      chosen = loaded[name] = loaded.get(name) or bundled[name]()
    out[problem.name] = chosen
  return out
