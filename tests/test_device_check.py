"""``.ci/device-check --dry-run``: every part of the GPU check runs, on the CPU, at toy sizes.

The real run happens on a lent GPU machine (see the script's header); this keeps
its command lines, its outputs and the abandoned-compile path of the bench
working in CI. About a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from fresh_python import ROOT

PARTS = ["env", "bench", "states", "anchors", "tests", "many-leaves"]


def test_dry_run_runs_every_part_and_writes_at_most_8_files(tmp_path: pathlib.Path) -> None:
  env = {**os.environ, "PYTHON": sys.executable}
  env.pop("XLA_FLAGS", None)
  run = subprocess.run(
    ["bash", str(ROOT / ".ci" / "device-check"), "--dry-run", str(tmp_path / "out")],
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  out = tmp_path / "out"
  assert run.returncode == 0, run.stdout[-4000:] + (out / "log.txt").read_text()[-4000:]
  files = {p.name for p in out.iterdir()}
  assert files == {f"{name}.json" for name in ("bench", "states", "anchors", "many-leaves")} | {
    "summary.md",
    "log.txt",
    "tests.txt",
  }
  summary = (out / "summary.md").read_text()
  assert run.stdout.endswith(summary)
  for part in PARTS:
    assert f"| {part} | ok | " in summary
    assert f"\n## {part}\n" in summary
  assert "jax devices: 1 x cpu (cpu)" in summary
  # One line per test result, and the verdict.
  tests = (out / "tests.txt").read_text()
  assert "tests/test_cli.py::test_version_prints_the_package_version PASSED" in tests
  assert " passed in " in tests.splitlines()[-1]
  bench = json.loads((out / "bench.json").read_text())
  assert [t["name"] for t in bench["trees"]] == ["one-leaf"]
  assert all(r["wall_ms"] > 0 for r in bench["trees"][0]["results"])
  # The many-leaves budget is spent by its first compile: abandoned, then the rest skipped.
  (tree,) = json.loads((out / "many-leaves.json").read_text())["trees"]
  compiles = [r["compile"][kind] for r in tree["results"] for kind in ("wall", "device", "real")]
  assert [c["outcome"] for c in compiles].count("abandoned") == 1
  assert {c["outcome"] for c in compiles} == {"abandoned", "skipped"}
  assert all(r["wall_ms"] is None for r in tree["results"])
  assert json.loads((out / "anchors.json").read_text())["rows"]["torch Adam fused"]["ms"] > 0
  states = json.loads((out / "states.json").read_text())["rows"]
  assert all(states[name]["ms"] > 0 for name in ("ao.adam 8-bit", "ao.amsgrad 8-bit"))
