"""Wall time and peak memory of the default `dlsec audit`, cold and resumed, with each
section's time: the digits SimpleNet (`dlsec audit`) and the Fashion-MNIST SmallCNN
(`dlsec audit --dataset fashion-mnist --model smallcnn`, a 28x28 CNN).

Usage: python benchmarks/audit_wall.py [--repeat 3] [--fm-repeat 1] [--only digits|fashion-mnist]
                                       [--threads N]
Writes benchmarks/results/audit.md (with --only, the other parts are kept as they were;
``--threads N`` (N > 0) passes ``--threads N`` to the audit and writes a part of its own).

Each audit runs in a fresh process (`python -m dlsec.cli audit --out DIR`); its stderr
lines "<section>: done in X s" and "model: trained ... in X s" give the time of each part.
The machine is shared: the load average is read before and after every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from machine import describe, load_average, write_results

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "audit.md"
DONE = re.compile(r"^(?P<title>.+): done in (?P<s>[0-9.]+) s$")
TRAINED = re.compile(r"^model: trained (?P<arch>\S+) .*?in (?P<s>[0-9.]+) s")


@dataclass(frozen=True)
class Audit:
    key: str
    title: str
    args: tuple[str, ...]
    target_s: float | None  # the whole cold audit, in seconds
    target_text: str
    command: str = ""  # this script's command line for the part


AUDITS = {
    "digits": Audit("digits", "digits SimpleNet (`dlsec audit`, what `make audit` runs)", (),
                    90.0, "the whole default audit within 90 s"),
    "fashion-mnist": Audit("fashion-mnist", "Fashion-MNIST SmallCNN (`dlsec audit --dataset "
                           "fashion-mnist --model smallcnn`)",
                           ("--dataset", "fashion-mnist", "--model", "smallcnn"), 300.0,
                           "the whole cold audit within 5 minutes on 2 cores"),
}


@dataclass
class Run:
    wall: float
    peak_mib: float
    cpu: float  # user + system seconds of the audit process, all threads
    load_before: str
    load_after: str
    parts: dict[str, float] = field(default_factory=dict)  # "training" and each section
    report: dict = field(default_factory=dict)


def run_once(audit: Audit, run_dir: Path) -> Run:
    """One `dlsec audit` in a fresh process: wall seconds, peak RSS, each part's time."""
    script = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        f"p = subprocess.run([sys.executable, '-m', 'dlsec.cli', 'audit', *{list(audit.args)!r}, "
        f"'--out', {str(run_dir)!r}], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, "
        "text=True)\n"
        "wall = time.perf_counter() - t\n"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "sys.stderr.write(p.stderr)\n"
        "print(p.returncode, wall, r.ru_maxrss / 1024, r.ru_utime + r.ru_stime)\n"
    )
    before = load_average()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    after = load_average()
    rc, wall, peak, cpu = out.stdout.split()
    if rc != "0":
        tail = "\n".join(out.stderr.splitlines()[-5:])
        raise SystemExit(f"dlsec audit {' '.join(audit.args)} failed with exit code {rc}:\n{tail}")
    run = Run(float(wall), float(peak), float(cpu), before, after)
    for line in out.stderr.splitlines():
        line = line.strip()
        if m := TRAINED.match(line):
            run.parts["model training (before the sections)"] = float(m["s"])
        elif m := DONE.match(line):
            run.parts[m["title"]] = float(m["s"])
    report = run_dir / "report.json"
    if report.is_file():
        run.report = json.loads(report.read_text(encoding="utf-8"))
    return run


def measure(audit: Audit, repeat: int) -> tuple[list[Run], list[Run]]:
    cold, resumed = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            cold.append(run_once(audit, run_dir))
            print(f"{audit.key} cold: {cold[-1].wall:.1f} s {cold[-1].parts}", flush=True)
            resumed.append(run_once(audit, run_dir))
            print(f"{audit.key} resumed: {resumed[-1].wall:.1f} s", flush=True)
    return cold, resumed


def settings_lines(report: dict) -> list[str]:
    """What the report states about the settings the audit chose (the model's training and
    each attack section's scaled settings)."""
    out = []
    training = report.get("model", {}).get("training", {})
    if training:
        keys = ("epochs", "batch_size", "lr", "optimizer", "val_fraction")
        shown = ", ".join(f"{k.replace('_', ' ')} {training[k]}" for k in keys if k in training)
        out.append(f"- model training (from the report's model card): {shown}.")
    for section in report.get("sections", []):
        stated = section.get("details", {}).get("settings")
        if stated:
            out.append(f"- {section.get('title', section.get('name'))}: {stated.rstrip('.')}.")
    return out


def part(audit: Audit, repeat: int) -> str:
    threads = audit.args[audit.args.index("--threads") + 1] if "--threads" in audit.args else "0"
    machine = describe(threads="the threads the audit chooses (`--threads 0`)" if threads == "0"
                       else f"`--threads {threads}`")
    t0 = time.perf_counter()
    cold, resumed = measure(audit, repeat)
    walls = [r.wall for r in cold]
    med = statistics.median(walls)
    lines = [
        f"<!-- part: {audit.key} -->",
        f"### {audit.title}",
        "",
        f"Command: `{audit.command}` ({machine}; each "
        f"audit a fresh process). This part took {time.perf_counter() - t0:.0f} s.",
        "",
        "| run | median wall (s) | min wall (s) | median CPU time (s) | peak RSS (MiB) | load "
        "average before → after (1 / 5 / 15 min) |",
        "|---|---|---|---|---|---|",
        f"| cold (trains the model, runs every default section) | {med:.1f} | {min(walls):.1f} "
        f"| {statistics.median(r.cpu for r in cold):.1f} | {max(r.peak_mib for r in cold):.0f} | "
        + "; ".join(f"{r.load_before} → {r.load_after}" for r in cold) + " |",
        f"| resumed (everything cached) | {statistics.median(r.wall for r in resumed):.1f} | "
        f"{min(r.wall for r in resumed):.1f} | {statistics.median(r.cpu for r in resumed):.1f} "
        "| — | " + "; ".join(f"{r.load_before} → {r.load_after}" for r in resumed) + " |",
        "",
        "CPU time is the audit process's user + system time over all its threads; on an "
        "otherwise idle machine the wall time of a one-thread run is about its CPU time. "
        "Wall times above are what this run measured under the load shown.",
        "",
    ]
    names = list(dict.fromkeys(k for r in cold for k in r.parts))
    if names:
        lines += ["Time of each part of the cold audit (seconds, as the audit prints them; one "
                  "column per run):", "",
                  "| part | " + " | ".join(f"run {i + 1}" for i in range(len(cold))) + " |",
                  "|---|" + "---|" * len(cold)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(
                f"{r.parts[name]:.1f}" if name in r.parts else "—" for r in cold) + " |")
        rest = [r.wall - sum(r.parts.values()) for r in cold]
        lines += ["| start-up, data loading, report writing | "
                  + " | ".join(f"{v:.1f}" for v in rest) + " |", ""]
    stated = settings_lines(cold[-1].report) if cold[-1].report else []
    if stated:
        lines += ["Settings the audit chose, as its report states them:", "", *stated, ""]
    if audit.target_s is not None:
        verdict = "met" if med <= audit.target_s else "missed"
        lines += [f"Target: {audit.target_text}: {verdict} (median cold wall {med:.1f} s "
                  f"against {audit.target_s:.0f} s, under the load average shown).", ""]
    lines.append(f"<!-- end part: {audit.key} -->")
    return "\n".join(lines)


def _blocks(text: str) -> dict[str, str]:
    """Every part of an existing results file, by key."""
    found = re.finditer(r"<!-- part: (?P<key>[\w-]+) -->.*?<!-- end part: (?P=key) -->", text, re.S)
    return {m["key"]: m[0] for m in found}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="cold + resumed runs of digits")
    parser.add_argument("--fm-repeat", type=int, default=1,
                        help="cold + resumed runs of the Fashion-MNIST audit")
    parser.add_argument("--only", choices=sorted(AUDITS))
    parser.add_argument("--threads", type=int, default=0,
                        help="passed to the audit (0: the audit's own choice)")
    args = parser.parse_args()
    old = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
    blocks: dict[str, str] = {k: "" for k in AUDITS} | _blocks(old)
    for key, audit in AUDITS.items():
        if args.only not in (None, key):
            continue
        command = f"python benchmarks/audit_wall.py --only {key}"
        if args.threads:
            command += f" --threads {args.threads}"
            audit = dataclasses.replace(
                audit, key=f"{key}-threads-{args.threads}",
                title=f"{audit.title} with `--threads {args.threads}`",
                args=(*audit.args, "--threads", str(args.threads)))
        audit = dataclasses.replace(audit, command=command)
        blocks[audit.key] = part(audit, args.repeat if key == "digits" else args.fm_repeat)
    lines = [
        "## Default audit: wall time, peak memory and the time of each section",
        "",
        "`python benchmarks/audit_wall.py` measures both audits below (`--only digits` or "
        "`--only fashion-mnist` one of them, keeping the other parts; `--threads N` the "
        "audit with `--threads N`, as a part of its own); every figure is what that run "
        "measured on the machine it names.",
        "",
        "\n\n".join(b for b in blocks.values() if b),
        "",
    ]
    write_results(OUT, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
