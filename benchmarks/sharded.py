"""The robustness ensemble sharded across torchrun processes against one process.

Usage: python benchmarks/sharded.py [--repeats R] [--with-2-threads] [--quick]
Writes benchmarks/results/sharded.md and sharded.json (``--quick``: one repeat on the
SimpleNet only, written to benchmarks/.cache/sharded-quick.md and .json).

For each model (a digits SimpleNet trained like the default audit's, 30 epochs of Adam at
lr 3e-3, seed 0; and a digits SmallCNN, 10 epochs), ``dlsec evaluate`` runs the default
ensemble (APGD-CE, APGD-T, boundary restarts, Square) at eps 0.05 and 0.1 on the whole
test set (359 points), each run a fresh process as a user would start it:

* one process, ``--threads 1`` (and ``--threads 2`` with ``--with-2-threads``: on a
  machine other jobs share, two threads oversubscribe the cores and the run takes many
  times longer, so it is off by default); the plain path, no blocks;
* one process, ``--threads 1 --block-size B`` with B = 180, the block size the sharded
  run chooses (one block per process): the result the sharded run must reproduce;
* ``torchrun --nproc-per-node 2`` (gloo), ``--threads 1`` in each process.

Wall time is the whole command (interpreter and torchrun start-up included, the median of
``--repeats`` runs); ``evaluation`` is the report's own ``seconds`` (the evaluation alone,
in rank 0). The robust accuracies are read off each run's ``--out`` JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

from machine import describe, load_average, write_results  # noqa: E402  (benchmarks/machine.py)

from dlsec.data import load_dataset  # noqa: E402
from dlsec.models import save  # noqa: E402
from dlsec.training import TrainConfig, train_model  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "sharded.md"
OUT_QUICK = HERE / ".cache" / "sharded-quick.md"
EPS = "0.05,0.1"
MODELS = {"simplenet": 30, "smallcnn": 10}  # architecture: epochs
BLOCK = 180  # ceil(359 / 2): what the 2-process run picks by itself


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], out: Path) -> tuple[float, dict[str, Any]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return wall, json.loads(out.read_text())


def _variants(model_dir: Path, two_threads: bool) -> dict[str, list[str]]:
    base = ["evaluate", "--model-dir", str(model_dir), "--eps", EPS, "--quiet"]
    cli = [sys.executable, "-m", "dlsec.cli"]
    two = {"one process, 2 threads": [*cli, *base, "--threads", "2"]} if two_threads else {}
    return {
        "one process, 1 thread": [*cli, *base, "--threads", "1"],
        **two,
        f"one process, 1 thread, --block-size {BLOCK}": [
            *cli, *base, "--threads", "1", "--block-size", str(BLOCK)],
        "torchrun, 2 processes x 1 thread": [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", "PORT", "-m", "dlsec.cli",
            *base, "--threads", "1"],
    }


def measure(arch: str, epochs: int, repeats: int, tmp: Path, two_threads: bool) -> dict[str, Any]:
    ds = load_dataset("digits", seed=0)
    model, card, _ = train_model(ds, arch, TrainConfig(epochs=epochs, lr=3e-3), progress=False)
    model_dir = tmp / arch
    save(model, card, model_dir)
    rows: dict[str, Any] = {}
    for name, cmd in _variants(model_dir, two_threads).items():
        walls, evals, result = [], [], None
        for r in range(repeats):
            out = tmp / f"{arch}-{len(rows)}-{r}.json"
            full = [str(_free_port()) if c == "PORT" else c for c in cmd] + ["--out", str(out)]
            wall, res = _run(full, out)
            walls.append(wall)
            evals.append(res["seconds"])
            if result is not None and res["robust_accuracy"] != result["robust_accuracy"]:
                raise RuntimeError(f"{name}: robust accuracy changed between repeats")
            result = res
        assert result is not None
        rows[name] = {"wall_s": statistics.median(walls), "eval_s": statistics.median(evals),
                      "walls": walls, "robust_accuracy": result["robust_accuracy"],
                      "clean_accuracy": result["clean_accuracy"],
                      "block_size": result.get("block_size")}
    return {"arch": arch, "epochs": epochs, "points": len(ds.y_test), "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--with-2-threads", dest="two", action="store_true")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    models = {"simplenet": MODELS["simplenet"]} if args.quick else MODELS
    cmd = "python benchmarks/sharded.py" + (" --quick" if args.quick else
                                            f" --repeats {repeats}")
    cmd += " --with-2-threads" if args.two else ""
    machine = describe(threads="1 thread per process unless a row says 2")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        results = [measure(a, e, repeats, Path(d), args.two) for a, e in models.items()]
    total = time.perf_counter() - t0
    lines = ["# The robustness ensemble sharded across torchrun processes", "",
             "<!-- readme: sharded -->",
             f"Command: `{cmd}`: {machine}. The whole script took {total:.0f} s; load "
             f"average at its end {load_average()} (a load above the cores means other jobs "
             "shared the machine: absolute seconds are not comparable across runs).", "",
             f"`dlsec evaluate --eps {EPS}` (default ensemble) on the whole digits test set; "
             f"wall = the whole command, median of {repeats}; evaluation = the report's own "
             "seconds (rank 0 when sharded).", ""]
    for res in results:
        rows = res["rows"]
        one1 = rows["one process, 1 thread"]
        one2 = rows.get("one process, 2 threads")
        shard = rows["torchrun, 2 processes x 1 thread"]
        ref = rows[f"one process, 1 thread, --block-size {BLOCK}"]
        lines += [f"**{res['arch']} ({res['epochs']} epochs), {res['points']} points**", "",
                  "| run | wall s | evaluation s | robust accuracy (eps " + EPS + ") |",
                  "|---|---|---|---|"]
        for name, r in rows.items():
            acc = " / ".join(f"{a:.4f}" for a in r["robust_accuracy"])
            lines.append(f"| {name} | {r['wall_s']:.2f} | {r['eval_s']:.2f} | {acc} |")
        res["ratios"] = {
            "wall_vs_1_thread": shard["wall_s"] / one1["wall_s"],
            "eval_vs_1_thread": shard["eval_s"] / one1["eval_s"],
            "eval_vs_same_blocks": shard["eval_s"] / ref["eval_s"],
        }
        if one2 is not None:
            res["ratios"] |= {"wall_vs_2_threads": shard["wall_s"] / one2["wall_s"],
                              "eval_vs_2_threads": shard["eval_s"] / one2["eval_s"]}
        res["identical_to_same_blocks"] = shard["robust_accuracy"] == ref["robust_accuracy"]
        res["same_as_plain"] = shard["robust_accuracy"] == one1["robust_accuracy"]
        q = res["ratios"]
        two = (f", {q['wall_vs_2_threads']:.2f}x (2 threads)" if one2 else "",
               f", {q['eval_vs_2_threads']:.2f}x (2 threads)" if one2 else "")
        lines += ["", f"Sharded / one process: wall {q['wall_vs_1_thread']:.2f}x (1 thread)"
                  f"{two[0]}; evaluation {q['eval_vs_1_thread']:.2f}x (1 thread){two[1]}, "
                  f"{q['eval_vs_same_blocks']:.2f}x (one process, same blocks). "
                  "Robust accuracy identical to the one-process run with the same blocks: "
                  f"{'yes' if res['identical_to_same_blocks'] else 'NO'}; to the plain "
                  f"one-process run: {'yes' if res['same_as_plain'] else 'no'} (the plain run "
                  "draws its randomness per batch, not per block).", ""]
    text = "\n".join([*lines, "<!-- end readme: sharded -->"]).rstrip() + "\n"
    out = OUT_QUICK if args.quick else OUT
    write_results(out, text)
    raw = {"command": cmd, "machine": machine, "seconds": round(total, 1), "eps": EPS,
           "block": BLOCK, "repeats": repeats, "models": results}
    write_results(out.with_suffix(".json"), json.dumps(raw, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
