"""The docs site builds with warnings as errors, and the examples on its pages run.

The build is the one the README gives (``sphinx-build -W``, plus ``--keep-going`` to
list every warning at once); it draws the figures with ``docs/make_figures.py``,
generates the API reference from ``adam_optax.__all__`` and renders the notebooks.
It does not execute them (``-D nb_execution_mode=off``): the suite already runs each
notebook through nbmake, and running them twice would double their two minutes. The
build test is skipped only where the docs extras (sphinx, myst-nb, furo) are not
installed.
"""

from __future__ import annotations

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


def _python_blocks(page: pathlib.Path) -> list[str]:
  return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)


# The guide and theory pages with python examples (the how-to pages are not run here).
EXAMPLE_PAGES = [
  page.relative_to(DOCS).as_posix()
  for page in [DOCS / "index.md", DOCS / "getting_started.md", *sorted(DOCS.glob("theory/*.md"))]
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
  command += ["-D", "nb_execution_mode=off"]
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


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_page_examples_run(page: str) -> None:
  blocks = _python_blocks(DOCS / page)
  if any("flax" in block for block in blocks):
    pytest.importorskip("flax")
  result = subprocess.run(
    [sys.executable, "-c", "\n".join(blocks)], cwd=ROOT, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, f"the examples of {page} failed:\n{result.stderr}"
