"""Wall time and peak memory of the default `dlsec audit` (digits SimpleNet), cold and resumed.

Usage: python benchmarks/audit_wall.py [--repeat 3]
Writes benchmarks/results/audit.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "audit.md"


def run_once(run_dir: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `dlsec audit` in a fresh process."""
    script = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        f"rc = subprocess.run([sys.executable, '-m', 'dlsec.cli', 'audit', '--quiet', "
        f"'--out', {str(run_dir)!r}], stdout=subprocess.DEVNULL).returncode\n"
        "wall = time.perf_counter() - t\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(rc, wall, peak)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    rc, wall, peak = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"dlsec audit failed with exit code {rc}")
    return float(wall), float(peak)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cold, resumed, peaks = [], [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            wall, peak = run_once(run_dir)
            cold.append(wall)
            peaks.append(peak)
            wall2, _ = run_once(run_dir)
            resumed.append(wall2)
    sections = "dataset, model, training, accuracy, and every other default section"
    lines = [
        "## Default audit: wall time and peak memory",
        "",
        f"Command: `python benchmarks/audit_wall.py --repeat {args.repeat}` "
        f"(runs `dlsec audit --quiet` in a fresh process; {os.cpu_count()} CPU cores, "
        f"{platform.machine()}, Python {platform.python_version()}). Measured "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| run | median wall (s) | min wall (s) | peak RSS (MiB) |",
        "|---|---|---|---|",
        f"| cold (trains the model, runs {sections}) | {statistics.median(cold):.1f} | "
        f"{min(cold):.1f} | {max(peaks):.0f} |",
        f"| resumed (everything cached) | {statistics.median(resumed):.1f} | "
        f"{min(resumed):.1f} | — |",
        "",
        "Targets: the foundation's sections within 20 s and 1 GiB; the whole default audit "
        "within 90 s.",
        "",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
