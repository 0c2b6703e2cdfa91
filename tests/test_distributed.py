"""Training across processes, on one machine: 2 processes of 4 CPU devices on 127.0.0.1.

The processes run tests/distributed_checks.py, started by
:func:`adam_optax.distributed.launch` (a fresh port per run, retried if taken;
every process killed at the deadline). The training run and its single-process
reference run once per module; the tests assert on what they wrote.

Rounding: a data-parallel gradient is summed over devices and processes in
another order than on one device, so its runs differ from one device's by
rounding, which Adam's normalization m/sqrt(v) carries into every
coordinate; ``scaled ulp`` measures that per leaf in ulp of the leaf's
largest entry (elementwise ulp blow up at values near 0).
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Any

import jax
import pytest
from distributed_checks import OPTIMIZERS, TIMEOUTS, UNREACHABLE_TIMEOUT
from fresh_python import ROOT, run_python

from adam_optax import distributed
from adam_optax.checkpoint import restore_checkpoint

CHECKS = "tests/distributed_checks.py"
# Failures end every process within their timeout plus what JAX takes beyond
# it (measured: up to 5.2 s) and a margin for a loaded machine.
SLACK = 10


def _env() -> dict[str, str]:
  """The processes' environment: the repository importable, JAX on CPU devices (gloo)."""
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
  }


def _launch(scenario: str, out: pathlib.Path) -> list[subprocess.CompletedProcess[str]]:
  return distributed.launch(
    [CHECKS, scenario, str(out)], 2, local_devices=4, env=_env(), timeout=240
  )


def _failed(runs: list[subprocess.CompletedProcess[str]]) -> str:
  return "\n".join(
    f"process {i}: exit {r.returncode}\n{r.stderr[-3000:]}" for i, r in enumerate(runs)
  )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
  """The 2-process training run, then the 1-process reference, as one dict of results.

  Run once per session: under pytest-xdist the workers share the session's
  directory, and the first to take the lock runs the processes for all.
  """
  root = tmp_path_factory.getbasetemp()
  if "PYTEST_XDIST_WORKER" in os.environ:
    root = root.parent
  out, cached = root / "distributed", root / "distributed.json"
  with (root / "distributed.lock").open("w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not cached.exists():
      out.mkdir(exist_ok=True)
      runs = _launch("train", out)
      assert all(run.returncode == 0 for run in runs), _failed(runs)
      single = run_python([CHECKS, "single", str(out)], host_devices=1)
      assert single.returncode == 0, single.stderr[-4000:]
      found = json.loads((out / "train.json").read_text())
      cached.write_text(json.dumps(found | json.loads(single.stdout.splitlines()[-1])))
  return json.loads(cached.read_text())


def test_the_mesh_spans_both_processes(results: dict[str, Any]) -> None:
  assert (results["processes"], results["devices"]) == (2, 8)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_data_parallel_training_equals_one_process(results: dict[str, Any], name: str) -> None:
  for mode in ("plain", "zero1"):
    # After 10 steps, measured: 4 (adam) and 4.5 (adamw) ulp of each leaf's
    # largest param, 5 and 4.75 for the moments; elementwise up to 5,345 ulp
    # at params near 0.
    assert results[f"{name}/{mode}_vs_single/params_scaled_ulp"] <= 16, mode
    assert results[f"{name}/{mode}_vs_single/state_scaled_ulp"] <= 16, mode


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_zero1_holds_a_slice_per_process_with_the_same_numbers(
  results: dict[str, Any], name: str
) -> None:
  plain, zero1 = results[f"{name}/bytes/plain"], results[f"{name}/bytes/zero1"]
  # Plain data parallel: every device holds both moments whole.
  assert plain["process"] == 4 * plain["total"]
  assert plain["device"] == plain["total"]
  # ZeRO-1: each of the 8 devices an eighth, so each process half.
  assert zero1["process"] == zero1["total"] // 2
  assert zero1["device"] == zero1["total"] // 8
  # ZeRO-1 changes where Adam runs, not what it computes: measured bit for bit
  # across the processes (within one process's 8 devices, 2 ulp: test_sharding.py).
  assert results[f"{name}/zero1_vs_plain_ulp"] == 0


def test_a_checkpoint_of_two_processes_restores_anywhere_and_resumes_exactly(
  results: dict[str, Any],
) -> None:
  # Every restore is bit for bit: the same layout, a (2, 4) mesh, one device.
  assert results["restored/same_layout_ulp"] == 0
  assert results["restored/other_layout_ulp"] == 0
  assert results["restored/one_process_ulp"] == 0
  assert results["restored/other_layout_w1_mu"] == ["P('data', None)", [64, 64]]
  # Into jax.eval_shape targets (no sharding: the default device), float32 and 8-bit.
  for name in ("adam", "adam_8bit"):
    assert results[f"restored/{name}/eval_shape_ulp"] == 0
    assert results[f"restored/{name}/eval_shape_devices"] == ["cpu:0"]
  # Resumed in the layout it was saved from: what never stopped, bit for bit.
  assert results["resumed/same_layout_ulp"] == 0
  # Elsewhere the gradient is summed in another order: rounding only.
  assert results["resumed/other_layout_scaled_ulp"] <= 16  # measured: 3
  assert results["resumed/one_process_scaled_ulp"] <= 16  # measured: 4


def test_a_process_killed_while_saving_ends_the_run_and_leaves_no_checkpoint(
  tmp_path: pathlib.Path,
) -> None:
  runs = _launch("die_in_save", tmp_path)
  ended = time.time()
  killed_at = float(runs[1].stdout.split("killed at ")[1].split()[0])
  assert runs[1].returncode == -9
  # Process 0 does not hang at the save's barrier: it aborts, naming the dead task.
  assert runs[0].returncode != 0
  assert "the save returned" not in runs[0].stdout
  assert "stopped sending heartbeats" in runs[0].stderr
  assert ended - killed_at < TIMEOUTS["heartbeat_timeout"] + SLACK  # measured: 5.5 s
  # The save had started (process 0 wrote its part), but nothing was committed.
  (partial,) = tmp_path.glob("ckpt.orbax-checkpoint-tmp*")
  assert any(partial.rglob("ocdbt.process_0"))
  for directory in (tmp_path / "ckpt", partial):
    with pytest.raises(ValueError, match="not a complete checkpoint"):
      restore_checkpoint(directory, {})


def test_an_error_in_one_process_ends_the_others_at_the_shutdown_timeout(
  tmp_path: pathlib.Path,
) -> None:
  runs = _launch("raise_in_training", tmp_path)
  ended = time.time()
  raised_at = float(runs[0].stdout.split("raised at ")[1].split()[0])
  # Process 0 raised and waited at exit; process 1, inside a collective, is not left hanging.
  assert "RuntimeError: a bug in process 0" in runs[0].stderr
  assert "process 1 trained on" not in runs[1].stdout
  assert all(run.returncode != 0 for run in runs), _failed(runs)
  assert "Shutdown barrier has failed" in runs[1].stderr
  assert ended - raised_at < TIMEOUTS["shutdown_timeout"] + SLACK  # measured: 5.6 s


def test_a_lone_process_ends_in_bounded_time_with_a_clear_error(tmp_path: pathlib.Path) -> None:
  # Lone processes of 2-process runs: process 1 finds no coordinator, a process 0
  # (the coordinator) no peer, and another process 0 a port that a socket holds.
  env = _env()
  env.pop("XLA_FLAGS", None)
  messages = {  # the three cases in the order they end
    "no_coordinator": "TimeoutError: process 1 could not reach the coordinator",
    "no_peer": "DEADLINE_EXCEEDED",
    "port_held": distributed._PORT_TAKEN[0],
  }
  processes, ended = [], []
  with socket.socket() as holder:
    holder.bind(("127.0.0.1", 0))
    ports = [distributed._free_port(), distributed._free_port(), holder.getsockname()[1]]
    try:
      for case, process_id, port in zip(messages, (1, 0, 0), ports, strict=True):
        process_env = {
          **env,
          distributed.COORDINATOR: f"127.0.0.1:{port}",
          distributed.NUM_PROCESSES: "2",
          distributed.PROCESS_ID: str(process_id),
        }
        with (tmp_path / case).open("w") as out:
          command = [sys.executable, CHECKS, "unreachable", str(tmp_path)]
          processes.append(
            subprocess.Popen(command, env=process_env, cwd=ROOT, stdout=out, stderr=out)
          )
      for process in processes[:2]:  # process 1 gives up first
        process.wait(timeout=60)
        ended.append(time.time())
      processes[2].wait(timeout=60)
    finally:
      for process in processes:
        process.kill()
        process.wait()
  outputs = {case: (tmp_path / case).read_text() for case in messages}
  for (case, message), process in zip(messages.items(), processes, strict=True):
    assert process.returncode != 0, case
    assert message in outputs[case], (case, outputs[case][-3000:])
  # From the call to initialize to the end: measured 4.0 s and 8.2 s.
  for case, end in zip(("no_coordinator", "no_peer"), ended, strict=True):
    joined = float(outputs[case].split("joining at ")[1].split()[0])
    assert end - joined < UNREACHABLE_TIMEOUT + SLACK, case


def test_initialize_outside_a_launch_needs_its_arguments() -> None:
  with pytest.raises(ValueError, match=distributed.COORDINATOR):
    distributed.initialize()
  assert jax.process_count() == 1


# Loses its port as JAX does (process 0 prints what gRPC prints, then ends),
# if it was given the port of argv[1]; else prints its coordinator's address.
LOSES_PORT = """
import os, sys, time
address = os.environ["ADAM_OPTAX_COORDINATOR"]
if address.endswith(":" + sys.argv[1]):
  if os.environ["ADAM_OPTAX_PROCESS_ID"] == "0":
    sys.exit("Failed to add port to server")
  time.sleep(60)  # would wait for a coordinator that never comes
print(address)
"""


def test_a_run_that_lost_its_port_starts_again_on_another(monkeypatch: pytest.MonkeyPatch) -> None:
  taken = distributed._free_port()
  ports = iter([taken])
  fresh = distributed._free_port
  monkeypatch.setattr(distributed, "_free_port", lambda: next(ports, None) or fresh())
  started = time.monotonic()
  runs = distributed.launch(["-c", LOSES_PORT, str(taken)], 2, timeout=30)
  assert all(run.returncode == 0 for run in runs), _failed(runs)
  (address,) = {run.stdout.strip() for run in runs}
  assert address != f"127.0.0.1:{taken}"
  # The first attempt's process 1 was stopped, not waited for.
  assert time.monotonic() - started < 20


JOIN = (
  "import os; from adam_optax import distributed; {before}"
  "distributed.initialize(initialization_timeout=20); print(os.environ[distributed.COORDINATOR])"
)


def test_processes_of_two_runs_that_meet_on_one_port_refuse_to_train_together() -> None:
  # As if two launches had drawn the same port: each process has another run id.
  before = "os.environ[distributed.RUN_ID] = os.environ[distributed.PROCESS_ID]; "
  with pytest.raises(RuntimeError, match="every one of 1 coordinator ports was taken"):
    distributed.launch(["-c", JOIN.format(before=before)], 2, env=_env(), timeout=120, attempts=1)
