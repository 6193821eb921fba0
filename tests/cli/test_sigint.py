"""Ctrl-C ends ``dlsec`` with exit 130 and no traceback: during start-up (while Python
imports torch and the commands) as later (the audit then says how to resume)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _interrupt_when(proc: subprocess.Popen, marker: str, timeout: float = 120) -> list[str]:
    """Read stderr until a line containing ``marker``, then send SIGINT; the lines read."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            proc.send_signal(signal.SIGINT)
            return seen
        assert time.monotonic() < deadline, "marker never seen"
    raise AssertionError(f"process ended before {marker!r}: {''.join(seen)[-2000:]}")


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_sigint_while_importing_is_quiet(tmp_path: Path) -> None:
    # -X importtime prints a line as each module finishes importing: once typer is in, the
    # start-up handler is installed and torch is still to come (seconds)
    proc = _start([sys.executable, "-X", "importtime", "-m", "dlsec.cli", "audit", "--out",
                   "run", "-q"], tmp_path)
    _interrupt_when(proc, "| typer\n")
    code, err = _finish(proc)
    assert code == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.splitlines()[-1] == "interrupted"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("delay", [0.3, 0.6, 1.2])
def test_sigint_at_a_fixed_delay_has_no_traceback(tmp_path: Path, delay: float) -> None:
    exe = shutil.which("dlsec", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "dlsec.cli"]
    proc = _start([*cmd, "audit", "--out", "run", "-q"], tmp_path)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    code, err = _finish(proc)
    assert code == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted")


def test_sigint_after_start_up_keeps_the_resume_message(tmp_path: Path) -> None:
    proc = _start([sys.executable, "-m", "dlsec.cli", "audit", "--out", "run", "--epochs", "2",
                   "--sections", "dataset,accuracy"], tmp_path)
    _interrupt_when(proc, "model: trained")  # the audit is running its sections now
    code, err = _finish(proc)
    assert code == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted: rerun the same command to resume"
