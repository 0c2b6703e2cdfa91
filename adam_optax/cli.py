"""The ``adam-optax`` command: ``compare`` (the paper's experiments), ``bench`` and ``states``.

Each subcommand lives in its own module, which provides ``add_arguments(parser)``
and ``run(args, parser) -> int``; this file only dispatches, importing the module
of the chosen subcommand alone so that ``adam-optax --help`` stays instant.
Every error about the flags, argparse's own (an unknown flag, a bad choice, a
value refused by a ``type`` of :mod:`adam_optax.experiments.flags`) as well as
a subcommand's ``parser.error``, is one line on stderr, without the usage
lines, and exits with code 2. A subcommand checks its flags, output paths
included, before it starts working. Help texts are plain text (no
reStructuredText markup): ``--help`` prints them as they are.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

_SUBCOMMANDS = {
  "compare": (
    "adam_optax.experiments.compare",
    "train the paper's problems with Adam and other optimizers; write results",
  ),
  "bench": ("adam_optax.bench", "time one Adam step against optax.adam and the roofline"),
  "states": ("adam_optax.benchmarks.lowbit", "8-bit and 4-bit moments: memory, loss and speed"),
}
_DESCRIPTION = (
  "The adam-optax command: compare reruns the paper's experiments, bench times one Adam step "
  "against optax.adam and the roofline, states measures 8-bit and 4-bit moments."
)


class _Parser(argparse.ArgumentParser):
  """An argument parser whose errors are one line (no usage lines), exit code 2.

  Sub-parsers are made of the same class, so the promise holds for every subcommand.
  """

  def error(self, message: str) -> NoReturn:
    """Prints ``<prog>: error: <message>`` on stderr and exits with code 2."""
    self.exit(2, f"{self.prog}: error: {message}\n")


class _Version(argparse.Action):
  """``--version``: prints ``adam-optax <adam_optax.__version__>`` and exits.

  The package (and with it JAX) is imported only when the flag is given, so
  that ``--help`` stays instant.
  """

  def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
    super().__init__(option_strings, dest, nargs=0, help="print the version and exit", **kwargs)

  def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
    from adam_optax import __version__

    print(f"{parser.prog} {__version__}")
    parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``adam-optax``; returns the exit code (2 for bad flags)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = _Parser(prog="adam-optax", description=_DESCRIPTION)
  parser.add_argument("--version", action=_Version)
  subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  chosen = next((a for a in argv if a in _SUBCOMMANDS), None)
  parsers = {}
  try:  # Ctrl-C while a subcommand's modules load (JAX, Flax): one line, no traceback
    for name, (module_name, help_text) in _SUBCOMMANDS.items():
      parsers[name] = subparsers.add_parser(name, help=help_text, description=help_text)
      if name == chosen:
        importlib.import_module(module_name).add_arguments(parsers[name])
    args = parser.parse_args(argv)
    module = importlib.import_module(_SUBCOMMANDS[args.command][0])
    return int(module.run(args, parsers[args.command]))
  except KeyboardInterrupt:
    print(
      f"{parser.prog} {chosen}: interrupted" if chosen else f"{parser.prog}: interrupted",
      file=sys.stderr,
    )
    return 130


if __name__ == "__main__":
  sys.exit(main())
