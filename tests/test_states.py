"""``adam-optax states``: its table is aligned, and rows it cannot measure are explained."""

import json
import sys

from adam_optax import cli
from adam_optax.benchmarks import lowbit

SPEED = {
  "optax.adam float32": {"bytes_per_param": 8.0, "peak_bytes_per_param": 16.0, "ms": 0.5},
  "ao.adam 8-bit": {"bytes_per_param": 2.023, "peak_bytes_per_param": 19.03, "ms": 8.6},
  "torchao 8-bit": {"ms": 63.9, "time_vs_optax": 32.31},
}
QUALITY = {"ao.adam 8-bit": {"loss_ratio": 1.0028}, "torchao 8-bit": {"loss_ratio": 61683.3707}}


def _report(rows, skipped=None):
  return {
    "device": "cpu (x86_64, 2 cores)",
    "versions": {"jax": "0"},
    "size": 4096,
    "load_at_start": [1.0],
    "load_at_end": [1.0],
    "rows": rows,
    "torchao_skipped": skipped,
  }


def test_rows_with_unmeasured_figures_stay_aligned():
  rows = {name: dict(row) for name, row in SPEED.items()}
  for name, row in QUALITY.items():
    rows[name].update(row)
  heading, *body = lowbit.table(_report(rows)).splitlines()[1:]
  assert heading.split()[0] == "method"
  ends = [heading.index(title) + len(title) for _, title, _ in lowbit.COLUMNS]
  for line in body:
    assert len(line) == len(heading), line
    for end in ends:  # every figure ends under the end of its heading (right-aligned)
      assert line[end - 1] != " ", (line, end)
      assert line[end : end + 1] in ("", " "), (line, end)
  torchao = next(line for line in body if line.startswith("torchao 8-bit"))
  assert torchao.split()[2:] == ["-", "-", "63.9", "32.31", "61683.3707"]


def test_missing_torchao_is_said_with_its_reason(monkeypatch, tmp_path, capsys):
  monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao raises ImportError
  assert lowbit.torchao_optimizers() == {}
  monkeypatch.setattr(lowbit, "speed", lambda *args: {k: dict(v) for k, v in SPEED.items()})
  monkeypatch.setattr(lowbit, "quality", lambda seeds: QUALITY)
  assert cli.main(["states", "--json", str(tmp_path / "states.json")]) == 0
  out, err = capsys.readouterr()
  reason = lowbit.torchao_unavailable()
  assert reason.startswith("torchao is not installed (")
  assert f"adam-optax states: torchao rows skipped: {reason}" in err
  assert out.rstrip().endswith(f"torchao rows skipped: {reason}")
  assert json.loads((tmp_path / "states.json").read_text())["torchao_skipped"] == reason
