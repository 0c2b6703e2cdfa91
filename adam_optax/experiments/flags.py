"""The argparse pieces shared by ``adam-optax compare`` and its ``--diagnostics`` flags.

One validator per kind of value (:func:`names`, :func:`number`), and errors
of one line (:func:`one_line_errors`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

T = TypeVar("T", int, float)


def names(registry: Mapping[str, Any], kind: str) -> Callable[[str], list[str]]:
  """An argparse type: a comma-separated list of names from ``registry``.

  Examples:
    >>> names({"a": 1, "b": 2}, "letter")("b, a,b")
    ['b', 'a']
  """

  def parse(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in registry]
    if unknown or not chosen:
      raise argparse.ArgumentTypeError(
        f"unknown {kind} {', '.join(map(repr, unknown)) or repr(text)}; "
        f"choose from {','.join(registry)}"
      )
    return list(dict.fromkeys(chosen))

  return parse


def number(convert: Callable[[str], T], accept: Callable[[T], bool], expected: str) -> Callable:
  """An argparse type: ``convert(text)`` if ``accept`` takes it, else "expected ``expected``".

  Examples:
    >>> number(int, lambda n: n >= 1, "a positive integer")("3")
    3
  """

  def parse(text: str) -> T:
    try:
      value = convert(text)
    except ValueError:
      value = None
    if value is None or not accept(value):
      raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value

  return parse


positive_int = number(int, lambda value: value >= 1, "a positive integer")
natural_int = number(int, lambda value: value >= 0, "a non-negative integer")
decay_rate = number(float, lambda value: 0 <= value < 1, "a number in [0, 1)")


def one_line_errors(parser: argparse.ArgumentParser) -> None:
  """Makes ``parser.error`` print one line on stderr (no usage lines) and exit with 2."""

  def error(message: str) -> NoReturn:
    parser.exit(2, f"{parser.prog}: error: {message}\n")

  parser.error = error  # type: ignore[method-assign]
