"""The robustness ensemble sharded across torchrun processes against one process.

Usage: python benchmarks/sharded.py [--model digits|resnet18-narrow|all] [--repeats R]
                                    [--with-2-threads] [--quick]
Writes benchmarks/results/sharded.md and sharded.json (``--quick``: one repeat on the
SimpleNet only, written to benchmarks/.cache/sharded-quick.md and .json). ``--model``
measures only those models and keeps the other models' rows of the results file as they
were (each section names the command and machine that measured it).

``digits`` (a SimpleNet trained like the default audit's, 30 epochs of Adam at lr 3e-3,
seed 0; and a SmallCNN, 10 epochs): ``dlsec evaluate`` runs the default ensemble (APGD-CE,
APGD-T, boundary restarts, Square) at eps 0.05 and 0.1 on the whole test set (359
points). ``resnet18-narrow``: the CIFAR-size case, a narrow ResNet-18 (8 to 64 channels)
trained briefly on ``cifar-synthetic`` (3 x 32 x 32 inputs), attacked by the stages
named in :data:`CIFAR` at eps 8/255 on the first test points, where the per-point
gradient work dominates (the digits models are so small that fixed per-batch work and
start-up weigh as much as the points). Each run is a fresh process as a user would start
it:

* one process, ``--threads 1`` (and ``--threads 2`` with ``--with-2-threads``: on a
  machine other jobs share, two threads oversubscribe the cores and the run takes many
  times longer, so it is off by default); the plain path, no blocks;
* one process, ``--threads 1 --block-size B`` with B = ceil(points / 2), the block size
  the sharded run chooses (one block per process): the result it must reproduce;
* ``torchrun --nproc-per-node 2`` (gloo), ``--threads 1`` in each process.

Wall time is the whole command (interpreter and torchrun start-up included, the median of
``--repeats`` runs); ``evaluation`` is the report's own ``seconds`` (the evaluation alone,
in rank 0). The robust accuracies are read off each run's ``--out`` JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
# the models measured: dataset, architecture, training epochs, points (None: the whole
# test set), ensemble stages (None: the default) and eps
DIGITS = {
    "simplenet": {"dataset": "digits", "arch": "simplenet", "epochs": 30, "samples": None,
                  "attacks": None, "eps": "0.05,0.1"},
    "smallcnn": {"dataset": "digits", "arch": "smallcnn", "epochs": 10, "samples": None,
                 "attacks": None, "eps": "0.05,0.1"},
}
CIFAR = {
    "resnet18-narrow": {"dataset": "cifar-synthetic", "arch": "resnet18-narrow", "epochs": 3,
                        "samples": 160, "attacks": "apgd-ce,apgd-t", "eps": "0.031373"},
}
GROUPS = {"digits": DIGITS, "resnet18-narrow": CIFAR, "all": DIGITS | CIFAR}


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


def _evaluate_args(model_dir: Path, spec: dict[str, Any]) -> list[str]:
    args = ["evaluate", "--model-dir", str(model_dir), "--eps", spec["eps"], "--quiet"]
    if spec["samples"] is not None:
        args += ["--samples", str(spec["samples"])]
    if spec["attacks"] is not None:
        args += ["--attacks", spec["attacks"]]
    return args


def _variants(model_dir: Path, spec: dict[str, Any], block: int,
              two_threads: bool) -> dict[str, list[str]]:
    base = _evaluate_args(model_dir, spec)
    cli = [sys.executable, "-m", "dlsec.cli"]
    two = {"one process, 2 threads": [*cli, *base, "--threads", "2"]} if two_threads else {}
    return {
        "one process, 1 thread": [*cli, *base, "--threads", "1"],
        **two,
        f"one process, 1 thread, --block-size {block}": [
            *cli, *base, "--threads", "1", "--block-size", str(block)],
        "torchrun, 2 processes x 1 thread": [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", "PORT", "-m", "dlsec.cli",
            *base, "--threads", "1"],
    }


def measure(key: str, spec: dict[str, Any], repeats: int, tmp: Path,
            two_threads: bool) -> dict[str, Any]:
    ds = load_dataset(spec["dataset"], seed=0)
    t0 = time.perf_counter()
    model, card, _ = train_model(ds, spec["arch"], TrainConfig(epochs=spec["epochs"], lr=3e-3),
                                 progress=False)
    train_s = time.perf_counter() - t0
    model_dir = tmp / key
    save(model, card, model_dir)
    points = len(ds.y_test) if spec["samples"] is None else min(spec["samples"], len(ds.y_test))
    block = -(-points // 2)  # what the 2-process run picks by itself
    rows: dict[str, Any] = {}
    for name, cmd in _variants(model_dir, spec, block, two_threads).items():
        walls, evals, result = [], [], None
        for r in range(repeats):
            out = tmp / f"{key}-{len(rows)}-{r}.json"
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
    one1 = rows["one process, 1 thread"]
    one2 = rows.get("one process, 2 threads")
    shard = rows["torchrun, 2 processes x 1 thread"]
    ref = rows[f"one process, 1 thread, --block-size {block}"]
    ratios = {"wall_vs_1_thread": shard["wall_s"] / one1["wall_s"],
              "eval_vs_1_thread": shard["eval_s"] / one1["eval_s"],
              "eval_vs_same_blocks": shard["eval_s"] / ref["eval_s"]}
    if one2 is not None:
        ratios |= {"wall_vs_2_threads": shard["wall_s"] / one2["wall_s"],
                   "eval_vs_2_threads": shard["eval_s"] / one2["eval_s"]}
    return {"key": key, "arch": spec["arch"], "dataset": spec["dataset"],
            "epochs": spec["epochs"], "points": points, "block": block, "eps": spec["eps"],
            "attacks": spec["attacks"] or "default ensemble (apgd-ce, apgd-t, apgd-restarts, "
                                          "square)",
            "input_shape": list(ds.x_test.shape[1:]), "train_s": round(train_s, 1),
            "test_accuracy": card.metrics.get("test_accuracy"), "rows": rows, "ratios": ratios,
            "identical_to_same_blocks": shard["robust_accuracy"] == ref["robust_accuracy"],
            "same_as_plain": shard["robust_accuracy"] == one1["robust_accuracy"]}


def _section(res: dict[str, Any]) -> list[str]:
    """The Markdown of one model's measurement."""
    shape = "x".join(str(d) for d in res.get("input_shape", [])) or "?"
    lines = [f"**{res['arch']} on {res.get('dataset', 'digits')} ({shape} inputs, "
             f"{res['epochs']} epochs), {res['points']} points**", "",
             f"Measured by `{res['command']}`: {res['machine']}.", "",
             f"`dlsec evaluate --eps {res['eps']}`, stages: {res['attacks']}; clean accuracy "
             f"{res['rows']['one process, 1 thread']['clean_accuracy']:.4f} on these points; "
             "wall = the "
             f"whole command, median of {res['repeats']}; evaluation = the report's own "
             "seconds (rank 0 when sharded).", "",
             f"| run | wall s | evaluation s | robust accuracy (eps {res['eps']}) |",
             "|---|---|---|---|"]
    for name, r in res["rows"].items():
        acc = " / ".join(f"{a:.4f}" for a in r["robust_accuracy"])
        lines.append(f"| {name} | {r['wall_s']:.2f} | {r['eval_s']:.2f} | {acc} |")
    q = res["ratios"]
    two = (f", {q['wall_vs_2_threads']:.2f}x (2 threads)" if "wall_vs_2_threads" in q else "",
           f", {q['eval_vs_2_threads']:.2f}x (2 threads)" if "eval_vs_2_threads" in q else "")
    lines += ["", f"Sharded / one process: wall {q['wall_vs_1_thread']:.2f}x (1 thread)"
              f"{two[0]}; evaluation {q['eval_vs_1_thread']:.2f}x (1 thread){two[1]}, "
              f"{q['eval_vs_same_blocks']:.2f}x (one process, same blocks). "
              "Robust accuracy identical to the one-process run with the same blocks: "
              f"{'yes' if res['identical_to_same_blocks'] else 'NO'}; to the plain "
              f"one-process run: {'yes' if res['same_as_plain'] else 'no'} (the plain run "
              f"draws its randomness per batch, not per block). {_verdict(res)}", ""]
    return lines


def _verdict(res: dict[str, Any]) -> str:
    """The 0.6x wall target, judged only on a machine no other job loaded: on a shared
    one, two processes take a larger share of the cores than one, which flatters them."""
    ratio = res["ratios"]["wall_vs_1_thread"]
    found = re.search(r"(\d+) (?:of \d+ )?CPU cores.*?load average ([\d.]+)",
                      res.get("machine") or "")
    if found and float(found.group(2)) > int(found.group(1)):
        return (f"Target (wall at most 0.6x with 2 processes): not judged, {ratio:.2f}x was "
                f"measured with a load of {found.group(2)} on {found.group(1)} cores at the "
                "start (other jobs shared the machine; two processes then take a larger "
                "share of it than one, which flatters the sharded run).")
    return (f"Target (wall at most 0.6x with 2 processes): "
            f"{'met' if ratio <= 0.6 else 'not met'} ({ratio:.2f}x).")


def _previous(path: Path) -> list[dict[str, Any]]:
    """The models of an earlier results file, each carrying the command and machine
    that measured it (a file from before ``--model``: the file's own)."""
    if not path.exists():
        return []
    raw = json.loads(path.read_text())
    out = []
    for m in raw.get("models", []):
        m.setdefault("key", m["arch"])
        for k in ("command", "machine", "repeats", "eps"):
            m.setdefault(k, raw.get(k))
        m.setdefault("attacks", "default ensemble (apgd-ce, apgd-t, apgd-restarts, square)")
        m.setdefault("dataset", "digits")
        if "input_shape" not in m:
            m["input_shape"] = list(load_dataset(m["dataset"], seed=0).x_test.shape[1:])
        out.append(m)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(GROUPS), default="all")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--with-2-threads", dest="two", action="store_true")
    ap.add_argument("--render", action="store_true",
                    help="measure nothing: rewrite the Markdown from the results JSON")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    models = {"simplenet": DIGITS["simplenet"]} if args.quick else GROUPS[args.model]
    cmd = "python benchmarks/sharded.py" + (" --quick" if args.quick else
                                            f" --model {args.model} --repeats {repeats}")
    cmd += " --with-2-threads" if args.two else ""
    machine = describe(threads="1 thread per process unless a row says 2")
    out = OUT_QUICK if args.quick else OUT
    t0 = time.perf_counter()
    results = []
    if args.render:  # the latest run's header as it was
        raw = json.loads(out.with_suffix(".json").read_text())
        cmd, machine, total = raw["command"], raw["machine"], raw["seconds"]
        end_load = raw.get("load_at_end", "unavailable")
    else:
        with tempfile.TemporaryDirectory() as d:
            results = [measure(k, spec, repeats, Path(d), args.two)
                       for k, spec in models.items()]
        total, end_load = time.perf_counter() - t0, load_average()
    for res in results:
        res |= {"command": cmd, "machine": machine, "repeats": repeats}
    fresh = {r["key"] for r in results}
    kept = [m for m in _previous(out.with_suffix(".json")) if m["key"] not in fresh]
    order = list(DIGITS | CIFAR)
    everything = sorted([*kept, *results],
                        key=lambda m: order.index(m["key"]) if m["key"] in order else 99)
    lines = ["# The robustness ensemble sharded across torchrun processes", "",
             "<!-- readme: sharded -->",
             f"Latest run: `{cmd}` took {total:.0f} s; load average at its end "
             f"{end_load} (a load above the cores means other jobs shared the machine: "
             "absolute seconds are not comparable across runs). Each model's section names "
             "the run that measured it.", ""]
    for res in everything:
        lines += _section(res)
    text = "\n".join([*lines, "<!-- end readme: sharded -->"]).rstrip() + "\n"
    write_results(out, text)
    raw = {"command": cmd, "machine": machine, "seconds": round(total, 1),
           "load_at_end": end_load, "models": everything}
    write_results(out.with_suffix(".json"), json.dumps(raw, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
