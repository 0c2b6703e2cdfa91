"""``.ci/run``, which the README offers to users, leaves their checkout's own files alone."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_builds_its_venv_in_a_folder_of_its_own_that_git_ignores():
  script = (ROOT / ".ci" / "run").read_text()
  created = re.findall(r"python3 -m venv (\S+)", script)
  assert created == [".venv-ci"]
  removed = re.findall(r"rm -rf (\S+)", script)
  assert removed == [".venv-ci"], "CI must not delete a folder a user may own, such as .venv"
  assert ".venv-ci/" in (ROOT / ".gitignore").read_text().splitlines()
