"""Scale-out on this machine: independent trainings on Ray (``--workers 2``) against one after
another, with identical results; and a projection, assumptions written out, of a 64-shadow
LiRA and a full CIFAR-10 ensemble evaluation on an 8-GPU node.

Usage: python benchmarks/scale.py [--quick] [--out PATH]
Writes benchmarks/results/scale.md (and .json) and the README block ``scale``. ``--quick``
checks the script in a few minutes (4 shadows, two matrix rows, one flip rate, 300 training
samples) and writes nothing unless ``--out`` names a file.

1. LiRA with 16 shadow models trained one by one (``stacked=False``: the path an executor
   spreads) on digits, SmallCNN (10 epochs) as target and shadows: sequential
   (:class:`dlsec.executor.SequentialExecutor`) vs a local 2-worker Ray cluster
   (:class:`dlsec.executor.RayExecutor`, 1 torch thread per task in both). Wall time of
   ``run_membership`` with the cluster's start-up counted (cold) and on a cluster already
   up whose workers have imported dlsec (warm); the scores' sha256 must be equal.
2. The matrix's training rows (pgd-at, trades, fgsm-rs, dp:3, dp:8, sanitize:cleanlab) with
   the clean-accuracy and poisoning experiments: each row's build and its two retrains on the
   poisoned sets (backdoor, optimized flips), 18 trainings as executor tasks, then the
   measurements here; sequential vs 2 workers, every cell must be equal.
3. The audit's poisoning experiment (:func:`dlsec.scenarios.poisoning.run_poisoning` with the
   ``[poisoning]`` defaults and the audit's sizes for digits): its victims, folds and
   sanitizers' retrains on ``ctx.executor``, sequential vs 2 workers; the metrics must be
   equal.
4. The ceiling on 2 cores: 2x at best (two tasks at a time, each on one core); Ray adds its
   start-up (a few seconds) and each worker's first import of dlsec.
5. Where a CUDA device is present the LiRA part also runs on it; otherwise the results say
   that no GPU was measured. The projection's inputs are stated assumptions (printed with
   it), not measurements.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from machine import describe, load_average, write_results

from dlsec.audit.sections.poisoning import sizes
from dlsec.data import load_dataset
from dlsec.executor import RayExecutor, SequentialExecutor
from dlsec.scenarios import ScenarioContext
from dlsec.scenarios.matrix import MatrixOptions, run_matrix
from dlsec.scenarios.membership import MembershipOptions, run_membership
from dlsec.scenarios.poisoning import PoisoningOptions, Sizes, run_poisoning
from dlsec.training import TrainConfig, train_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "scale.md"
SHADOWS = 16
ROWS = ["pgd-at", "trades", "fgsm-rs", "dp:3", "dp:8", "sanitize:cleanlab"]

# the projection's assumptions (inputs, not measurements)
ASSUME = {
    "gpus": 8,
    "cifar_train_records": 50_000,
    "resnet18_epoch_s_one_gpu": 15.0,   # one CIFAR-10 epoch of ResNet-18, batch 512, AMP
    "shadow_epochs": 100,               # LiRA's shadows (Carlini et al. 2022 train ~100)
    "ensemble_points": 10_000,          # the full CIFAR-10 test set
    "ensemble_fwd_bwd_per_point": 2_000,  # APGD-CE 100 + APGD-T 9x100 + restarts, roughly
    "resnet18_fwd_bwd_per_s_one_gpu": 25_000,  # 32x32 images per second, fwd+bwd, AMP
    "scaling_efficiency": 0.95,         # independent tasks / shards: near-linear
}


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def lira(ctx: ScenarioContext, shadows: int) -> tuple[float, str, dict[str, float]]:
    t0 = time.perf_counter()
    res = run_membership(ctx, MembershipOptions(attacks=("lira",), shadows=shadows,
                                                members=300, stacked=False))
    seconds = time.perf_counter() - t0
    return seconds, digest(res.artifacts["results"][0].scores), res.metrics


def matrix(ctx: ScenarioContext, executor: Any, rows: list[str]) -> tuple[float, dict[str, Any]]:
    """Seconds and every cell but the training times (row builds + retrains, measured)."""
    t0 = time.perf_counter()
    res = run_matrix(ctx, rows, MatrixOptions(groups=("clean", "poisoning")), executor=executor)
    seconds = time.perf_counter() - t0
    cells = {r["defense"]: {k: v for k, v in r["cells"].items() if k != "train_seconds"}
             for r in res.details["matrix"]["rows"]}
    return seconds, {"cells": cells, "intervals": res.details["intervals"]}


def poisoning(ctx: ScenarioContext, options: PoisoningOptions, budget: Sizes
              ) -> tuple[float, dict[str, float]]:
    """Seconds and the metrics (all but times) of the audit's poisoning experiment."""
    t0 = time.perf_counter()
    res = run_poisoning(ctx, options, budget)
    seconds = time.perf_counter() - t0
    return seconds, {k: v for k, v in res.metrics.items() if "seconds" not in k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes' check of the script: 4 shadows, 2 matrix rows, one "
                        "flip rate on 300 training samples; writes nothing without --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results file (default {OUT.relative_to(ROOT)}; .json beside it)")
    args = parser.parse_args()
    quick = args.quick
    dest = args.out if args.out or quick else OUT
    shadows = 4 if quick else SHADOWS
    rows = ["fgsm-rs", "dp:8"] if quick else ROWS
    popt = PoisoningOptions(rates=[0.2], collision_targets=0) if quick else PoisoningOptions()

    machine = describe(threads="1 torch thread per task")
    ds = load_dataset("digits", seed=0)
    model, card, _ = train_model(ds, "smallcnn", TrainConfig(epochs=10, lr=3e-3), progress=False)
    base = dict(model=model, card=card, dataset=ds, seed=0)
    budget = sizes(popt, card)
    if quick:
        budget = Sizes(2, 300, 300, budget.sanitize_every_rate)
    out: dict[str, Any] = {"machine": machine, "assumptions": ASSUME, "quick": quick}

    seq = SequentialExecutor()
    t_seq, h_seq, _ = lira(ScenarioContext(**base, executor=seq), shadows)
    t0 = time.perf_counter()
    ray = RayExecutor(2)
    ray.start()
    start_s = time.perf_counter() - t0
    t_cold, h_cold, _ = lira(ScenarioContext(**base, executor=ray), shadows)
    t_warm, h_warm, _ = lira(ScenarioContext(**base, executor=ray), shadows)
    mseq_s, mseq = matrix(ScenarioContext(**base), seq, rows)
    mray_s, mray = matrix(ScenarioContext(**base), ray, rows)
    pseq_s, pseq = poisoning(ScenarioContext(**base, executor=seq), popt, budget)
    pray_s, pray = poisoning(ScenarioContext(**base, executor=ray), popt, budget)
    ray.close()
    load_end = load_average()
    same_lira = h_seq == h_cold == h_warm
    same_matrix = mseq == mray
    same_poisoning = pseq == pray
    gpu = "no CUDA device on this machine: nothing was measured on a GPU"
    if torch.cuda.is_available():
        cuda = ScenarioContext(**{**base, "model": model.to("cuda")}, device=torch.device("cuda"))
        t_gpu, _, _ = lira(cuda, shadows)
        gpu = f"LiRA, {shadows} shadows on {torch.cuda.get_device_name(0)}: {t_gpu:.1f} s"
        out["gpu_lira_s"] = t_gpu

    a = ASSUME
    shadow_gpu_h = (a["resnet18_epoch_s_one_gpu"] * a["shadow_epochs"] * 0.5) / 3600  # half the data
    lira64_one = 64 * shadow_gpu_h
    lira64_node = lira64_one / (a["gpus"] * a["scaling_efficiency"])
    ens_one_h = a["ensemble_points"] * a["ensemble_fwd_bwd_per_point"] / \
        a["resnet18_fwd_bwd_per_s_one_gpu"] / 3600
    ens_node_h = ens_one_h / (a["gpus"] * a["scaling_efficiency"])
    out.update(lira_seq_s=t_seq, lira_ray_cold_s=t_cold, lira_ray_warm_s=t_warm,
               ray_start_s=start_s, matrix_seq_s=mseq_s, matrix_ray_s=mray_s,
               poisoning_seq_s=pseq_s, poisoning_ray_s=pray_s, identical_lira=same_lira,
               identical_matrix=same_matrix, identical_poisoning=same_poisoning, gpu=gpu,
               projection={"lira64_one_gpu_h": lira64_one, "lira64_node_h": lira64_node,
                           "ensemble_one_gpu_h": ens_one_h, "ensemble_node_h": ens_node_h})
    trainings = 3 * len(rows)
    flips = (f"{len(popt.flip_attacks)} flip attacks x {len(popt.rates)} "
             f"rate{'' if len(popt.rates) == 1 else 's'}")
    lines = [
        [f"LiRA, {shadows} shadows (SmallCNN, digits)", f"{t_seq:.1f}", f"{t_cold:.1f}",
         f"{t_seq / t_cold:.2f}x", f"{t_warm:.1f}", f"{t_seq / t_warm:.2f}x",
         "yes" if same_lira else "NO"],
        [f"matrix rows ({', '.join(rows)}): builds + poisoning retrains, {trainings} trainings",
         f"{mseq_s:.1f}", f"{mray_s:.1f}", f"{mseq_s / mray_s:.2f}x", "", "",
         "yes" if same_matrix else "NO"],
        [f"audit poisoning ({flips}, backdoor; victims, folds, sanitizers' retrains)",
         f"{pseq_s:.1f}", f"{pray_s:.1f}", f"{pseq_s / pray_s:.2f}x", "", "",
         "yes" if same_poisoning else "NO"],
    ]
    table = "\n".join(["| work | sequential s | --workers 2 s (cold) | speed-up | "
                       "--workers 2 s (warm) | speed-up | identical |",
                       "|---|---|---|---|---|---|---|"] +
                      ["| " + " | ".join(r) + " |" for r in lines])
    block = "\n".join([
        f"Measured by `python benchmarks/scale.py{' --quick' if quick else ''}` ({machine}; "
        f"load {load_end} at the end). "
        f"Ray's local cluster took {start_s:.1f} s to start; cold = its first tasks (each "
        "worker imports dlsec once), warm = the same run again on the running cluster. The "
        "ceiling on 2 cores is 2x (target: 1.6x for LiRA's 16 shadows). The matrix and "
        "poisoning rows run on the warm cluster.", "",
        table, "",
        f"GPU: {gpu}.", "",
        f"Projection for an 8-GPU node (assumptions, not measurements: {json.dumps(ASSUME)}): "
        f"a 64-shadow LiRA of ResNet-18 on CIFAR-10 takes {lira64_one:.1f} GPU-hours, "
        f"{lira64_node:.1f} h on the node (shadows are independent tasks, one per GPU); the "
        f"full-test-set ensemble takes {ens_one_h:.2f} GPU-hours, {60 * ens_node_h:.0f} min on "
        "the node (points sharded across 8 torchrun ranks).",
    ])
    if dest is not None:
        write_results(dest, "\n".join(["# Scale-out (Ray workers, projection)", "",
                                        "<!-- readme: scale -->", block,
                                        "<!-- end readme: scale -->", ""]))
        write_results(dest.with_suffix(".json"), json.dumps(out, indent=1, default=str) + "\n")
    print(block)


if __name__ == "__main__":
    main()
