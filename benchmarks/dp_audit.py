"""How tight the one-run privacy audit is, and what membership inference finds, per epsilon.

Usage: python benchmarks/dp_audit.py [--quick] [--seeds N]
(writes benchmarks/results/dp_audit.md; --quick writes benchmarks/.cache/dp_audit-quick.md)

The audit section's own scenario (:func:`dlsec.scenarios.dp_sweep.dp_sweep`, section ``dp``)
in its full configuration, on digits: for each target epsilon one DP-SGD run with input-space
(black-box) and Dirac gradient (white-box) canaries planted (Steinke, Nasr and Jagielski,
NeurIPS 2023), the undefended recipe retrained with the same canaries, and online LiRA
(DP-trained shadows) and the loss attack on every model. Reported per seed and as the
mean over seeds: the empirical lower bound as a fraction of the accountant's epsilon.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

THREADS = 1  # small models: one thread beats two on a shared 2-core machine
torch.set_num_threads(THREADS)

from machine import describe, load_average, write_results  # noqa: E402  (benchmarks/machine.py)

from dlsec.attacks.privacy.one_run import epsilon_lower_bound  # noqa: E402
from dlsec.data import load_dataset  # noqa: E402
from dlsec.defenses.dp.canaries import default_guesses  # noqa: E402
from dlsec.scenarios.context import ScenarioContext  # noqa: E402
from dlsec.scenarios.dp_sweep import DPSweepOptions, dp_sweep  # noqa: E402
from dlsec.training import TrainConfig, scaled_epochs, train_model  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "dp_audit.md"
OUT_QUICK = HERE / ".cache" / "dp_audit-quick.md"  # a smoke run never lands in results/
EPSILONS = (1.0, 3.0, 8.0)


def sweep(seed: int, *, quick: bool) -> tuple[dict[str, float], dict]:
    ds = load_dataset("digits", seed=seed)
    # the model `dlsec audit` trains by default (its epochs rule), as the undefended reference
    cfg = TrainConfig(epochs=1 if quick else scaled_epochs(len(ds.y_train)), lr=3e-3, seed=seed)
    model, card, _ = train_model(ds, "simplenet", cfg, progress=False)
    opt = DPSweepOptions(epsilons=EPSILONS, epochs=2 if quick else 15,
                         shadows=2 if quick else 16, lira_online=True,
                         lira_epsilons=EPSILONS, canary_m=200 if quick else 1000)
    res = dp_sweep(ScenarioContext(model=model, card=card, dataset=ds, seed=seed,
                                   progress=False), opt)
    return res.metrics, {"options": opt, "test": int(ds.y_test.shape[0]),
                         "warnings": res.warnings}


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny configuration, one seed")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds (0 .. N-1)")
    args = ap.parse_args()
    seeds = list(range(1 if args.quick else args.seeds))
    t0 = time.perf_counter()
    machine = describe(threads=THREADS)
    runs = []
    for s in seeds:
        t = time.perf_counter()
        metrics, info = sweep(s, quick=args.quick)
        runs.append((s, metrics, info))
        print(f"seed {s}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    opt = runs[0][2]["options"]
    labels = [f"{e:g}" for e in EPSILONS] + ["undefended"]
    lines = ["# Differential privacy: audit tightness and membership inference", ""]
    cmd = "python benchmarks/dp_audit.py" + (" --quick" if args.quick else "") + \
        ("" if args.quick or args.seeds == 3 else f" --seeds {args.seeds}")
    lines += [
        f"Command: `{cmd}`: {machine}; {time.perf_counter() - t0:.0f} s in all, load average "
        f"at the end {load_average()}.", "",
        f"Digits (SimpleNet), seeds {', '.join(map(str, seeds))}, the `dp` section's scenario "
        f"in its full configuration: DP-SGD {opt.epochs} epochs, Adam lr {opt.lr:g}, expected "
        f"batch {opt.batch_size}, clipping norm {opt.max_grad_norm:g}, delta {opt.delta:g}; "
        f"{opt.canary_m} input-space canaries (uniform noise, random labels; black-box: "
        f"the final model's loss) and {opt.canary_m} Dirac gradient canaries (white-box: the "
        "noised gradient at each canary's coordinate, summed over steps) planted in the same "
        f"run, each included with probability 1/2, bounds at {opt.confidence:.0%} "
        "confidence. The undefended row retrains the audit's default recipe with the same "
        "canaries (its gradient canaries run through Opacus with clipping and no noise). "
        f"Membership inference: online LiRA with {opt.shadows} shadows trained like each "
        f"model (DP-SGD at its noise, clipping and sample rate) and the loss attack, on "
        f"{opt.members} training records against as many test records; test accuracy on "
        f"{runs[0][2]['test']} test records.", "",
        "| model | seed | test accuracy | ε (PRV) | ε (RDP) | bound, gradient canaries "
        "(fraction of ε) | bound, input canaries (fraction) | LiRA AUC | LiRA TPR @ 0.1% FPR "
        "| LiRA TPR @ 1% FPR | loss AUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(m: dict[str, float], key: str, digits: int = 3) -> str:
        return f"{m[key]:.{digits}f}" if key in m else "-"

    def frac(m: dict[str, float], kind: str, lbl: str) -> str:
        b, e = m.get(f"epsilon_lower_bound_{kind}@{lbl}"), m.get(f"epsilon@{lbl}")
        if b is None:
            return "-"
        return f"{b:.2f} ({b / e:.2f})" if e else f"{b:.2f}"

    fractions: dict[tuple[str, str], list[float]] = {}
    above = 0
    for lbl in labels:
        for s, m, _ in runs:
            lines.append(
                f"| {'undefended' if lbl == 'undefended' else 'DP-SGD ε=' + lbl} | {s} | "
                f"{cell(m, f'accuracy@{lbl}', 4)} | {cell(m, f'epsilon@{lbl}')} | "
                f"{cell(m, f'epsilon_rdp@{lbl}')} | {frac(m, 'gradient', lbl)} | "
                f"{frac(m, 'input', lbl)} | {cell(m, f'lira_auc@{lbl}')} | "
                f"{cell(m, f'lira_tpr_at_0_1_fpr@{lbl}')} | {cell(m, f'lira_tpr_at_1_fpr@{lbl}')} | "
                f"{cell(m, f'loss_auc@{lbl}')} |")
            e = m.get(f"epsilon@{lbl}")
            for kind in ("gradient", "input"):
                b = m.get(f"epsilon_lower_bound_{kind}@{lbl}")
                if b is not None and e:
                    fractions.setdefault((lbl, kind), []).append(b / e)
                    above += b > e
    lines.append("")
    summary = []
    for lbl in labels[:-1]:
        g, i = _mean(fractions.get((lbl, "gradient"), [])), _mean(fractions.get((lbl, "input"), []))
        summary.append(f"ε={lbl}: {g:.2f} (gradient canaries) and {i:.2f} (input canaries)")
    und = [m.get("epsilon_lower_bound_gradient@undefended") for _, m, _ in runs]
    und_in = [m.get("epsilon_lower_bound_input@undefended") for _, m, _ in runs]
    lira_dp = [m.get(f"lira_auc@{lbl}") for _, m, _ in runs for lbl in labels[:-1]]
    lira_und = [m.get("lira_auc@undefended") for _, m, _ in runs]
    # the largest bound the gradient audit's guesses allow: all of them correct
    k_grad = default_guesses(opt.canary_m, "gradient")
    ceiling = epsilon_lower_bound(k_grad, k_grad, delta=opt.delta, confidence=opt.confidence,
                                  canaries=opt.canary_m)
    verdict = ("no bound exceeded its accountant's ε" if above == 0 else
               f"{above} bound(s) EXCEEDED the accountant's ε: a bug in the training, the "
               "sampler or the accountant")
    text = (
        f"Mean lower bound as a fraction of the accountant's ε over {len(seeds)} seed(s): "
        + "; ".join(summary) + f"; {verdict}. The undefended model's canaries give "
        f"{_mean([v for v in und if v is not None]):.2f} (gradient, from a clipped run "
        f"without noise; {ceiling:.2f} is the most {k_grad} guesses can show) and "
        f"{_mean([v for v in und_in if v is not None]):.2f} (input). Online LiRA's AUC: "
        f"{min(v for v in lira_dp if v is not None):.3f} to "
        f"{max(v for v in lira_dp if v is not None):.3f} on the DP models, "
        f"{min(v for v in lira_und if v is not None):.3f} to "
        f"{max(v for v in lira_und if v is not None):.3f} on the undefended one.")
    lines += [text, "", "<!-- readme: dp-audit -->", text + f" (`{cmd}`)",
              "<!-- end readme: dp-audit -->", ""]
    write_results(OUT_QUICK if args.quick else OUT, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
