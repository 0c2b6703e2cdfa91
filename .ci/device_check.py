"""The Python half of ``.ci/device-check``: the machine's report, and a pytest plugin.

``python .ci/device_check.py`` prints what the figures of a device check are
tied to: the date, the commit, the accelerator, the versions, and the
packages of the ``test`` extra that this machine lacks (a lent GPU machine has
JAX, optax, chex, flax and torch, but no network to install the rest).

As a pytest plugin (``pytest -p device_check``, with ``.ci`` on the path), it
turns a test that fails *only* because it imports a module this machine lacks
(``ModuleNotFoundError`` naming a package of the ``test`` extra that is not
installed, also inside a doctest) into a skip that says so. Nothing else
changes: CI, which installs the whole extra, never loads it.
"""

from __future__ import annotations

import datetime
import doctest
import importlib.util
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Distributions whose import name is not their normalized name.
_IMPORT_NAMES = {
  "scikit-learn": "sklearn",
  "orbax-checkpoint": "orbax.checkpoint",
  "pytest-xdist": "xdist",
  "myst-parser": "myst_parser",
  "myst-nb": "myst_nb",
}
VERSIONS = ("jax", "jaxlib", "optax", "chex", "flax", "orbax-checkpoint", "numpy", "torch")
LOW_BIT = ("torchao", "bitsandbytes")


def _requirement_name(requirement: str) -> str:
  """``torch==2.13.0`` -> ``torch``; ``adam_optax[experiments]`` -> ``adam_optax``."""
  return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0]


def _extra(name: str, extras: dict[str, list[str]]) -> list[str]:
  """The distributions of ``extras[name]``, the package's own extras expanded."""
  found = []
  for requirement in extras[name]:
    if requirement.startswith("adam_optax["):
      for inner in requirement[len("adam_optax[") : requirement.index("]")].split(","):
        found += _extra(inner.strip(), extras)
    else:
      found.append(_requirement_name(requirement))
  return list(dict.fromkeys(found))


def missing_test_modules() -> dict[str, str]:
  """Import name -> distribution, for each package of the ``test`` extra not installed here.

  Empty where ``pyproject.toml`` cannot be read (Python 3.10 has no ``tomllib``).
  """
  try:
    import tomllib
  except ModuleNotFoundError:
    return {}
  with open(ROOT / "pyproject.toml", "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
  missing = {}
  for distribution in _extra("test", extras):
    module = _IMPORT_NAMES.get(distribution, distribution.replace("-", "_").lower())
    try:
      found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package of a dotted name is missing
      found = False
    if not found:
      missing[module] = distribution
  return missing


def _missing_module(error: BaseException, missing: dict[str, str]) -> str | None:
  """The missing module ``error`` is about, if it is a ``ModuleNotFoundError`` for one."""
  if isinstance(error, doctest.UnexpectedException):
    error = error.exc_info[1]
  if not isinstance(error, ModuleNotFoundError):
    return None
  for module in missing:
    named = error.name is not None and (error.name + ".").startswith(module.split(".")[0] + ".")
    if named or re.search(rf"\b{re.escape(module)}\b", str(error)):
      return module
  return None


def pytest_configure(config: pytest.Config) -> None:
  """Finds the missing packages once per process."""
  config.stash[_MISSING] = missing_test_modules()


_MISSING = pytest.StashKey[dict[str, str]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
  """Reports a failure caused by a package this machine lacks as a skip naming it."""
  report = yield
  if report.failed and call.excinfo is not None:
    missing = item.config.stash[_MISSING]
    module = _missing_module(call.excinfo.value, missing)
    if module is not None:
      report.outcome = "skipped"
      reason = f"Skipped: needs {missing[module]} (the test extra), which this machine lacks"
      report.longrepr = (str(item.path), item.location[1] or 0, reason)
  return report


def _command(*args: str) -> str | None:
  """The output of a command, or ``None`` where it is not there or fails."""
  if shutil.which(args[0]) is None:
    return None
  try:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True)
  except (subprocess.SubprocessError, OSError):
    return None
  return done.stdout.strip()


def _version(distribution: str) -> str:
  try:
    return metadata.version(distribution)
  except metadata.PackageNotFoundError:
    return "not installed"


def main() -> None:
  """Prints the machine's report (see the module's docstring)."""
  import jax

  # The commit named by whoever sent the tree wins: a lent machine's copy may hold a
  # .git of another commit (one run printed the session's base, not what it ran).
  commit = os.environ.get("DEVICE_CHECK_COMMIT")
  if commit is None:
    commit = _command("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = _command("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no")
    if commit is None:
      commit = "unknown (no git checkout here, no DEVICE_CHECK_COMMIT)"
    elif dirty:
      commit += " with uncommitted changes"
  print(f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
  print(f"commit: {commit}")
  print(f"host: {platform.node()}, {platform.machine()}, {os.cpu_count()} cores")
  print(f"python: {sys.version.split()[0]} at {sys.executable}")
  gpus = _command("nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv")
  print(f"nvidia-smi: {gpus.splitlines()[-1] if gpus else 'not available'}")
  devices = jax.devices()
  print(f"jax devices: {len(devices)} x {devices[0].device_kind} ({devices[0].platform})")
  print("versions: " + ", ".join(f"{d} {_version(d)}" for d in VERSIONS))
  print("low-bit anchors: " + ", ".join(f"{d} {_version(d)}" for d in LOW_BIT))
  missing = missing_test_modules()
  if missing:
    lacked = ", ".join(sorted(set(missing.values())))
    print(f"test extra missing here: {lacked} (tests that need them are skipped, saying so)")
  else:
    print("test extra: all installed")


if __name__ == "__main__":
  main()
