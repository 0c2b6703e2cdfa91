"""Prints the pins of the minimum versions that pyproject.toml declares, for pip.

Each of ``[project] dependencies`` and of the extras in ``EXTRAS`` (those the
smoke test exercises: checkpoints) must be ``name>=version``; it becomes
``name==version``, and jax brings ``jaxlib`` at the same version. Exits
non-zero, naming the dependency, where a bound cannot be read.
"""

import pathlib
import re
import sys

import tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
EXTRAS = ("checkpoint",)


def main() -> int:
  """Prints the pins on one line; returns the exit code."""
  project = tomllib.loads(PYPROJECT.read_text())["project"]
  extras = project["optional-dependencies"]
  dependencies = project["dependencies"] + [d for extra in EXTRAS for d in extras[extra]]
  pins = []
  for dependency in dependencies:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9A-Za-z.]*)", dependency)
    if match is None:
      print(f"CI: no lower bound to pin in dependency {dependency!r}", file=sys.stderr)
      return 1
    name, version = match.groups()
    pins.append(f"{name}=={version}")
    if name == "jax":
      pins.append(f"jaxlib=={version}")
  print(" ".join(pins))
  return 0


if __name__ == "__main__":
  sys.exit(main())
