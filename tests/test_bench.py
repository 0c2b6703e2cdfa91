"""``adam-optax bench --quick`` runs in-process and writes a complete, finite report."""

import json
import math

import pytest

from adam_optax import cli
from adam_optax.benchmarks import trees

RESULT_KEYS = {
  "method",
  "bytes_per_step",
  "wall_ms",
  "device_ms",
  "real_ms",
  "roofline_ms",
  "roofline_fraction",
  "peak_bytes",
  "peak_mib",
  "compile_s",
  "real_compile_s",
  "speedup",
  "speedup_vs_optax",
}


def _numbers(value):
  if isinstance(value, bool):
    return
  if isinstance(value, (int, float)):
    yield value
  elif isinstance(value, dict):
    for v in value.values():
      yield from _numbers(v)
  elif isinstance(value, list):
    for v in value:
      yield from _numbers(v)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  argv = ["bench", "--quick", "--trees", "one-leaf", "gpt2-bf16"]
  argv += ["--json", str(out / "bench.json"), "--plot", str(out / "bench.png")]
  assert cli.main(argv) == 0
  return json.loads((out / "bench.json").read_text()), out


def test_quick_report_has_the_schema_and_every_method(report):
  data, _ = report
  assert data["schema"] == "adam-optax-bench/1"
  assert data["quick"] is True
  assert {"platform", "device", "date", "versions", "load_average"} <= set(data["context"])
  assert data["context"]["versions"]["jax"]
  assert [t["name"] for t in data["trees"]] == ["one-leaf", "gpt2-bf16"]
  bf16 = data["trees"][1]
  assert (bf16["param_dtype"], bf16["moment_dtype"]) == ("bfloat16", "float32")
  for tree in data["trees"]:
    methods = [r["method"] for r in tree["results"]]
    assert methods[:4] == ["optax.adam", "ao.adam", "ao fast path", "ao fast path, one pass"]
    for result in tree["results"]:
      assert set(result) == RESULT_KEYS
      torch = result["method"].startswith("torch")
      assert torch or None not in (result["compile_s"], result["real_compile_s"])
    baseline = tree["results"][0]
    assert baseline["speedup_vs_optax"] == 1.0


def test_quick_report_numbers_are_finite_and_positive(report):
  data, _ = report
  numbers = [*_numbers(data["trees"]), data["copy_bandwidth_GBps"]]
  assert numbers
  assert all(math.isfinite(x) and x > 0 for x in numbers)


def test_roofline_counts_bf16_params_with_f32_moments(report):
  data, _ = report
  bf16 = data["trees"][1]
  fast = next(r for r in bf16["results"] if r["method"] == "ao fast path")
  # p (bf16) read+write, g (bf16) read, m and v (f32) read+write: 22 bytes a parameter.
  assert fast["bytes_per_step"] == 22 * bf16["params"] + 2 * 4  # + the step count


def test_plot_is_written(report):
  _, out = report
  assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_flags_exit_with_code_2(capsys):
  with pytest.raises(SystemExit) as error:
    cli.main(["bench", "--quick", "--repeats", "0"])
  assert error.value.code == 2
  assert "--repeats" in capsys.readouterr().err


def test_gpt2_tree_has_148_leaves_and_124m_params():
  spec = trees.tree_specs("full")["gpt2"]
  assert len(spec.shapes) == 148
  assert spec.size == 124_439_808
