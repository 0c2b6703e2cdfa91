"""Runs Python code in a fresh process, for tests that need their own JAX.

JAX fixes its devices and config when first imported, so code that needs 8
host devices, or a page of the docs that sets them up itself, runs apart from
the pytest process.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from adam_optax.distributed import on_host_devices

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_python(
  args: list[str], *, stdin: str | None = None, host_devices: int | None = None
) -> subprocess.CompletedProcess[str]:
  """Runs ``python *args`` in the repository root, with the repository importable.

  Args:
    args: the interpreter's arguments (a script, or ``-c`` and code).
    stdin: text for the process's standard input.
    host_devices: run JAX on this many CPU devices, whatever accelerator the
      machine has (:func:`adam_optax.distributed.on_host_devices`). ``None`` leaves
      JAX to pick its platform, with no ``XLA_FLAGS``, as a user's process would.

  Returns:
    The finished process, with its output captured as text.
  """
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
  env.pop("XLA_FLAGS", None)
  if host_devices is not None:
    # A slow machine (2 busy cores, pytest -n 2) is allowed minutes in a collective,
    # within the 600 s below, not XLA:CPU's 40 s.
    env = on_host_devices(env, host_devices)
    env["XLA_FLAGS"] += " --xla_cpu_collective_call_terminate_timeout_seconds=400"
  return subprocess.run(
    [sys.executable, *args],
    input=stdin,
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )


def once_per_session(
  factory: pytest.TempPathFactory, name: str, compute: Callable[[pathlib.Path], Any]
) -> Any:
  """``compute(directory)`` run once per test session, its JSON-able result shared.

  Under pytest-xdist each worker has its own session, but they share the
  parent of their base temporary directories: the first worker to lock
  ``name`` there computes and writes the result, the others read it.
  """
  root = factory.getbasetemp()
  if "PYTEST_XDIST_WORKER" in os.environ:
    root = root.parent
  result = root / f"{name}.json"
  with (root / f"{name}.lock").open("w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not result.exists():
      (root / name).mkdir(exist_ok=True)
      result.write_text(json.dumps(compute(root / name)))
  return json.loads(result.read_text())
