"""Runs the code of every how-to page, so that the docs cannot rot.

Each ``docs/howto/*.md`` page is one test: its ```` ```python ```` blocks run
top to bottom in one namespace, in a fresh Python process (a page may set up
its own devices, as the sharding page does, or switch on float64). A block
right after a ``<!-- skip -->`` line is not run; that is for what cannot run
here (a multi-host launch). Tracebacks point at the page's own line numbers.
"""

from __future__ import annotations

import pathlib
import re

import pytest
from fresh_python import ROOT, run_python

PAGES = sorted((ROOT / "docs" / "howto").glob("*.md"))
SKIP = "<!-- skip -->"
# exec the page's code under its own file name, so tracebacks name page lines
RUNNER = (
  "import sys; exec(compile(sys.stdin.read(), sys.argv[1], 'exec'), {'__name__': '__main__'})"
)


def page_code(page: pathlib.Path) -> tuple[str, int]:
  """The page's runnable code, blank where the page is prose, and its block count.

  Keeping prose lines as blank lines keeps every line of code at its line
  number in the page.
  """
  lines = page.read_text(encoding="utf-8").splitlines()
  code = [""] * len(lines)
  blocks, inside, run, previous = 0, False, False, ""
  for number, line in enumerate(lines):
    if not inside and re.fullmatch(r"```python\s*", line):
      inside, run = True, previous.strip() != SKIP
      blocks += run
    elif inside and line.strip() == "```":
      inside = False
    elif inside and run:
      code[number] = line
    if line.strip():
      previous = line
  assert not inside, f"{page.name}: a ```python block is never closed"
  return "\n".join(code) + "\n", blocks


def test_there_are_pages() -> None:
  assert {p.stem for p in PAGES} >= {
    "flax",
    "optax_wrappers",
    "checkpoints",
    "sharding",
    "many_hosts",
  }


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_howto_page_runs(page: pathlib.Path) -> None:
  code, blocks = page_code(page)
  assert blocks > 0, f"{page.name} has no ```python block to run"
  # Each page starts from a plain JAX (no XLA_FLAGS), as a reader's would.
  run = run_python(["-c", RUNNER, str(page.relative_to(ROOT))], stdin=code)
  assert run.returncode == 0, f"{page.name} failed:\n{run.stderr[-4000:]}"
