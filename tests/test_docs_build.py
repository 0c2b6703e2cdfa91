"""The docs site builds with warnings as errors, shows what it promises, and its examples run.

The build is the one the README gives (``sphinx-build -W``, plus ``--keep-going`` to
list every warning at once); it draws the figures with ``docs/make_figures.py``,
generates the API reference from ``adam_optax.__all__`` and executes and renders the
notebooks. This is the one place the suite runs the notebooks (a failing cell, an
``assert`` included, fails the build), so the checks see what a reader sees: no
Markdown left as raw text (a table as a paragraph of pipes) on any page, and no ``nan``
in a notebook's outputs. Building without executing them and running them through
nbmake as well would cost the ~20 s of the build twice over. The build test is
skipped only where the docs extras (sphinx, myst-nb, furo) are not installed.
"""

from __future__ import annotations

import html
import html.parser
import json
import pathlib
import re
import subprocess
import sys

import pytest

import adam_optax as ao

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FIGURES = [
  "bias_correction",
  "ema_weights",
  "scale_invariance",
  "snr_annealing",
  "step_size",
  "zero_point",
]
NOTEBOOKS = sorted(path.stem for path in (ROOT / "notebooks").glob("*.ipynb"))
# A Markdown table's delimiter row left as text ("| --- |", or "| — |" once smartquotes
# has turned the dashes into an em dash).
RAW_TABLE = re.compile(r"\|\s*:?(?:-{3,}|[—–])-*:?\s*\|")
NAN = re.compile(r"\bnan\b", flags=re.IGNORECASE)


def _text(page: str) -> str:
  """What a reader sees of the HTML ``page``: no scripts, styles or tags; entities decoded."""
  page = re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.DOTALL)
  return html.unescape(re.sub(r"<[^>]+>", "", page))


def _without_code(page: str) -> str:
  """The HTML ``page`` less its code blocks (``<pre>``), where Markdown may be shown on purpose."""
  return re.sub(r"<pre\b.*?</pre>", "", page, flags=re.DOTALL)


class _CellOutputs(html.parser.HTMLParser):
  """Collects the text of each ``<div class="cell_output ...">`` of a notebook's page."""

  def __init__(self) -> None:
    super().__init__()
    self.outputs: list[str] = []
    self._depth = 0  # of nested divs inside the current output; 0: outside one

  def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
    if tag != "div":
      return
    if self._depth:
      self._depth += 1
    elif "cell_output" in (dict(attrs).get("class") or "").split():
      self._depth = 1
      self.outputs.append("")

  def handle_endtag(self, tag: str) -> None:
    if tag == "div" and self._depth:
      self._depth -= 1

  def handle_data(self, data: str) -> None:
    if self._depth:
      self.outputs[-1] += data


def _cell_outputs(page: str) -> list[str]:
  """The text of each cell output on a notebook's page."""
  parser = _CellOutputs()
  parser.feed(page)
  return parser.outputs


def _python_blocks(page: pathlib.Path) -> list[str]:
  return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)


# The README and the guide and theory pages with python examples (the how-to pages are
# run by test_docs_howto.py). A page's blocks run in order in one fresh process, so a
# block may continue the one before it.
EXAMPLE_PAGES = [
  page.relative_to(ROOT).as_posix()
  for page in [
    ROOT / "README.md",
    DOCS / "index.md",
    DOCS / "getting_started.md",
    *sorted(DOCS.glob("theory/*.md")),
  ]
  if _python_blocks(page)
]


def test_docs_build_without_warnings(tmp_path: pathlib.Path) -> None:
  # One test, not a fixture shared by several: under pytest-xdist each worker would
  # build the site (and redraw docs/figures) again. The site goes to tmp_path/html, so
  # that what myst-nb writes next to it (jupyter_execute/) stays in tmp_path.
  site = tmp_path / "html"
  for module in ("sphinx", "myst_nb", "furo"):
    pytest.importorskip(module, reason="the docs extras are not installed")
  command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
  command += ["-D", "nb_execution_mode=force"]  # every notebook, run once, here
  result = subprocess.run(
    [*command, str(DOCS), str(site)], cwd=ROOT, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
  for page in ("index", "getting_started", "api", "theory/step_size", "theory/notes"):
    assert (site / f"{page}.html").is_file(), page

  # Every notebook is a page of the site, in the "Notebooks" part of the navigation.
  assert NOTEBOOKS
  index = (site / "index.html").read_text()
  assert '<span class="caption-text">Notebooks</span>' in index
  for name in NOTEBOOKS:
    assert (site / "notebooks" / f"{name}.html").is_file(), name
    assert f'href="notebooks/{name}.html"' in index, name

  # What a reader sees: Markdown rendered on every page, notebooks' outputs included
  # (myst-nb's default renders a displayed Markdown table as a paragraph of pipes), and
  # a number wherever a notebook prints one.
  for page in sorted(site.rglob("*.html")):
    raw = RAW_TABLE.search(_text(_without_code(page.read_text())))
    assert raw is None, f"{page.relative_to(site)} shows Markdown as text: {raw.group()!r}"
  for name in NOTEBOOKS:
    outputs = _cell_outputs((site / "notebooks" / f"{name}.html").read_text())
    assert outputs, f"{name} was not executed"
    shown = [text.strip() for text in outputs if NAN.search(text)]
    assert not shown, f"{name} prints nan: {shown}"

  # Every public name is in the API reference, with its docstring math as math.
  api = (site / "api.html").read_text()
  missing = [name for name in ao.__all__ if f'id="adam_optax.{name}"' not in api]
  assert not missing, f"not in the API reference: {missing}"
  assert 'class="math' in api
  assert ".. math::" not in api
  assert ":math:" not in api

  # The build drew the figures with the library and the theory pages show them.
  shown = {path.stem for path in (site / "_images").glob("*.png")}
  assert set(FIGURES) <= shown, f"figures missing from the site: {set(FIGURES) - shown}"
  for name in FIGURES:
    assert (DOCS / "figures" / f"{name}.png").stat().st_size > 10_000, name


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_assert_what_they_say(name: str) -> None:
  # A notebook's prose about its own results is computed and asserted in its code (the
  # docs build above runs them), not typed: a typed claim goes stale when the numbers move.
  cells = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"]
  code = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
  assert re.search(r"^\s*(assert |np\.testing\.assert_)", code, flags=re.MULTILINE), name


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_page_examples_run(page: str) -> None:
  blocks = _python_blocks(ROOT / page)
  if any("flax" in block for block in blocks):
    pytest.importorskip("flax")
  result = subprocess.run(
    [sys.executable, "-c", "\n".join(blocks)], cwd=ROOT, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, f"the examples of {page} failed:\n{result.stderr}"
