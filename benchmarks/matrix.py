"""The defense x attack matrix on digits: every defense that exists today, built and
attacked the same way, with its wall time cold and resumed.

Usage: python benchmarks/matrix.py [--defenses none,pgd-at,...]
Writes benchmarks/results/matrix.md (and .json) and the README block ``matrix``.

Runs ``dlsec audit --sections accuracy --defenses <the issue's nine>`` in a fresh process
(``python -m dlsec.cli``, threads as the audit chooses them) three times in one run
directory: cold (every row trained, every experiment run), resumed after the section's own
cache file is removed (every row and experiment read back from ``<run>/defenses``), and
the default audit without ``--defenses`` in another directory (its target is 90 s). The
table is the report's own (report.json's ``defenses`` section), each rate with its 95%
interval. No peer produces this table: ART, torchattacks, Foolbox and AutoAttack measure
the evasion columns, Opacus trains the DP rows, ML Privacy Meter measures the membership
column; none builds the defended variants and runs one battery across them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe, load_average, write_results

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "matrix.md"
NAMES = "none,pgd-at,trades,fgsm-rs,dp:3,dp:8,sanitize:cleanlab,policy:label-only,policy:top1-rounded"


def audit(run: Path, *args: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dlsec.cli", "audit", "--quiet", "--out",
                           str(run), *args], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"audit failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return seconds


def markdown(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defenses", default=NAMES)
    args = parser.parse_args()
    machine = describe(threads="threads as the audit chooses them")
    with tempfile.TemporaryDirectory(prefix="dlsec-matrix-") as tmp:
        run = Path(tmp) / "run"
        flags = ("--sections", "accuracy", "--defenses", args.defenses)
        cold = audit(run, *flags)
        load_cold = load_average()
        (run / "sections" / "defenses.json").unlink()
        resumed = audit(run, *flags)
        report = json.loads((run / "report.json").read_text())
        default = audit(Path(tmp) / "default")
        load_end = load_average()
        plain = json.loads((Path(tmp) / "default" / "report.json").read_text())
    section = next(s for s in report["sections"] if s["name"] == "defenses")
    table = section["tables"][0]
    rows = len(section["details"]["matrix"]["rows"])
    seconds = {r["defense"]: r["cells"].get("train_seconds")
               for r in section["details"]["matrix"]["rows"]}
    timing = (f"{rows} defenses on digits: {cold:.0f} s cold (target: 10 minutes), "
              f"{resumed:.1f} s resumed from the run directory; the default audit without "
              f"--defenses {default:.1f} s (target 90 s)")
    block = "\n".join([
        f"Measured by `python benchmarks/matrix.py` ({machine}; load {load_cold} after the "
        f"cold run, {load_end} at the end): {timing}.",
        "",
        markdown(table["columns"], table["rows"]),
        "",
        f"{table['caption']}",
    ])
    def scorecard(rep: dict) -> str:
        return markdown(["threat", "severity", "evidence", "best defense"],
                        [[r["label"], r["severity"], r["evidence"],
                          (r["defense"] or {}).get("summary") or r.get("defense_note", "")]
                         for r in rep.get("scorecard", [])])

    text = "\n".join([
        "# The defense x attack matrix (digits)", "",
        f"Command: `python benchmarks/matrix.py` (runs `dlsec audit --sections accuracy "
        f"--defenses {args.defenses}`).", "",
        f"Machine: {machine}.", "",
        "<!-- readme: matrix -->", block, "<!-- end readme: matrix -->", "",
        "## Scorecard of the matrix run (evidence from the matrix's undefended row)", "",
        "<!-- readme: matrix-scorecard -->",
        f"`dlsec audit --sections accuracy --defenses {args.defenses}` (the run above):", "",
        scorecard(report), "<!-- end readme: matrix-scorecard -->", "",
        "## Scorecard of the default audit (no --defenses)", "",
        "<!-- readme: scorecard-default -->",
        f"`dlsec audit` (digits, seed 0; {default:.1f} s here):", "",
        scorecard(plain), "<!-- end readme: scorecard-default -->", "",
    ])
    write_results(OUT, text)
    write_results(OUT.with_suffix(".json"), json.dumps(
        {"machine": machine, "cold_s": cold, "resumed_s": resumed, "default_audit_s": default,
         "train_seconds": seconds, "metrics": {k: v for k, v in report["metrics"].items()
                                               if k.startswith("defenses.")},
         "intervals": {k: v for k, v in report["intervals"].items()
                       if k.startswith("defenses.")}}, indent=1) + "\n")
    print(timing)


if __name__ == "__main__":
    main()
