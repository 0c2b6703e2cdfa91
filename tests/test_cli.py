"""``adam-optax``: plain-text help for every command, and ``--version``."""

import pytest

import adam_optax as ao
from adam_optax import cli


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"], ["compare", "--help"]])
def test_help_is_plain_text(argv, capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(argv)
  assert exit_.value.code == 0
  text = capsys.readouterr().out
  assert text.startswith("usage: adam-optax")
  for markup in ("``", ":func:", ":class:", ":math:", ":mod:"):
    assert markup not in text, markup


def test_version_prints_the_package_version(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["--version"])
  assert exit_.value.code == 0
  assert capsys.readouterr().out == f"adam-optax {ao.__version__}\n"
