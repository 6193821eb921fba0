"""DP-SGD: the Fashion-MNIST accuracy anchor, the digits table, and DP epoch speed.

Usage: python benchmarks/dp.py [--quick] [--epochs E] [--paper-epochs E] [--repeat R]
Writes benchmarks/results/dp.md (``--quick``: a smoke run on small subsets, one epoch and
one repeat, written to benchmarks/.cache/dp-quick.md so it never replaces the results).

1. Accuracy anchor: Papernot et al.'s tempered-sigmoid CNN (``tanhcnn``) on Fashion-MNIST,
   trained by ``dlsec.defenses.dp.dp_train`` with the paper's recipe (SGD lr 4 momentum
   0.9, batch 2048, clipping norm 0.12, delta 1e-5, constant learning rate), the noise
   found by Opacus's ``make_private_with_epsilon`` for each target epsilon, beside the
   same network trained without privacy (``train_model``).
2. Digits: the same table for the digits models.
3. Speed: one DP epoch against one plain epoch of the same model, batch and data, dlsec
   (ghost, hooks, plain ``fit``) beside Opacus used directly (its ``PrivacyEngine`` and a
   plain DataLoader loop, hooks and ghost, against a plain PyTorch loop). Runs are
   interleaved over repeats; medians are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

THREADS = 1  # small models on a shared 2-core machine: one thread, as the other benchmarks
torch.set_num_threads(THREADS)

from machine import describe, load_average, write_results  # noqa: E402  (benchmarks/machine.py)

from dlsec.data import load_dataset  # noqa: E402
from dlsec.defenses.dp import dp_train  # noqa: E402
from dlsec.models import ModelCard, build_model  # noqa: E402
from dlsec.training import TrainConfig, train_model  # noqa: E402

warnings.filterwarnings("ignore")

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "dp.md"
OUT_QUICK = HERE / ".cache" / "dp-quick.md"
DELTA = 1e-5

# Papernot et al. (AAAI 2021), Fashion-MNIST: batch 2048, SGD lr 4 momentum 0.9, clipping
# norm 0.12, noise multiplier 2.15, 40 epochs -> epsilon 2.7 (RDP), 86.1 % test accuracy
PAPER = {"batch": 2048, "lr": 4.0, "momentum": 0.9, "clip": 0.12, "noise": 2.15, "epochs": 40,
         "epsilon": 2.7, "accuracy": 0.861}
ANCHOR_EPSILONS = (1.0, 2.7, 8.0)
TARGET_ACCURACY, TARGET_EPSILON = 0.86, 3.0
DIGITS_EPSILONS = (1.0, 3.0, 8.0)
DIGITS_CONFIG = TrainConfig(epochs=15, lr=0.05, batch_size=64, seed=0, device="cpu")
SPEED_BATCH = 256
SPEED_NOISE, SPEED_CLIP = 1.0, 1.0


def subset(ds, n_train: int | None, n_test: int | None):
    """The first ``n`` training / test records (None: all)."""
    return dataclasses.replace(ds, x_train=ds.x_train[:n_train], y_train=ds.y_train[:n_train],
                               x_test=ds.x_test[:n_test], y_test=ds.y_test[:n_test])


# -- 1 and 2: accuracy tables ------------------------------------------------------------------
def accuracy_rows(ds, arch: str, dp_configs: dict[float, TrainConfig],
                  plain_config: TrainConfig, clip: float) -> list[dict]:
    rows = []
    t0 = time.perf_counter()
    _, card, res = train_model(ds, arch, plain_config, progress=False)
    rows.append({"epsilon": None, "accuracy": card.metrics["test_accuracy"],
                 "seconds": time.perf_counter() - t0, "epochs": len(res.history)})
    print(f"  {ds.name} {arch} plain: {rows[-1]['accuracy']:.4f}", flush=True)
    for eps, dp_config in dp_configs.items():
        t0 = time.perf_counter()
        r = dp_train(ds, arch, dp_config, epsilon=eps, delta=DELTA, max_grad_norm=clip,
                     progress=False)
        dp = r.card.training["dp"]
        rows.append({"epsilon": eps, "accuracy": r.card.metrics["test_accuracy"],
                     "seconds": time.perf_counter() - t0, "epochs": len(r.result.history),
                     "prv": dp["epsilon_prv"], "rdp": dp["epsilon_rdp"],
                     "noise": dp["noise_multiplier"], "mode": dp["grad_sample_mode"],
                     "steps": dp["steps"]})
        print(f"  {ds.name} {arch} eps {eps:g}: {rows[-1]['accuracy']:.4f} "
              f"({rows[-1]['seconds']:.0f} s)", flush=True)
    return rows


def accuracy_table(rows: list[dict]) -> list[str]:
    out = ["| training | target epsilon | PRV epsilon | RDP epsilon | noise multiplier | steps "
           "| epochs | test accuracy | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["epsilon"] is None:
            out.append(f"| non-private | - | - | - | - | - | {r['epochs']} | "
                       f"{r['accuracy']:.4f} | {r['seconds']:.0f} |")
        else:
            out.append(f"| DP-SGD ({r['mode']}) | {r['epsilon']:g} | {r['prv']:.3f} | "
                       f"{r['rdp']:.3f} | {r['noise']:.3f} | {r['steps']} | {r['epochs']} | "
                       f"{r['accuracy']:.4f} | {r['seconds']:.0f} |")
    return out


def paper_rdp_epsilon(n: int) -> float:
    """Opacus's RDP epsilon for the paper's own settings (a check of the recipe quoted)."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    q = PAPER["batch"] / n
    acc.history = [(PAPER["noise"], q, int(PAPER["epochs"] * math.ceil(n / PAPER["batch"])))]
    return float(acc.get_epsilon(DELTA))


def anchor(lines: list[str], readme: list[str], *, quick: bool, epochs: int,
           paper_epochs: int) -> None:
    full = load_dataset("fashion-mnist")
    ds = subset(full, 6000, 1000) if quick else full
    n = len(ds.y_train)
    dp_cfg = TrainConfig(epochs=epochs, optimizer="sgd", lr=PAPER["lr"],
                         momentum=PAPER["momentum"], batch_size=PAPER["batch"],
                         schedule="none", val_fraction=0.0, measure_train_accuracy=False,
                         seed=0, device="cpu")
    # the paper's own epsilon at the paper's length; the others shorter, to fit the time
    configs = {e: dataclasses.replace(dp_cfg, epochs=paper_epochs if e == PAPER["epsilon"]
                                      else epochs) for e in ANCHOR_EPSILONS}
    plain_cfg = TrainConfig(epochs=epochs, lr=1e-3, batch_size=128, val_fraction=0.0,
                            measure_train_accuracy=False, seed=0, device="cpu")
    rows = accuracy_rows(ds, "tanhcnn", configs, plain_cfg, PAPER["clip"])
    dp_rows = [r for r in rows if r["epsilon"] is not None]
    within = [r for r in dp_rows if r["prv"] <= TARGET_EPSILON]
    best = max(within, key=lambda r: r["accuracy"]) if within else None
    met = best is not None and best["accuracy"] >= TARGET_ACCURACY
    epoch_s = statistics.median(r["seconds"] / r["epochs"] for r in dp_rows)
    card = ModelCard("tanhcnn", input_shape=list(ds.input_shape), classes=list(ds.classes))
    n_params = sum(p.numel() for p in build_model(card, factory="tanhcnn").parameters())
    short = [r for r in dp_rows if r["epochs"] == epochs]
    spread = (max(r["accuracy"] for r in short) - min(r["accuracy"] for r in short)
              if short else 0.0)
    short_eps = " / ".join(f"{r['epsilon']:g}" for r in short)
    paper_row = next(r for r in dp_rows if r["epsilon"] == PAPER["epsilon"])
    lines += ["## Fashion-MNIST accuracy anchor (Papernot et al.'s tanh CNN)", "",
              f"Data: {n} training and {len(ds.y_test)} test images"
              + (" (quick: a subset)" if quick else " (the full splits)") + f"; delta {DELTA:g}. "
              f"Model: `tanhcnn` (conv 16 8x8/2, max-pool 2/1, conv 32 4x4/2, max-pool 2/1, "
              f"linear 32, linear 10, tanh activations; {n_params:,} parameters), the same "
              "initial weights (seed 0) for every row. DP rows: `dp_train` with the paper's "
              f"recipe (SGD lr {PAPER['lr']:g} momentum {PAPER['momentum']:g}, expected batch "
              f"{PAPER['batch']} by Poisson sampling, clipping norm {PAPER['clip']:g}, constant "
              "learning rate), the noise multiplier found by Opacus's "
              "`make_private_with_epsilon` (PRV accountant) for each target over the row's "
              "epochs; RDP epsilon of the same run beside it. Epsilon "
              f"{PAPER['epsilon']:g} trains the paper's {paper_epochs} epochs; the other "
              f"targets {epochs} (the time a run may take). Non-private row: `train_model`, "
              f"Adam lr 1e-3, batch 128, cosine schedule, {epochs} epochs.", "",
              *accuracy_table(rows), "",
              f"The paper trains {PAPER['epochs']} epochs with noise multiplier "
              f"{PAPER['noise']:g} for epsilon {PAPER['epsilon']:g} and reports "
              f"{PAPER['accuracy']:.1%} (Opacus's RDP accountant gives epsilon "
              f"{paper_rdp_epsilon(len(full.y_train)):.2f} for those settings on the "
              f"{len(full.y_train)} training images); here the same epsilon over "
              f"{paper_row['epochs']} epochs gives {paper_row['accuracy']:.2%}. One DP epoch "
              f"takes {epoch_s:.0f} s here (median over the rows). "
              + (f"The {epochs}-epoch rows differ by only {spread:.1%} across epsilon "
                 f"{short_eps} (the noise multiplier varies {max(r['noise'] for r in short) / min(r['noise'] for r in short):.1f}x): "
                 "at that length the shortfall comes from the number of steps, not from the "
                 "noise. " if len(short) > 1 and spread < 0.02 else "")
              + f"The issue's target, >= {TARGET_ACCURACY:.0%} test accuracy at epsilon <= "
              f"{TARGET_EPSILON:g}: "
              + (f"{'met' if met else 'not met'} (best {best['accuracy']:.2%} at PRV epsilon "
                 f"{best['prv']:.2f}, {best['epochs']} epochs)." if best
                 else "no row within the epsilon."), ""]
    readme += ["<!-- readme: dp-accuracy -->",
               f"On Fashion-MNIST (delta {DELTA:g}), Papernot et al.'s tanh CNN trained by "
               "`dp_train` with their recipe reaches "
               + ", ".join(f"{r['accuracy']:.2%} at epsilon {r['epsilon']:g} ({r['epochs']} "
                           "epochs)" for r in dp_rows)
               + f" (non-private, {epochs} epochs: {rows[0]['accuracy']:.1%}; the paper: "
               f"{PAPER['accuracy']:.1%} at {PAPER['epsilon']:g}); the target of "
               f">= {TARGET_ACCURACY:.0%} at epsilon <= {TARGET_EPSILON:g} is "
               f"{'met' if met else 'not met'} (`python benchmarks/dp.py`, BENCHMARKS.md).",
               "<!-- end readme: dp-accuracy -->", ""]


def digits(lines: list[str], *, quick: bool) -> None:
    ds = load_dataset("digits", seed=0)
    cfg = dataclasses.replace(DIGITS_CONFIG, epochs=1) if quick else DIGITS_CONFIG
    lines += ["## Digits", "",
              f"{len(ds.y_train)} training and {len(ds.y_test)} test digits (8 x 8), delta "
              f"{DELTA:g}. Every row: {cfg.optimizer} lr {cfg.lr:g}, batch {cfg.batch_size} "
              f"(expected batch under Poisson sampling for DP), {cfg.epochs} epochs, cosine "
              f"schedule, {cfg.val_fraction:.0%} validation, clipping norm 1.0 for DP. "
              "`tanhcnn` needs inputs of at least 14 x 14 and is refused on 8 x 8 digits.", ""]
    # the same table for smallcnn would need another learning rate (Adam 0.05 diverges there)
    rows = accuracy_rows(ds, "simplenet", dict.fromkeys(DIGITS_EPSILONS, cfg), cfg, 1.0)
    lines += ["### simplenet", "", *accuracy_table(rows), ""]


# -- 3: speed ----------------------------------------------------------------------------------
def _dlsec_epoch(ds, arch: str, mode: str | None) -> float:
    cfg = TrainConfig(epochs=1, optimizer="sgd", lr=0.05, batch_size=SPEED_BATCH,
                      schedule="none", val_fraction=0.0, measure_train_accuracy=False,
                      seed=0, device="cpu")
    if mode is None:
        _, _, res = train_model(ds, arch, cfg, progress=False)
        return float(res.history[0]["seconds"])
    r = dp_train(ds, arch, cfg, noise_multiplier=SPEED_NOISE, max_grad_norm=SPEED_CLIP,
                 grad_sample_mode=mode, progress=False)  # type: ignore[arg-type]
    return float(r.result.history[0]["seconds"])


def _opacus_epoch(ds, arch: str, mode: str | None) -> float:
    """One epoch the way an Opacus user writes it: DataLoader, optimizer, PrivacyEngine."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    card = ModelCard(arch, input_shape=list(ds.input_shape), classes=list(ds.classes))
    torch.manual_seed(0)
    model = build_model(card, factory=arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(ds.x_train, ds.y_train), batch_size=SPEED_BATCH,
                        shuffle=True, generator=torch.Generator().manual_seed(0))
    criterion: Callable = torch.nn.CrossEntropyLoss()
    if mode == "ghost":
        model, optimizer, criterion, loader = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=loader, criterion=criterion,
            noise_multiplier=SPEED_NOISE, max_grad_norm=SPEED_CLIP, grad_sample_mode="ghost")
    elif mode == "hooks":
        model, optimizer, loader = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=SPEED_NOISE, max_grad_norm=SPEED_CLIP)
    model.train()
    t0 = time.perf_counter()
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


RUNS: dict[str, Callable[[object, str], float]] = {
    "dlsec plain": lambda ds, a: _dlsec_epoch(ds, a, None),
    "dlsec ghost": lambda ds, a: _dlsec_epoch(ds, a, "ghost"),
    "dlsec hooks": lambda ds, a: _dlsec_epoch(ds, a, "hooks"),
    "PyTorch plain loop": lambda ds, a: _opacus_epoch(ds, a, None),
    "Opacus ghost": lambda ds, a: _opacus_epoch(ds, a, "ghost"),
    "Opacus hooks (default)": lambda ds, a: _opacus_epoch(ds, a, "hooks"),
}
BASE = {"dlsec ghost": "dlsec plain", "dlsec hooks": "dlsec plain",
        "Opacus ghost": "PyTorch plain loop", "Opacus hooks (default)": "PyTorch plain loop"}


def speed(lines: list[str], readme: list[str], *, quick: bool, repeat: int) -> None:
    full = load_dataset("fashion-mnist")
    sizes = {"tanhcnn": 1024 if quick else 10240, "smallcnn": 512 if quick else 2560}
    lines += ["## DP epoch speed (Fashion-MNIST)", "",
              f"One epoch of the first N training images (N below, a fixed subset for timing), "
              f"batch {SPEED_BATCH} (expected batch under Poisson sampling), SGD lr 0.05, "
              f"noise multiplier {SPEED_NOISE:g}, clipping norm {SPEED_CLIP:g}, {THREADS} "
              f"thread. dlsec: `fit` (plain) and `dp_train` (ghost, hooks), the epoch's own "
              "seconds from the history (setup and evaluation excluded). Opacus directly: "
              "its `PrivacyEngine.make_private` on a shuffled `DataLoader` and a plain loop "
              "(hooks is its default mode), against the same loop without Opacus. Runs are "
              f"interleaved over {repeat} repeat(s) so load affects all alike; medians. "
              "Ratio: DP epoch / the plain epoch of the same loop.", "",
              "| model | N | run | epoch seconds (median) | ratio to plain | runs |",
              "|---|---|---|---|---|---|"]
    ratios: dict[str, dict[str, float]] = {}
    versus: dict[str, dict[str, float]] = {}
    for arch, n in sizes.items():
        ds = subset(full, n, 256)
        times: dict[str, list[float]] = {k: [] for k in RUNS}
        for _ in range(repeat):
            for name, run in RUNS.items():
                times[name].append(run(ds, arch))
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in RUNS:
            ratio = f"{med[name] / med[BASE[name]]:.2f}x" if name in BASE else "-"
            lines.append(f"| {arch} | {n} | {name} | {med[name]:.2f} | {ratio} | "
                         f"{', '.join(f'{t:.2f}' for t in times[name])} |")
        ratios[arch] = {k: med[k] / med[b] for k, b in BASE.items()}
        versus[arch] = {"plain": med["dlsec plain"] / med["PyTorch plain loop"],
                        "ghost": med["dlsec ghost"] / med["Opacus ghost"],
                        "hooks": med["dlsec hooks"] / med["Opacus hooks (default)"]}
        print(f"  speed {arch}: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()), flush=True)
    met = all(r["dlsec ghost"] <= 2.0 for r in ratios.values())

    def per_arch(run: str) -> str:
        return " / ".join(f"{r[run]:.2f}x" for r in ratios.values())

    archs = " / ".join(ratios)
    lines += ["", "The issue's target, a ghost-clipping DP epoch <= 2.0x a plain epoch: "
              + ("met" if met else "not met") + " ("
              + "; ".join(f"{a} {r['dlsec ghost']:.2f}x" for a, r in ratios.items()) + ").",
              "", "dlsec's epoch against Opacus's own loop in the same mode (time / time; "
              "below 1: dlsec faster): "
              + "; ".join(f"{a}: plain {v['plain']:.2f}, ghost {v['ghost']:.2f}, hooks "
                          f"{v['hooks']:.2f}" for a, v in versus.items())
              + ". The Opacus-style loop draws each batch through a `DataLoader` that "
              "indexes and stacks records one by one, in its plain and its DP epochs alike; "
              "dlsec's `fit` indexes the tensors once per batch.", ""]
    readme += ["<!-- readme: dp-speed -->",
               f"A DP-SGD epoch costs, against a plain epoch of the same model and data "
               f"({archs} on Fashion-MNIST, batch {SPEED_BATCH}, {THREADS} CPU thread): "
               f"{per_arch('dlsec ghost')} with dlsec's ghost clipping (the default where the "
               f"layers allow it), {per_arch('dlsec hooks')} with hooks; Opacus used directly "
               f"(its own loop) {per_arch('Opacus ghost')} ghost, "
               f"{per_arch('Opacus hooks (default)')} hooks (`python benchmarks/dp.py`).",
               "<!-- end readme: dp-speed -->", ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small subsets, 1 epoch, 1 repeat")
    ap.add_argument("--epochs", type=int, default=8,
                    help="epochs of the anchor's non-private row and epsilon 1 and 8 rows")
    ap.add_argument("--paper-epochs", type=int, default=PAPER["epochs"],
                    help="epochs of the anchor's epsilon 2.7 row (the paper's 40)")
    ap.add_argument("--repeat", type=int, default=3, help="speed repeats")
    args = ap.parse_args()
    epochs = 1 if args.quick else args.epochs
    paper_epochs = 1 if args.quick else args.paper_epochs
    repeat = 1 if args.quick else args.repeat
    t0 = time.perf_counter()
    machine = describe(threads=THREADS)
    cmd = ".venv/bin/python benchmarks/dp.py" + (" --quick" if args.quick else "")
    if not args.quick and args.epochs != 8:
        cmd += f" --epochs {args.epochs}"
    if not args.quick and args.paper_epochs != PAPER["epochs"]:
        cmd += f" --paper-epochs {args.paper_epochs}"
    if not args.quick and args.repeat != 3:
        cmd += f" --repeat {args.repeat}"
    # run the short parts first; the file shows the anchor first
    speed_lines: list[str] = []
    digits_lines: list[str] = []
    anchor_lines: list[str] = []
    speed_readme: list[str] = []
    anchor_readme: list[str] = []
    speed(speed_lines, speed_readme, quick=args.quick, repeat=repeat)
    digits(digits_lines, quick=args.quick)
    anchor(anchor_lines, anchor_readme, quick=args.quick, epochs=epochs,
           paper_epochs=paper_epochs)
    body = anchor_lines + digits_lines + speed_lines
    readme = anchor_readme + speed_readme
    head = ["# Differential privacy (DP-SGD on Opacus)", "",
            f"Command: `{cmd}`: {machine}. The whole script took "
            f"{time.perf_counter() - t0:.0f} s; load average at its end {load_average()}"
            " (a load above the 2 cores means other jobs shared the machine: ratios are "
            "measured side by side, absolute seconds are not comparable across runs).", ""]
    text = "\n".join(head + body + readme).rstrip() + "\n"
    write_results(OUT_QUICK if args.quick else OUT, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
