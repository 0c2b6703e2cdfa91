"""``adam-optax bench``: the --quick report (complete, finite), its round-robin ratios,
its compile times and budget, its progress lines and the platform it names."""

import contextlib
import dataclasses
import io
import itertools
import json
import math
import statistics
import time

import jax
import pytest

from adam_optax import bench, cli
from adam_optax.benchmarks import compiles, jax_steps, rounds, torch_step, trees
from adam_optax.benchmarks import report as report_module

JAX_METHODS = [
  "optax.adam",
  "ao.adam",
  "ao.adam + diagnostics",
  "ao fast path",
  "ao fast path + diagnostics",
]

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
  "compile",
  "compile_s",
  "real_compile_s",
  "speedup",
  "speedup_vs_optax",
  "round_ms",
}
OVERHEAD_REFERENCE = {
  "ao.adam + diagnostics": "ao.adam",
  "ao fast path + diagnostics": "ao fast path",
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


def _bench(argv):
  """Runs ``adam-optax bench`` with ``argv``; returns (stdout, stderr)."""
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    assert cli.main(["bench", *argv]) == 0
  return stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  argv = ["--quick", "--trees", "one-leaf", "gpt2-bf16"]
  argv += ["--json", str(out / "bench.json"), "--plot", str(out / "bench.png")]
  printed, progress = _bench(argv)
  return json.loads((out / "bench.json").read_text()), out, printed, progress


@pytest.fixture(scope="module")
def report(run):
  return run[:2]


def test_quick_report_has_the_schema_and_every_method(report):
  data, _ = report
  assert data["schema"] == "adam-optax-bench/2"
  assert data["quick"] is True
  assert (data["rounds"], data["repeats"], data["scan_steps"]) == (3, 1, 2)
  context_keys = {"platform", "device", "date", "versions", "load_average", "load_average_start"}
  assert context_keys <= set(data["context"])
  assert data["context"]["versions"]["jax"]
  assert data["torch_skipped"] is None
  assert [t["name"] for t in data["trees"]] == ["one-leaf", "gpt2-bf16"]
  bf16 = data["trees"][1]
  assert (bf16["param_dtype"], bf16["moment_dtype"]) == ("bfloat16", "float32")
  for tree in data["trees"]:
    assert tree["left_out"] == {}
    methods = [r["method"] for r in tree["results"]]
    assert methods[: len(JAX_METHODS)] == JAX_METHODS
    for result in tree["results"]:
      diagnosed = result["method"] in OVERHEAD_REFERENCE
      assert set(result) == RESULT_KEYS | ({"overhead"} if diagnosed else set())
      assert all(len(result["round_ms"][kind]) == data["rounds"] for kind in rounds.KINDS)
      torch = result["method"].startswith("torch")
      assert torch or None not in (result["compile_s"], result["real_compile_s"])
      assert set(result["compile"]) == (set() if torch else set(rounds.KINDS))
    baseline = tree["results"][0]
    assert baseline["speedup"] == {"wall": 1.0, "device": 1.0, "real": 1.0}


def test_quick_report_ratios_are_medians_of_per_round_ratios(report):
  data, _ = report
  for tree in data["trees"]:
    by_name = {r["method"]: r for r in tree["results"]}
    baseline = by_name["optax.adam"]["round_ms"]
    for result in tree["results"]:
      for kind in rounds.KINDS:
        per_round = [b / t for b, t in zip(baseline[kind], result["round_ms"][kind], strict=True)]
        assert result["speedup"][kind] == pytest.approx(statistics.median(per_round))
      assert result["speedup_vs_optax"] == result["speedup"]["wall"]
    for method, reference in OVERHEAD_REFERENCE.items():
      overhead = by_name[method]["overhead"]
      assert overhead["reference"] == reference
      for kind in rounds.KINDS:
        ratios = [
          d / r
          for d, r in zip(
            by_name[method]["round_ms"][kind], by_name[reference]["round_ms"][kind], strict=True
          )
        ]
        assert overhead[kind] == pytest.approx(statistics.median(ratios) - 1)


def test_quick_table_prints_the_diagnostics_overhead_per_tree(run):
  data, _, printed, _ = run
  assert printed.strip() == report_module.table(data)
  assert "round-robin: 3 rounds" in printed
  _head, table = printed.split("\ndiagnostics on vs off, per tree: ")
  table, _compile_times = table.split("\n\ncompile seconds per program: ")
  assert table.startswith("time with diagnostics=True over the same method without")
  assert "budget 1.02x" in table.splitlines()[0]
  rows = [line.split() for line in table.splitlines()[2:]]
  pairs = [(t["name"], m, r) for t in data["trees"] for m, r in OVERHEAD_REFERENCE.items()]
  assert len(rows) == len(pairs)
  for row, (tree, method, reference) in zip(rows, pairs, strict=True):
    assert " ".join(row).startswith(f"{tree} {method} / {reference} ")
    overhead = next(
      r["overhead"]
      for t in data["trees"]
      if t["name"] == tree
      for r in t["results"]
      if r["method"] == method
    )
    # Three figures (wall, device, real step), each a ratio and its overhead in percent.
    assert row[-6::2] == [f"{1 + overhead[k]:.3f}x" for k in rounds.KINDS]
    assert row[-5::2] == [f"({overhead[k]:+.1%})" for k in rounds.KINDS]


def test_every_program_has_its_compile_time_split_into_phases(run):
  data, _, printed, _ = run
  for tree in data["trees"]:
    assert tree["compile_budget_s"] == 600
    spent = 0.0
    for result in tree["results"]:
      for took in result["compile"].values():
        assert took["outcome"] == "compiled"
        phases = took["trace_s"] + took["lower_s"] + took["xla_s"]
        assert took["seconds"] == pytest.approx(phases)
        spent += took["seconds"]
      if result["compile"]:
        assert result["compile_s"] == result["compile"]["wall"]["seconds"]
        assert result["real_compile_s"] == result["compile"]["real"]["seconds"]
    assert spent <= tree["compile_spent_s"]  # plus the waits' own overhead
  _, compile_table = printed.split("\ncompile seconds per program: ")
  rows = compile_table.splitlines()[2:]
  methods = [(t["name"], r["method"]) for t in data["trees"] for r in t["results"] if r["compile"]]
  assert len(rows) == len(methods)
  for row, (tree, method) in zip(rows, methods, strict=True):
    assert row.startswith(tree)
    assert f" {method} " in row
    assert row.count("(") == 3  # trace + lower + XLA, for each of the three programs


def test_quick_report_numbers_are_finite_and_positive(report):
  data, _ = report
  overheads = [r.pop("overhead") for t in data["trees"] for r in t["results"] if "overhead" in r]
  numbers = [*_numbers(data["trees"]), data["copy_bandwidth_GBps"]]
  assert numbers
  assert all(math.isfinite(x) and x > 0 for x in numbers)
  # An overhead is a ratio minus 1: finite and above -1, of either sign.
  assert all(math.isfinite(o[k]) and o[k] > -1 for o in overheads for k in rounds.KINDS)


def test_roofline_counts_bf16_params_with_f32_moments(report):
  data, _ = report
  bf16 = data["trees"][1]
  fast = next(r for r in bf16["results"] if r["method"] == "ao fast path")
  # p (bf16) read+write, g (bf16) read, m and v (f32) read+write: 22 bytes a parameter.
  assert fast["bytes_per_step"] == 22 * bf16["params"] + 2 * 4  # + the step count
  # With diagnostics, whatever their state holds is read and written too.
  diagnosed = next(r for r in bf16["results"] if r["method"] == "ao.adam + diagnostics")
  assert diagnosed["bytes_per_step"] >= fast["bytes_per_step"]


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


def test_median_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
  # Round 2 is slow for both (a load spike): per-round ratios cancel it.
  baseline, method = [10.0, 30.0, 11.0], [5.0, 15.0, 22.0]
  assert rounds.median_ratio(baseline, method) == 2.0
  assert statistics.median(baseline) / statistics.median(method) == pytest.approx(11 / 15)
  with pytest.raises(ValueError, match="shorter"):
    rounds.median_ratio([1.0, 2.0], [1.0])


def test_round_robin_interleaves_rotates_and_threads_each_carry():
  seen = []
  ticks = itertools.count()

  def call(name):
    def step(carry):
      seen.append((name, carry))
      return carry + 1

    return step

  names = ["a", "b", "c"]
  times = rounds.round_robin(
    {n: call(n) for n in names},
    {n: 100 * i for i, n in enumerate(names)},
    rounds=4,
    repeats=2,
    warmup=1,
    clock=lambda: float(next(ticks)),
  )
  # Warm-up of every method first, then rounds starting one method later each time.
  order = [name for name, _ in seen]
  assert order[:3] == names
  expected = [n for r in range(4) for n in (names[r % 3 :] + names[: r % 3]) for _ in range(2)]
  assert order[3:] == expected
  # Each method's calls saw its own carry, threaded from call to call.
  for i, n in enumerate(names):
    assert [c for m, c in seen if m == n] == list(range(100 * i, 100 * i + 9))
  # Each timed call is one tick of the fake clock, two calls per round.
  assert times == {n: [[1.0, 1.0]] * 4 for n in names}


def _measurement(method, **round_ms):
  wall = statistics.median(round_ms["wall"])
  took = {"outcome": "compiled", "seconds": 0.1, "trace_s": 0.02, "lower_s": 0.03, "xla_s": 0.05}
  return rounds.Measurement(
    method=method,
    bytes_per_step=1000,
    wall_ms=wall,
    device_ms=wall,
    real_ms=wall,
    peak_bytes=1,
    compile=dict.fromkeys(rounds.KINDS, took),
    round_ms=round_ms,
  )


def test_records_are_built_by_keyword():
  with pytest.raises(TypeError):
    rounds.Measurement("ao.adam", 1000, 1.0, 1.0, 1.0, 1, {}, {})
  with pytest.raises(TypeError):
    rounds.Contender("ao.adam", 1000, lambda: None)
  with pytest.raises(TypeError):
    compiles.CompileTime("compiled", 1.0)


def test_row_takes_speedup_and_overhead_per_round():
  base = _measurement("optax.adam", wall=[1.0, 2.0, 4.0], device=[1.0] * 3, real=[2.0] * 3)
  ao = _measurement("ao.adam", wall=[1.0, 1.0, 8.0], device=[2.0] * 3, real=[1.0] * 3)
  diag = _measurement(
    "ao.adam + diagnostics", wall=[1.5, 1.0, 8.0], device=[3.0] * 3, real=[1.1] * 3
  )
  row = report_module.row(diag, 1e9, base, ao)
  assert row["speedup"] == pytest.approx({"wall": 2 / 3, "device": 1 / 3, "real": 2 / 1.1})
  assert row["overhead"] == pytest.approx(
    {"reference": "ao.adam", "wall": 0.0, "device": 0.5, "real": 0.1}
  )
  assert "overhead" not in report_module.row(ao, 1e9, base)
  assert report_module.row(ao, 1e9, base)["speedup_vs_optax"] == 1.0


def test_only_the_fast_paths_diagnostics_row_is_left_out_and_only_on_many_leaves():
  specs = trees.tree_specs("cpu")
  for name, spec in specs.items():
    methods = list(jax_steps.methods(spec))
    left_out = jax_steps.left_out(spec)
    assert set(methods) | set(left_out) == set(JAX_METHODS)
    expected = ["ao fast path + diagnostics"] if name == "many-leaves" else []
    assert list(left_out) == expected


def test_progress_goes_to_stderr_per_compiled_method_and_round(run):
  data, _, _, progress = run
  lines = progress.splitlines()
  assert all(line.startswith("[bench ") for line in lines)
  platform = jax.devices()[0].platform
  assert f"] {platform} ({data['context']['device']}), quick trees: one-leaf, gpt2-bf16" in lines[0]
  for tree in data["trees"]:
    for method in JAX_METHODS:
      for kind in rounds.KINDS:
        assert f"] {tree['name']}: compiling the {kind} program of {method}\n" in progress
        assert f"] {tree['name']}: {kind} program of {method}: compiled in " in progress
    for kind in rounds.KINDS:
      for r in range(1, data["rounds"] + 1):
        assert f"] {tree['name']}: timing {kind}, round {r}/{data['rounds']}" in progress
  assert "skipped" not in progress


def test_report_names_the_real_platform(report):
  data, _ = report
  device = jax.devices()[0]
  assert data["context"]["platform"] == device.platform
  assert data["context"]["device"] == report_module.device_kind(device)


def test_accelerators_get_full_size_trees_and_tpus_no_torch():
  assert bench.tree_scale("tpu", quick=False) == "full"
  assert bench.tree_scale("gpu", quick=False) == "full"
  assert bench.tree_scale("cpu", quick=False) == "cpu"
  assert bench.tree_scale("tpu", quick=True) == "quick"
  assert "tpu" in torch_step.unavailable("tpu")


def test_skipped_torch_is_said_with_its_reason():
  printed, progress = _bench(["--quick", "--trees", "one-leaf", "--no-torch", "--rounds", "1"])
  assert "torch.optim.Adam skipped: --no-torch" in progress
  assert "torch.optim.Adam skipped: --no-torch" in printed
  assert "torch Adam" not in printed


class _Slow:
  """Stands in for a jitted function: tracing takes ``seconds`` (then raises ``error``)."""

  def __init__(self, seconds, error=None):
    self.seconds, self.error = seconds, error

  def trace(self, *args):
    time.sleep(self.seconds)
    if self.error is not None:
      raise self.error
    return self

  def lower(self):
    return self

  def compile(self):
    return "compiled"


def test_a_compile_that_outlasts_the_budget_is_abandoned_and_the_later_ones_skipped():
  budget = compiles.Budget(0.3)
  compiled, took = budget.compile(_Slow(0.01), ())
  assert (compiled, took.outcome) == ("compiled", "compiled")
  assert took.trace_s >= 0.01
  assert took.seconds == took.trace_s + took.lower_s + took.xla_s
  compiled, took = budget.compile(_Slow(3.0), ())  # waited for the rest of the 0.3 s only
  assert (compiled, took.outcome) == (None, "abandoned")
  assert 0.2 < took.seconds < 2.0
  assert budget.still_compiling() == 1
  assert budget.spent == pytest.approx(0.3, abs=0.2)
  compiled, took = budget.compile(_Slow(0.0), ())
  assert (compiled, took) == (None, compiles.CompileTime(outcome="skipped", seconds=0.0))


@pytest.mark.parametrize("seconds", [None, 10.0], ids=["no budget", "budget"])
def test_a_failing_compile_raises_in_the_caller(seconds):
  budget = compiles.Budget(seconds)
  with pytest.raises(ValueError, match="bad tree"):
    budget.compile(_Slow(0.0, ValueError("bad tree")), ())
  assert budget.compile(_Slow(0.0), ())[0] == "compiled"


def test_the_fast_path_compiles_first_then_the_baseline():
  names = ["optax.adam", "ao.adam", "ao fast path", "torch Adam(fused)", "ao fast path + diag"]
  contenders = [rounds.Contender(method=n, bytes_per_step=1, fresh=lambda: None) for n in names]
  order = [c.method for c in rounds.compile_order(contenders, "optax.adam")]
  assert order == [
    "ao fast path",
    "ao fast path + diag",
    "optax.adam",
    "ao.adam",
    "torch Adam(fused)",
  ]


def test_a_tree_over_its_budget_reports_what_was_measured_and_the_lower_bound():
  kinds = list(rounds.KINDS)
  abandoned = {"outcome": "abandoned", "seconds": 60.4}
  skipped = {"outcome": "skipped", "seconds": 0.0}
  fast = _measurement("ao fast path", wall=[1.0, 2.0], device=[1.0, 1.0], real=[1.0, 1.0])
  late = dataclasses.replace(
    _measurement("optax.adam", wall=[1.0], device=[1.0], real=[1.0]),
    wall_ms=None,
    device_ms=None,
    real_ms=None,
    peak_bytes=None,
    compile={"wall": abandoned, "device": skipped, "real": skipped},
    round_ms={},
  )
  rows = [report_module.row(r, 1e9, late) for r in (late, fast)]
  assert rows[0]["speedup"] == dict.fromkeys(kinds)  # nothing to compare with
  assert rows[0]["compile_s"] == 60.4  # a lower bound, marked in the table
  assert rows[0]["real_compile_s"] is None
  data = {
    "context": report_module.context("cpu", [0.0, 0.0, 0.0]),
    "copy_bandwidth_GBps": 1.0,
    "memory_source": "XLA",
    "rounds": 2,
    "repeats": 1,
    "scan_steps": 2,
    "trees": [
      {
        "name": "many-leaves",
        "params": 8,
        "leaves": 2,
        "param_dtype": "float32",
        "moment_dtype": "float32",
        "left_out": {},
        "compile_budget_s": 60.0,
        "compile_spent_s": 60.5,
        "results": rows,
      }
    ],
  }
  printed = report_module.table(data)
  head, compile_table = printed.split("\ncompile seconds per program: ")
  optax_row = next(line for line in head.splitlines() if line.startswith("optax.adam"))
  assert optax_row.split()[1:] == ["-"] * 5 + [">60.40", "-", "-"]
  assert "many-leaves 60.5 of 60 s" in compile_table.splitlines()[0]
  optax_compiles = next(line for line in compile_table.splitlines() if " optax.adam " in line)
  assert optax_compiles.split()[2:] == [">60.4", "abandoned", "skipped", "skipped"]
