"""The known interactions between defenses and attacks, as the matrix measures them on
digits: the settings of tests/defenses/test_matrix_interactions.py, with every figure and
its interval.

Usage: python benchmarks/matrix_interactions.py
Writes benchmarks/results/matrix_interactions.md (and .json) and the README block
``matrix-interactions``.

1. Membership: a SimpleNet that memorises 450 digits (test split 0.75, 100 epochs of Adam
   lr 3e-3, no validation split, no early stopping), rows none, pgd-at (eps 0.1), dp:3 and
   dp:8; LiRA offline with 8 shadows trained with each row's recipe, 200 members and 200
   non-members, bootstrap intervals.
2. Adversarial training at a larger radius (eps 0.25) on the same model.
3. Serving policies: the default audit's model (digits, 30 epochs), rows none,
   policy:label-only, policy:top1-rounded; white-box ensemble on 50 points and a
   Knockoff (natural inputs) thief with 1,000 queries.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from machine import describe, write_results

from dlsec.data import load_dataset
from dlsec.scenarios import ScenarioContext
from dlsec.scenarios.matrix import MatrixOptions, run_matrix
from dlsec.training import TrainConfig, configure_threads, train_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "matrix_interactions.md"


def fmt(res: Any, key: str, row: str) -> str:
    value = res.metrics.get(f"{key}@{row}")
    if value is None:
        return "n/a"
    iv = res.details["intervals"].get(f"{key}@{row}")
    if key.endswith("auc"):
        return f"{value:.3f}" + (f" [{iv['lower']:.3f}, {iv['upper']:.3f}]" if iv else "")
    text = f"{value:.1%}" + (f" [{100 * iv['lower']:.1f}, {100 * iv['upper']:.1f}]" if iv else "")
    return f"unresolved: {text}" if iv and iv.get("unresolved") else text


def table(res: Any, keys: list[tuple[str, str]]) -> str:
    rows = [r["defense"] for r in res.details["matrix"]["rows"]]
    lines = ["| defense | " + " | ".join(label for _, label in keys) + " |",
             "|---|" + "---|" * len(keys)]
    lines += ["| " + row + " | " + " | ".join(fmt(res, k, row) for k, _ in keys) + " |"
              for row in rows]
    return "\n".join(lines)


def main() -> None:
    configure_threads(0, model=None, device=torch.device("cpu"))
    machine = describe()
    t0 = time.perf_counter()
    small = load_dataset("digits", seed=0, test_size=0.75)
    model, card, _ = train_model(small, "simplenet", TrainConfig(
        epochs=100, lr=3e-3, seed=0, val_fraction=0.0, restore_best=False), progress=False)
    ctx = ScenarioContext(model=model, card=card, dataset=small, seed=0)
    membership = run_matrix(ctx, ["none", "pgd-at", "dp:3", "dp:8"], MatrixOptions(
        groups=("clean", "membership"), members=200, shadows=8))
    wide = run_matrix(ctx, ["none", "pgd-at", "trades"], MatrixOptions(
        groups=("clean", "membership"), members=200, shadows=8, eps=0.25))
    ds = load_dataset("digits", seed=0)
    model, card, _ = train_model(ds, "simplenet", TrainConfig(epochs=30, lr=3e-3),
                                 progress=False)
    served = run_matrix(ScenarioContext(model=model, card=card, dataset=ds, seed=0),
                        ["none", "policy:label-only", "policy:top1-rounded"],
                        MatrixOptions(groups=("whitebox", "extraction"), samples=50,
                                      extraction_budget=1000))
    seconds = time.perf_counter() - t0
    mem_keys = [("clean_accuracy", "clean accuracy"), ("membership_auc", "LiRA AUC"),
                ("membership_tpr_at_1_fpr", "LiRA TPR @ 1% FPR")]
    block = "\n".join([
        f"Measured by `python benchmarks/matrix_interactions.py` ({machine}; {seconds:.0f} s).",
        "",
        "Membership leakage, a SimpleNet that memorises 450 digits (100 epochs, no early "
        "stopping), LiRA offline with 8 shadows trained with each row's recipe, 200 + 200 "
        "records, adversarial training at eps 0.1:", "",
        table(membership, mem_keys), "",
        "The same model, adversarial training at eps 0.25:", "",
        table(wide, mem_keys), "",
        "Serving policies on the default audit's model (white-box ensemble on 50 points; a "
        "Knockoff thief on 1,000 natural inputs, agreement on 180 held-out inputs):", "",
        table(served, [("whitebox_robust_accuracy", "white-box robust accuracy"),
                       ("extraction_fidelity", "extraction fidelity")]),
    ])
    text = "\n".join(["# Defense x attack interactions (digits)", "",
                      "Command: `python benchmarks/matrix_interactions.py`.", "",
                      "<!-- readme: matrix-interactions -->", block,
                      "<!-- end readme: matrix-interactions -->", ""])
    write_results(OUT, text)
    write_results(OUT.with_suffix(".json"), json.dumps(
        {"machine": machine, "seconds": seconds,
         "membership": membership.metrics, "membership_eps_0.25": wide.metrics,
         "serving": served.metrics}, indent=1) + "\n")
    print(block)


if __name__ == "__main__":
    main()
