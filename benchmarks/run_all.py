"""Run the benchmark scripts and join their results into BENCHMARKS.md (and README.md's figures).

Usage: python benchmarks/run_all.py [--only NAME ...] [--join-only]

Each script writes ``benchmarks/results/<name>.md``. Joining concatenates those files
into BENCHMARKS.md and copies each ``<!-- readme: KEY -->`` ... ``<!-- end readme: KEY -->``
block a results file holds into the README.md block of the same key, so every figure the
README quotes comes from a script's output. ``--join-only`` runs nothing and only joins.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
HELPERS = {"run_all", "machine"}  # modules here that are not benchmarks

HEADER = """# Benchmarks

Produced by `make bench` (which runs `python benchmarks/run_all.py`); each part below
names the command that produced it and the machine it ran on (read from the machine:
cores, CPU, load average, Python, torch and threads). Ratios compare runs made side by
side in one process on the same model, data, batches and threads.
"""

BLOCK = re.compile(r"<!-- readme: (?P<key>[\w-]+) -->\n(?P<body>.*?)\n?<!-- end readme: (?P=key) -->",
                   re.S)


def benchmarks() -> list[Path]:
    return sorted(p for p in HERE.glob("*.py") if p.stem not in HELPERS and not p.name.startswith("_"))


def readme_blocks(texts: list[str]) -> dict[str, str]:
    """The README blocks the results files hold, by key."""
    blocks: dict[str, str] = {}
    for text in texts:
        for m in BLOCK.finditer(text):
            blocks[m["key"]] = m["body"]
    return blocks


def fill_readme(readme: str, blocks: dict[str, str]) -> tuple[str, list[str]]:
    """README text with each block replaced by the results' block of the same key; the keys
    the README asks for that no results file holds."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        if m["key"] not in blocks:
            missing.append(m["key"])
            return m[0]
        return f"<!-- readme: {m['key']} -->\n{blocks[m['key']]}\n<!-- end readme: {m['key']} -->"

    return BLOCK.sub(sub, readme), missing


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def join() -> list[str]:
    """Write BENCHMARKS.md and README.md's figures; return README keys left unfilled."""
    texts = [p.read_text(encoding="utf-8").strip() + "\n" for p in sorted(RESULTS.glob("*.md"))]
    _write(ROOT / "BENCHMARKS.md", "\n".join([HEADER, *texts]))
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    filled, missing = fill_readme(readme, readme_blocks(texts))
    if filled != readme:
        _write(readme_path, filled)
    return missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names (file stems)")
    parser.add_argument("--join-only", "--collect-only", dest="join_only", action="store_true",
                        help="run nothing; join the results files")
    args = parser.parse_args()
    failed = []
    if not args.join_only:
        for script in benchmarks():
            if args.only and script.stem not in args.only:
                continue
            print(f"== {script.name}", flush=True)
            if subprocess.run([sys.executable, str(script)], cwd=ROOT).returncode != 0:
                failed.append(script.name)
    missing = join()
    if missing:
        print(f"README.md asks for figures no results file holds: {', '.join(missing)}",
              file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
