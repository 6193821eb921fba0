"""The machine a benchmark ran on, read from the machine itself (never typed in).

Every benchmark quotes :func:`describe` in its results, so a reader sees the cores, the
CPU, the load other jobs put on it, and the software that produced each figure.

Example:
    >>> from machine import describe, load_average                     # doctest: +SKIP
    >>> describe(threads=1)                                             # doctest: +SKIP
    '2 CPU cores (Intel(R) Xeon(R) Processor, x86_64, Linux), load average 1.52 / ...'
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cores() -> int:
    """CPU cores this process may run on (its affinity set where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (runnable jobs), e.g. ``'1.52 / 1.20 / 0.98'``."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except (AttributeError, OSError):
        return "unavailable"


def describe(*, threads: int | str | None = None) -> str:
    """One sentence: cores, CPU, load now, Python, torch and its threads, today's date.

    ``threads``: the torch threads the benchmark runs with (default: torch's current
    setting), or a phrase such as ``"threads as the audit chooses them"``.
    """
    import torch

    n = threads if threads is not None else torch.get_num_threads()
    thread_text = n if isinstance(n, str) else f"{n} thread{'' if n == 1 else 's'}"
    total = os.cpu_count() or cores()
    usable = cores()
    core_text = f"{usable} CPU cores" if usable == total else f"{usable} of {total} CPU cores"
    return (
        f"{core_text} ({cpu_model()}, {platform.machine()}, {platform.system()}), load "
        f"average {load_average()} (1 / 5 / 15 min) at the start, Python "
        f"{platform.python_version()}, torch {torch.__version__} with {thread_text}, measured "
        f"{time.strftime('%Y-%m-%d')}"
    )


def write_results(dest: Path, text: str) -> None:
    """Write a benchmark's results file whole: a temporary file beside it, renamed onto it
    (an interrupted run never leaves half a results file for ``run_all.py`` to join)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(dest)
