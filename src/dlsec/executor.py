"""Where independent trainings run: one after another here, or as tasks on a Ray cluster.

An :class:`Executor` maps a module-level function over named tasks,
``executor.map(fn, [(name, args), ...]) -> [fn(*args), ...]`` in task order. Every place
that trains many models (LiRA's shadows, the matrix's defended rows, DP at several
epsilons) hands its trainings to one, so the same run is sequential by default
(:class:`SequentialExecutor`) and spread over a local Ray cluster with ``--workers N``
or an existing one with ``--ray-address ADDR`` (:class:`RayExecutor`).

Results do not depend on where a task ran. The rule, the same in both executors:

- a task computes with ``threads`` torch threads (default 1), restored afterwards;
- a task's seeds are in its arguments (the caller's convention: the run's seed plus the
  task's name, e.g. ``config.seed + m`` for shadow ``m``); anything in the task that draws
  from torch's global CPU generator draws from one seeded by :func:`task_seed` of the
  task's name, forked so the caller's generator state is the same after :meth:`map` as
  before.

So a task gives bit-identical tensors in this process and in a Ray worker (the tests compare
weights by the sha256 of their bytes). ``fn`` must be importable by name (a module-level
function, no lambda); its arguments travel pickled.

Ray is optional (``pip install 'dlsec[ray]' -c constraints.txt``); without it a
:class:`RayExecutor` is a one-line :class:`ExecutorError` that says so.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from dlsec.errors import DlsecError

Task = tuple[str, tuple[Any, ...]]
"""``(name, args)``: a task's name (unique in one :meth:`Executor.map`) and its arguments."""

RAY_INSTALL = "pip install 'dlsec[ray]' -c constraints.txt"
CONNECT_TIMEOUT_S = 5.0


class ExecutorError(DlsecError):
    """A bad executor setting (workers, address) or Ray missing or unreachable."""


def task_seed(name: str) -> int:
    """The seed of torch's global CPU generator inside task ``name``: the first 63 bits of
    ``sha256("task/<name>")``."""
    digest = hashlib.sha256(f"task/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Compute with ``n`` torch threads inside the block; the previous number after it."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def run_task(fn: Callable[..., Any], name: str, args: tuple[Any, ...], threads: int) -> Any:
    """One task under the rule of this module: ``threads`` torch threads, the global CPU
    generator seeded by :func:`task_seed` of ``name`` and restored afterwards."""
    with torch_threads(threads), torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(task_seed(name))
        return fn(*args)


def _check_tasks(tasks: Sequence[Task]) -> None:
    names = [name for name, _ in tasks]
    if len(set(names)) != len(names):
        raise ExecutorError("task names must be unique in one map: "
                            f"{sorted({n for n in names if names.count(n) > 1})}")


class Executor:
    """Runs named tasks; see the module docstring for what stays the same everywhere."""

    workers: int = 1

    def __init__(self, *, threads: int = 1) -> None:
        if int(threads) < 1:
            raise ExecutorError(f"threads per task must be >= 1, got {threads}")
        self.threads = int(threads)

    @property
    def parallel(self) -> bool:
        """Whether tasks may run at the same time (more than one worker)."""
        return self.workers > 1

    def map(self, fn: Callable[..., Any], tasks: Sequence[Task]) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what this executor started (nothing for the sequential one)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> str:
        return "sequential"


class SequentialExecutor(Executor):
    """Runs the tasks one after another in this process (the default)."""

    def map(self, fn: Callable[..., Any], tasks: Sequence[Task]) -> list[Any]:
        _check_tasks(tasks)
        return [run_task(fn, name, tuple(args), self.threads) for name, args in tasks]


def check_workers(workers: int) -> int:
    """``workers`` as an int >= 1, else a one-line :class:`ExecutorError`."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ExecutorError(f"--workers must be a whole number >= 1, got {workers!r}")
    return workers


def check_address(address: str) -> str:
    """``address`` of a running Ray cluster (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``),
    checked to answer a TCP connection within :data:`CONNECT_TIMEOUT_S`."""
    text = str(address).strip()
    if text == "auto":
        return text
    hostport = text.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExecutorError(f"--ray-address: {address!r} is not HOST:PORT (or ray://HOST:PORT)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ExecutorError(f"--ray-address: no Ray cluster answers at {text} "
                            f"({exc.strerror or exc})") from None
    return text


def import_ray() -> Any:
    """The ``ray`` module, or a one-line :class:`ExecutorError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--workers/--ray-address need Ray: {RAY_INSTALL}") from None
    return ray


class RayExecutor(Executor):
    """Runs each task as a Ray remote task (one CPU each).

    With ``address`` it connects to that cluster; otherwise it starts a local one of
    ``workers`` CPUs on the loopback interface, without the dashboard. Ray already
    initialised in this process (a caller's cluster) is used as it is. :meth:`close` (or
    leaving the ``with`` block) shuts down only what this executor started or connected.
    Pickled (inside a task's arguments), it becomes a :class:`SequentialExecutor`: a task
    does not start clusters of its own.
    """

    def __init__(self, workers: int | None = None, *, address: str | None = None,
                 threads: int = 1) -> None:
        super().__init__(threads=threads)
        self.address = check_address(address) if address else None
        self.workers = check_workers(workers) if workers is not None else 0
        if self.address is None and not self.workers:
            raise ExecutorError("a Ray executor needs --workers N or --ray-address ADDR")
        if self.address is None and "ray" not in sys.modules:
            # a local cluster on the loopback interface: Ray reads this once, at import,
            # and then takes 127.0.0.1 as the node's address (else the host's own address)
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        self._ray = import_ray()
        self._owned = False
        self._remote: Any = None
        self.start_seconds = 0.0

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_sequential, (self.threads,))

    @property
    def parallel(self) -> bool:
        return True

    def start(self) -> None:
        """Start (or connect to) the cluster, once."""
        ray = self._ray
        if self._remote is not None:
            return
        t0 = time.perf_counter()
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                          configure_logging=False)
            try:
                if self.address:
                    ray.init(address=self.address, **kwargs)
                else:
                    ray.init(num_cpus=self.workers, _node_ip_address="127.0.0.1",
                             dashboard_host="127.0.0.1", **kwargs)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                where = self.address or f"a local cluster of {self.workers}"
                raise ExecutorError(f"Ray: could not start or reach {where}: {first}") from None
            self._owned = True
        if not self.workers:
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(num_cpus=1)(run_task)
        self.start_seconds = time.perf_counter() - t0

    def map(self, fn: Callable[..., Any], tasks: Sequence[Task]) -> list[Any]:
        _check_tasks(tasks)
        if not tasks:
            return []
        self.start()
        refs = [self._remote.options(name=str(name)[:100]).remote(fn, name, tuple(args),
                                                                  self.threads)
                for name, args in tasks]
        try:
            return list(self._ray.get(refs))
        except self._ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            if isinstance(cause, DlsecError):
                raise type(cause)(*cause.args) from None
            raise

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False
        self._remote = None

    def describe(self) -> str:
        return f"ray ({self.address or 'local'}, {self.workers} workers)"


def _sequential(threads: int) -> SequentialExecutor:
    return SequentialExecutor(threads=threads)


def make_executor(workers: int | None = None, address: str | None = None, *,
                  threads: int = 1) -> Executor:
    """The executor the flags ask for: ``--workers`` > 1 or ``--ray-address`` a
    :class:`RayExecutor`, else a :class:`SequentialExecutor` (``--workers 1``)."""
    if workers is not None:
        check_workers(workers)
    if address or (workers is not None and workers > 1):
        return RayExecutor(workers, address=address, threads=threads)
    return SequentialExecutor(threads=threads)


__all__ = [
    "CONNECT_TIMEOUT_S",
    "RAY_INSTALL",
    "Executor",
    "ExecutorError",
    "RayExecutor",
    "SequentialExecutor",
    "Task",
    "check_address",
    "check_workers",
    "import_ray",
    "make_executor",
    "run_task",
    "task_seed",
    "torch_threads",
]
