"""Run every benchmark script and join their results into BENCHMARKS.md.

Usage: python benchmarks/run_all.py [--only NAME ...] [--collect-only]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

HEADER = """# Benchmarks

Produced by `make bench` (which runs `python benchmarks/run_all.py`); each part below
names the command that produced it and the machine it ran on. Ratios compare runs made
side by side in one process on the same model, data, batches and threads.
"""


def collect() -> None:
    parts = [HEADER]
    for path in sorted(RESULTS.glob("*.md")):
        parts.append(path.read_text(encoding="utf-8").strip() + "\n")
    tmp = ROOT / "BENCHMARKS.md.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(ROOT / "BENCHMARKS.md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names (file stems)")
    parser.add_argument("--collect-only", action="store_true")
    args = parser.parse_args()
    failed = []
    if not args.collect_only:
        scripts = sorted(p for p in HERE.glob("*.py") if p.name != "run_all.py" and not p.name.startswith("_"))
        for script in scripts:
            if args.only and script.stem not in args.only:
                continue
            print(f"== {script.name}", flush=True)
            if subprocess.run([sys.executable, str(script)], cwd=ROOT).returncode != 0:
                failed.append(script.name)
    collect()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
