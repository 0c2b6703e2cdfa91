"""``adam-optax``: plain-text help for every command, ``--version``, and one-line flag errors.

Every subcommand checks its flags, output paths included, before it starts
working: a bad flag is one line on stderr and exit code 2, whichever
subcommand it is given to.
"""

import importlib
from pathlib import Path

import pytest
from fresh_python import run_python

import adam_optax as ao
from adam_optax import cli
from adam_optax.experiments import flags, train

SUBCOMMANDS = list(cli._SUBCOMMANDS)


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in SUBCOMMANDS)])
def test_help_is_plain_text(argv, capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(argv)
  assert exit_.value.code == 0
  text = capsys.readouterr().out
  assert text.startswith("usage: adam-optax")
  for markup in ("``", ":func:", ":class:", ":math:", ":mod:"):
    assert markup not in text, markup


def test_top_level_help_describes_every_subcommand(capsys):
  with pytest.raises(SystemExit):
    cli.main(["--help"])
  description = capsys.readouterr().out.split("\n\n")[1]
  for name in SUBCOMMANDS:
    assert f"{name} " in description, name


def test_importing_the_package_and_the_command_s_help_leave_jax_unimported():
  # A newcomer's first command answers at once, and a Ctrl-C during it is no JAX traceback.
  code = (
    "import sys\n"
    "import adam_optax as ao\n"
    "from adam_optax import cli\n"
    "try:\n"
    "  cli.main(['--help'])\n"
    "except SystemExit:\n"
    "  pass\n"
    "print('jax' in sys.modules, len(ao.__all__))\n"
    "ao.adam\n"
    "print('jax' in sys.modules)\n"
  )
  result = run_python(["-c", code])
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-2:] == [f"False {len(ao.__all__)}", "True"]


def test_version_prints_the_package_version(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["--version"])
  assert exit_.value.code == 0
  assert capsys.readouterr().out == f"adam-optax {ao.__version__}\n"


@pytest.fixture
def paths(tmp_path):
  """``{file}``: an existing file; ``{folder}``: an existing folder; ``{missing}``: neither."""
  (tmp_path / "a-file").write_text("")
  return {"file": tmp_path / "a-file", "folder": tmp_path, "missing": tmp_path / "nodir"}


NOT_POSITIVE = [
  (["bench", flag, value], f"argument {flag}: expected a positive integer, got '{value}'")
  for flag in ("--rounds", "--repeats", "--scan-steps")
  for value in ("0", "ten")
] + [
  (["states", flag, value], f"argument {flag}: expected a positive integer, got '{value}'")
  for flag in ("--size", "--rounds", "--repeats", "--seeds")
  for value in ("0", "-3")
]
OUTPUTS = [
  (
    [command, flag, "{missing}/x.out"],
    f"argument {flag}: cannot write '{{missing}}/x.out': the folder '{{missing}}' does not exist",
  )
  for command, flag in (("bench", "--json"), ("bench", "--plot"), ("states", "--json"))
] + [
  (
    ["states", "--json", "{file}/x.json"],
    "argument --json: cannot write '{file}/x.json': '{file}' is a file, not a folder",
  ),
  (["bench", "--plot", "{folder}"], "cannot write '{folder}': it is a folder, not a file"),
]
OTHERS = [
  (
    ["bench", "--compile-budget", "nan"],
    "argument --compile-budget: expected a positive number of seconds, got 'nan'",
  ),
  (["bench", "--trees", "nope"], "adam-optax bench: error: argument --trees: invalid choice"),
  (["states", "--bogus"], "adam-optax: error: unrecognized arguments: --bogus"),
  (["nope"], "adam-optax: error: argument COMMAND: invalid choice: 'nope'"),
]


@pytest.mark.parametrize(("argv", "message"), NOT_POSITIVE + OUTPUTS + OTHERS)
def test_bad_flags_are_one_line_errors_before_any_work(argv, message, paths, monkeypatch, capsys):
  if argv[0] in cli._SUBCOMMANDS:
    module = importlib.import_module(cli._SUBCOMMANDS[argv[0]][0])

    def no_work(*args):
      raise AssertionError("started working before checking the flags")

    monkeypatch.setattr(module, "run", no_work)
  argv = [arg.format(**paths) for arg in argv]
  with pytest.raises(SystemExit) as exit_:
    cli.main(argv)
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1, err
  assert message.format(**paths) in err


def test_compare_out_naming_a_file_says_so(paths, monkeypatch, capsys):
  def no_training(*args, **kwargs):
    raise AssertionError("trained before checking --out")

  monkeypatch.setattr(train, "train", no_training)
  with pytest.raises(SystemExit) as exit_:
    cli.main(["compare", "--quick", "--problems", "logreg", "--out", str(paths["file"])])
  assert exit_.value.code == 2
  assert capsys.readouterr().err == (
    f"adam-optax compare: error: cannot write to --out '{paths['file']}': "
    "it is a file, not a folder\n"
  )


def test_make_folder_creates_missing_parents_and_names_what_blocks(tmp_path):
  assert flags.make_folder(tmp_path / "a" / "b", "--out") is None
  assert (tmp_path / "a" / "b").is_dir()
  (tmp_path / "f").write_text("")
  assert flags.make_folder(tmp_path / "f" / "b", "--out") == (
    f"cannot write to --out '{tmp_path / 'f' / 'b'}': '{tmp_path / 'f'}' is a file, not a folder"
  )


def test_output_file_accepts_a_new_file_in_an_existing_folder(tmp_path):
  assert flags.output_file(str(tmp_path / "x.json")) == Path(tmp_path / "x.json")
  assert not (tmp_path / "x.json").exists()
  assert list(tmp_path.iterdir()) == []  # the writability probe leaves nothing
