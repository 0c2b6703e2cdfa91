"""The argparse pieces shared by the subcommands of ``adam-optax``.

One validator per kind of value: names from a registry (:func:`names`),
numbers in a range (:func:`number`, :data:`positive_int`), a file to write
(:func:`output_file`), and a folder to write into (:func:`make_folder`). The
first three are argparse types, so a bad value is reported as
``argument --flag: ...`` while the flags are parsed, before any work; the
error is one line (the command's parser, :mod:`adam_optax.cli`, prints no
usage lines).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

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


def _not_a_folder(path: Path) -> Path | None:
  """The first of ``path`` and its ancestors that exists and is not a folder, if any."""
  for part in reversed([path, *path.parents]):
    if part.exists() and not part.is_dir():
      return part
  return None


def _cannot_write_into(folder: Path) -> str | None:
  """Why no file can be created in the existing ``folder`` (a probe file), or ``None``."""
  try:
    with tempfile.TemporaryFile(dir=folder):
      return None
  except OSError as error:
    return error.strerror or str(error)


def output_file(text: str) -> Path:
  """An argparse type: a file the command will write, in a folder that exists and takes files.

  Checked when the flags are parsed, so that a run does not fail at its end,
  after all its work, for want of a folder.

  Examples:
    >>> output_file("report.json")
    PosixPath('report.json')
    >>> output_file("nodir/report.json")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: cannot write 'nodir/report.json': the folder 'nodir' does not exist
  """
  path = Path(text)
  blocker = _not_a_folder(path.parent)
  if path.is_dir():
    reason = "it is a folder, not a file"
  elif blocker is not None:
    reason = f"{str(blocker)!r} is a file, not a folder"
  elif not path.parent.is_dir():
    reason = f"the folder {str(path.parent)!r} does not exist"
  else:
    reason = _cannot_write_into(path.parent)
  if reason:
    raise argparse.ArgumentTypeError(f"cannot write {text!r}: {reason}")
  return path


def make_folder(path: Path, flag: str) -> str | None:
  """Creates the folder ``path`` (with its parents) for the files of ``flag``; else says why not.

  Args:
    path: the folder, e.g. ``--out``'s value.
    flag: the flag it came from, named in the error.

  Returns:
    ``None`` once ``path`` is a folder that takes new files, else a one-line
    error, e.g. ``cannot write to --out 'x': it is a file, not a folder``.
  """
  blocker = _not_a_folder(path)
  if blocker is not None:
    reason = ("it is" if blocker == path else f"{str(blocker)!r} is") + " a file, not a folder"
  else:
    try:
      path.mkdir(parents=True, exist_ok=True)
      reason = _cannot_write_into(path)
    except OSError as error:
      reason = error.strerror or str(error)
  return None if reason is None else f"cannot write to {flag} {str(path)!r}: {reason}"
