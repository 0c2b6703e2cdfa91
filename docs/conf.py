"""Sphinx configuration of the adam_optax docs (MyST pages, furo theme, autodoc API).

Build with warnings as errors::

  pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html

Three things happen at build time, so that the site cannot go stale:

* the figures of the theory pages are drawn by ``docs/make_figures.py`` with the
  library's own transformations (``builder-inited``);
* the notebooks (``docs/notebooks`` is a link to ``notebooks/``) are executed by
  myst-nb, with this checkout's package on the kernel's ``PYTHONPATH``, and shown
  with their outputs. Their outputs are cached (in ``docs/_build/.jupyter_cache``
  for the command above), so a rebuild runs only the notebooks that changed; a
  notebook that fails, by a failing ``assert`` too, is an error (the notebooks
  assert what their prose says about their own numbers). Markdown
  they display (``IPython.display.Markdown``) is rendered as GitHub-flavoured
  Markdown, tables included. ``-D nb_execution_mode=off`` builds without
  running them; ``tests/test_docs_build.py`` builds with them run, once, and
  checks what they show;
* the API reference in ``api.md`` is generated from ``adam_optax.__all__``: one
  ``autofunction``/``autoclass`` per public name, grouped by the module that
  defines it, so a name added to ``__all__`` later appears without editing
  the page (``source-read``). A public name without a docstring is a warning,
  hence an error under ``-W``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import re
import sys

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # the package, when it is not installed
# The notebooks' kernels import the same package as this build.
os.environ["PYTHONPATH"] = os.pathsep.join(
  filter(None, [str(DOCS.parent), os.environ.get("PYTHONPATH")])
)
sys.path.insert(0, str(DOCS))  # make_figures

import make_figures  # noqa: E402
from sphinx.util import logging  # noqa: E402

import adam_optax  # noqa: E402

project = "adam_optax"
author = "adam_optax developers"
copyright = "2025, adam_optax developers"
release = adam_optax.__version__
version = release

extensions = [
  "myst_nb",
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**/.ipynb_checkpoints"]

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

nb_execution_mode = "cache"
nb_execution_timeout = 600  # seconds per cell; the longest notebook takes under a minute
nb_execution_raise_on_error = True
# myst-nb's default, CommonMark, has no tables: a displayed Markdown table would be a
# paragraph of pipes.
nb_render_markdown_format = "gfm"

napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Attributes as :ivar: fields of their class, not as separate objects that
# would clash with the NamedTuple fields autodoc already knows.
napoleon_use_ivar = True
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
# Keep the annotations as written (``optax.ScalarOrSchedule``, ``chex.Numeric``)
# instead of expanding each alias into the union it stands for.
autodoc_type_aliases = {
  name: name
  for name in (
    "DTypeLike",
    "chex.Array",
    "chex.ArrayTree",
    "chex.Numeric",
    "optax.OptState",
    "optax.Params",
    "optax.ScalarOrSchedule",
    "optax.Schedule",
    "optax.Updates",
  )
}

html_theme = "furo"
html_title = f"adam_optax {release}"
html_static_path: list[str] = []

# The pieces in the order of Algorithm 1, after the optimizers built from them;
# modules added later follow in alphabetical order.
_MODULE_ORDER = [
  "adam_optax.optimizers",
  "adam_optax.moments",
  "adam_optax.bias",
  "adam_optax.running_max",
  "adam_optax.normalize",
  "adam_optax.lr",
]
_API_MARKER = "<!-- api-reference: generated from adam_optax.__all__ by docs/conf.py -->"
_FORWARD_REF = re.compile(r"TypeAliasForwardRef\('([\w.]+)'\)")
_logger = logging.getLogger(__name__)


def _kind(obj: object) -> str:
  """The autodoc directive for ``obj``: class, function or data."""
  if inspect.isclass(obj):
    return "class"
  return "function" if callable(obj) else "data"


def _api_reference() -> str:
  """MyST text documenting every name of ``adam_optax.__all__``, by module."""
  by_module: dict[str, list[str]] = {}
  for name in adam_optax.__all__:
    obj = getattr(adam_optax, name)
    if not inspect.getdoc(obj):
      _logger.warning(f"adam_optax.{name} is public but has no docstring")
    module = getattr(obj, "__module__", None) or "adam_optax"
    by_module.setdefault(module, []).append(name)
  ordered = [m for m in _MODULE_ORDER if m in by_module]
  ordered += sorted(m for m in by_module if m not in _MODULE_ORDER)
  parts = []
  for module in ordered:
    summary = (inspect.getdoc(importlib.import_module(module)) or module).splitlines()[0]
    directives = "\n".join(
      f".. auto{_kind(getattr(adam_optax, n))}:: adam_optax.{n}" for n in by_module[module]
    )
    parts.append(f"## {summary.rstrip('.')}\n\n`{module}`\n\n```{{eval-rst}}\n{directives}\n```\n")
  return "\n".join(parts)


def _fill_api_page(app, docname: str, source: list[str]) -> None:
  del app
  if docname == "api":
    source[0] = source[0].replace(_API_MARKER, _api_reference())


def _unwrap_aliases(app, what, name, obj, options, signature, return_annotation):
  """Prints an aliased ``X`` nested in ``X | None`` or ``dict[str, X]`` as ``X``.

  Sphinx leaves ``TypeAliasForwardRef('X')`` there.
  """
  del app, what, name, obj, options
  if signature is None:
    return None
  return _FORWARD_REF.sub(r"\1", signature), _FORWARD_REF.sub(r"\1", return_annotation or "")


def _draw_figures(app) -> None:
  del app
  make_figures.main(DOCS / "figures")


def setup(app) -> dict[str, bool]:
  """Registers the build-time steps above."""
  app.connect("builder-inited", _draw_figures)
  app.connect("source-read", _fill_api_page)
  app.connect("autodoc-process-signature", _unwrap_aliases)
  return {"parallel_read_safe": True}
