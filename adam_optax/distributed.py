"""Many processes, one training run: JAX's distributed runtime with bounded waits.

Nothing here communicates for the optimizer: once every process has called
:func:`initialize`, ``jax.devices()`` lists the devices of all of them, a mesh
spans them, and XLA inserts the collectives (the gradient all-reduce, ZeRO-1's
gather) from the shardings. This module adds only what a run needs around
:func:`jax.distributed.initialize`:

* **Bounded waits.** A process that cannot reach the coordinator, a peer that
  dies (it stops sending heartbeats), or a peer that failed and waits at exit,
  ends every other process with an error after a set time, never a hang.
* **CPU collectives.** ``gloo``, so that processes of host devices can run a
  mesh together; this is how a multi-host run is tested on one machine.
* **A local launcher.** :func:`launch` starts the processes of such a run on
  127.0.0.1, as ``torchrun --standalone`` does for PyTorch.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import IO

import jax
import numpy as np
from jax.experimental import multihost_utils

# What :func:`launch` tells each process, read by :func:`initialize`.
COORDINATOR = "ADAM_OPTAX_COORDINATOR"
NUM_PROCESSES = "ADAM_OPTAX_NUM_PROCESSES"
PROCESS_ID = "ADAM_OPTAX_PROCESS_ID"
RUN_ID = "ADAM_OPTAX_RUN_ID"
# What a process prints when its coordinator port was not its own.
_PORT_TAKEN = ("Failed to add port to server", "shares its coordinator port")


def _given_or_launched(value: str | int | None, variable: str) -> str | int:
  """An argument of :func:`initialize`, or what :func:`launch` set in its place."""
  if value is not None:
    return value
  if variable not in os.environ:
    raise ValueError(
      f"initialize() needs its arguments, or {variable} set as launch() sets it for each process"
    )
  return os.environ[variable]


def _wait_for_coordinator(address: str, process_id: int, timeout: float) -> None:
  """Returns once ``address`` accepts connections; raises after ``timeout`` seconds."""
  host, port = address.rsplit(":", 1)
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=1).close()
      return
    except OSError as error:
      if time.monotonic() > deadline:
        raise TimeoutError(
          f"process {process_id} could not reach the coordinator at {address} within "
          f"{timeout:g} s ({error}); is process 0 running, with the same address?"
        ) from None
      time.sleep(0.1)


def _check_one_run(run_id: int) -> None:
  """Raises unless every process was started by the same :func:`launch`.

  gRPC servers share a port (``SO_REUSEPORT``), so two runs given the same
  port would not fail to start: their processes would pair up across runs.
  """
  seen = int(multihost_utils.broadcast_one_to_all(np.int32(run_id)))
  if seen != run_id:
    raise RuntimeError(
      f"process {jax.process_index()} shares its coordinator port with another run "
      f"(run id {seen}, expected {run_id}); start it again on another port."
    )


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  initialization_timeout: int = 60,
  heartbeat_timeout: int = 10,
  shutdown_timeout: int = 30,
) -> None:
  """Joins this process to a run of ``num_processes``: :func:`jax.distributed.initialize`.

  Call it first, before any other JAX call. The arguments not given are read
  from what :func:`launch` sets. The coordinator (in process 0) listens on
  ``coordinator_address`` only, not on every interface, so a run on 127.0.0.1
  stays on the machine. The three timeouts bound every wait of the run (JAX's
  own defaults are 300, 100 and 300 s):

  * a process that cannot reach the coordinator raises :class:`TimeoutError`
    after ``initialization_timeout``; process 0, whose peers do not all
    arrive in that time, aborts;
  * when a process dies, the others abort ``heartbeat_timeout`` seconds
    later, even in the middle of a collective;
  * a process that ends (on an error, say) waits at most ``shutdown_timeout``
    for the others to end too; then all abort. Processes that finish
    normally reach that barrier within one step of each other.

  An abort prints ``Terminating process because the JAX distributed service
  detected fatal errors`` and the reason; the exit status is not 0.

  Examples:
    In each process of a run that :func:`launch` started, first thing:

    >>> import jax
    >>> from adam_optax import distributed
    >>> distributed.initialize()  # doctest: +SKIP
    >>> jax.process_count(), jax.device_count()  # doctest: +SKIP
    (2, 8)

    Elsewhere (a cluster), with the same address in every process:

    >>> distributed.initialize("10.0.0.1:1234", 4, rank, heartbeat_timeout=60)  # doctest: +SKIP

  Args:
    coordinator_address: ``host:port`` of process 0, the same in every process.
    num_processes: how many processes the run has.
    process_id: this process's number, ``0 .. num_processes - 1``.
    initialization_timeout: seconds to wait for the coordinator and the peers.
    heartbeat_timeout: seconds without a heartbeat after which a process is dead.
    shutdown_timeout: seconds an ending process waits for the others.

  Raises:
    ValueError: if an argument is neither given nor set by :func:`launch`.
    TimeoutError: if the coordinator cannot be reached in time.
    RuntimeError: if the processes that met were started by different
      :func:`launch` calls (they were given the same port).

  References:
    JAX, "Multi-controller runtime" and :func:`jax.distributed.initialize`
    (https://docs.jax.dev/en/latest/multi_process.html).
  """
  address = _given_or_launched(coordinator_address, COORDINATOR)
  count = int(_given_or_launched(num_processes, NUM_PROCESSES))
  index = int(_given_or_launched(process_id, PROCESS_ID))
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  start = time.monotonic()
  if index != 0:
    _wait_for_coordinator(address, index, initialization_timeout)
  jax.distributed.initialize(
    address,
    count,
    index,
    coordinator_bind_address=address,
    initialization_timeout=max(1, round(initialization_timeout - (time.monotonic() - start))),
    heartbeat_timeout_seconds=heartbeat_timeout,
    shutdown_timeout_seconds=shutdown_timeout,
  )
  if RUN_ID in os.environ:
    _check_one_run(int(os.environ[RUN_ID]))


def _free_port() -> int:
  """A port of 127.0.0.1 that no socket holds now, as the kernel picks one."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def _read(log: IO[bytes]) -> str:
  """All a process wrote to ``log`` so far, without moving the offset it writes at."""
  size = os.fstat(log.fileno()).st_size
  return os.pread(log.fileno(), size, 0).decode(errors="replace")


def on_host_devices(env: Mapping[str, str], count: int) -> dict[str, str]:
  """``env`` for a process that runs JAX on ``count`` CPU devices, whatever accelerator is here.

  ``XLA_FLAGS`` gains ``--xla_force_host_platform_device_count`` (it only splits the
  CPU) and ``JAX_PLATFORMS=cpu`` names the platform, which JAX would otherwise take
  to be a GPU. Each matrix product stays on its own device's thread
  (``--xla_cpu_multi_thread_eigen=false``): the devices and XLA:CPU's pieces of a
  product share one pool of threads, and on a busy machine a device waiting for its
  product's pieces while the others waited for it in a collective was seen to hang
  for good.

  Examples:
    >>> from adam_optax.distributed import on_host_devices
    >>> on_host_devices({}, 8)["JAX_PLATFORMS"]
    'cpu'

  Args:
    env: the environment to start from (its ``XLA_FLAGS`` are kept, first).
    count: the number of CPU devices.

  Returns:
    A new environment.
  """
  flags = (
    f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count} "
    "--xla_cpu_multi_thread_eigen=false"
  )
  return {**env, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}


def _run_until(
  args: Sequence[str], num_processes: int, env: Mapping[str, str], timeout: float, deadline: float
) -> list[subprocess.CompletedProcess[str]]:
  """One attempt of :func:`launch`, on a fresh port: waits for every process to end."""
  common = {
    **env,
    COORDINATOR: f"127.0.0.1:{_free_port()}",
    NUM_PROCESSES: str(num_processes),
    RUN_ID: str(secrets.randbits(31)),
    "PYTHONUNBUFFERED": "1",  # what a process printed before an abort is kept
  }
  command = [sys.executable, *args]
  with contextlib.ExitStack() as files:
    logs = [
      (
        files.enter_context(tempfile.TemporaryFile()),
        files.enter_context(tempfile.TemporaryFile()),
      )
      for _ in range(num_processes)
    ]
    processes = []
    try:
      for index, (out, err) in enumerate(logs):
        process_env = {**common, PROCESS_ID: str(index)}
        processes.append(subprocess.Popen(command, stdout=out, stderr=err, env=process_env))
      while any(process.poll() is None for process in processes):
        if time.monotonic() > deadline:
          stderr = "".join(_read(err) for _, err in logs)
          raise subprocess.TimeoutExpired(command, timeout, stderr=stderr)
        # Lost the port: the others would only wait for a coordinator that is not theirs.
        if processes[0].poll() not in (None, 0) and any(
          m in _read(logs[0][1]) for m in _PORT_TAKEN
        ):
          break
        time.sleep(0.05)
    finally:
      for process in processes:
        if process.poll() is None:
          process.kill()
        process.wait()
    return [
      subprocess.CompletedProcess(command, process.returncode, _read(out), _read(err))
      for process, (out, err) in zip(processes, logs, strict=True)
    ]


def launch(
  args: Sequence[str],
  num_processes: int,
  *,
  local_devices: int | None = None,
  env: Mapping[str, str] | None = None,
  timeout: float = 300.0,
  attempts: int = 3,
) -> list[subprocess.CompletedProcess[str]]:
  """Runs ``python *args`` as the ``num_processes`` processes of one run on 127.0.0.1.

  Each process finds its coordinator address, process count and number in
  its environment, where :func:`initialize` reads them. The port is one the
  kernel gives to 127.0.0.1 at the moment; if another run took it meanwhile
  (process 0 cannot listen, or :func:`initialize` finds another run's
  processes), the whole run starts again on a new port, up to ``attempts``
  times. Every process is killed when ``timeout`` runs out.

  Examples:
    >>> from adam_optax.distributed import launch
    >>> code = "import os; print(os.environ['ADAM_OPTAX_PROCESS_ID'])"
    >>> [run.stdout.strip() for run in launch(["-c", code], 2)]
    ['0', '1']

  Args:
    args: the interpreter's arguments: a script and its arguments, or ``-c`` and code.
    num_processes: how many processes to start.
    local_devices: if given, each process runs JAX on that many CPU devices, also
      on a machine with a GPU (:func:`on_host_devices`).
    env: the processes' environment (default: this process's).
    timeout: seconds after which every process still running is killed.
    attempts: how many ports to try.

  Returns:
    The finished processes in process order, their output captured as text.

  Raises:
    subprocess.TimeoutExpired: if the processes did not all end in ``timeout``.
    RuntimeError: if every attempt lost its port to another run.

  References:
    PyTorch's ``torchrun --standalone``, which does the same for
    ``torch.distributed`` (https://pytorch.org/docs/stable/elastic/run.html).
  """
  env = dict(os.environ if env is None else env)
  if local_devices is not None:
    env = on_host_devices(env, local_devices)
  deadline = time.monotonic() + timeout
  for _ in range(attempts):
    runs = _run_until(args, num_processes, env, timeout, deadline)
    if not any(message in run.stderr for run in runs for message in _PORT_TAKEN):
      return runs
  raise RuntimeError(f"every one of {attempts} coordinator ports was taken by another run")
