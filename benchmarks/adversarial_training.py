"""Adversarial training: dlsec PGD-AT against ART's AdversarialTrainerMadryPGD.

Usage: python benchmarks/adversarial_training.py [--quick] [--threads N] [--repeat R]
Writes benchmarks/results/adversarial_training.md.

Both trainers get the same data (the whole training split), the same initial weights, the
same optimizer (Adam, constant learning rate), batch size, epochs and PGD settings (Linf,
eps, 10 steps of 2.5 * eps / 10, one uniform random start, every sample adversarial).
ART crafts each batch's adversarials in one call (its attack batch size is set to the
training batch size). Every model is then evaluated with the same dlsec PGD-40 (one
random start, fixed seed) on the test split.

Each run is a fresh subprocess (so its peak RSS is its own); runs are interleaved over
repeats and the median time is reported. dlsec runs twice: plain (no monitor), and with
its default per-epoch robustness monitor (PGD-10 + FGSM on held-out points after every
epoch, keeps the best-PGD epoch), whose cost is included in its time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from machine import describe, load_average

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "adversarial_training.md"
CACHE = ROOT / "benchmarks" / ".cache"
TRAINERS = ("dlsec", "dlsec+monitor", "art")

warnings.filterwarnings("ignore")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    dataset: str
    arch: str
    eps: float
    epochs: int
    batch_size: int
    lr: float
    n_train: int | None = None  # stratified subsample of the training split
    n_test: int | None = None
    steps: int = 10
    max_repeat: int | None = None  # cap on repeats for the slow settings

    @property
    def alpha(self) -> float:
        return 2.5 * self.eps / self.steps


DIGITS = Setting("digits-simplenet", "digits", "simplenet", 0.2, 20, 128, 1e-2)
FMNIST = Setting("fmnist-smallcnn", "fashion-mnist", "smallcnn", 0.1, 3, 128, 1e-3)
SETTINGS = {
    DIGITS.name: DIGITS,
    FMNIST.name: dataclasses.replace(FMNIST, n_train=2000, n_test=500, max_repeat=1),
}
QUICK = {
    "digits-simplenet": dataclasses.replace(SETTINGS["digits-simplenet"], epochs=10),
    "fmnist-smallcnn": dataclasses.replace(
        SETTINGS["fmnist-smallcnn"], epochs=1, n_train=500, n_test=200
    ),
}


NOTES = [
    "- Target: robust accuracy at least ART's at no more than ART's time.",
    "- dlsec's time includes `fit`'s accuracy pass over the training set after every epoch "
    '(ART has none); "+ monitor" adds the per-epoch PGD-10 and FGSM check on up to 512 '
    "held-out points (here training points, as `val_fraction=0`), the check that detects "
    "catastrophic overfitting and keeps the best-PGD epoch.",
    "- Memory: dlsec's peak comes from its evaluation passes (the training-set accuracy pass "
    "and the monitor's PGD run 512-1024 points per batch), not from the training steps, "
    "which use the same batch of 128 as ART.",
    "",
]


def repeat_note(all_rows: dict[str, dict[str, list[dict]]]) -> str:
    """Whether each trainer's repeats gave the same accuracies, as measured."""
    parts = []
    for trainer, label in (("dlsec", "dlsec"), ("dlsec+monitor", "dlsec + monitor"),
                           ("art", "ART")):
        runs = [rs[trainer] for rs in all_rows.values() if len(rs[trainer]) > 1]
        if not runs:
            continue
        same = all(len({(r["clean"], r["robust"]) for r in rs}) == 1 for rs in runs)
        parts.append(f"{label}'s repeats gave {'identical' if same else 'different'} clean "
                     "and PGD-40 accuracies")
    if not parts:
        return "- One run per trainer: repeatability not measured."
    return ("- Where a setting ran more than once: " + "; ".join(parts) + " (dlsec draws from "
            "seeded generators, ART from numpy's seeded global RNG).")


def dataset(s: Setting):
    """The setting's points. The parent process subsamples once and caches the tensors, so
    a run's peak RSS is not the full dataset's load."""
    from dlsec.data import Dataset, load_dataset, stratified_split

    path = CACHE / f"adversarial-training-{s.name}-{s.n_train}-{s.n_test}.pt"
    if path.exists():
        blob = torch.load(path, weights_only=True)
        return Dataset(
            **{**blob, "classes": tuple(blob["classes"]), "bounds": tuple(blob["bounds"])}
        )
    ds = load_dataset(s.dataset, seed=0)
    if s.n_train is not None and s.n_train < len(ds.y_train):
        frac = 1 - s.n_train / len(ds.y_train)
        keep, _ = stratified_split(ds.y_train, test_size=frac, seed=0)
        ds = dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])
    if s.n_test is not None:
        ds = dataclasses.replace(ds, x_test=ds.x_test[: s.n_test], y_test=ds.y_test[: s.n_test])
    blob = {
        "name": ds.name, "x_train": ds.x_train.contiguous(), "y_train": ds.y_train.contiguous(),
        "x_test": ds.x_test.contiguous(), "y_test": ds.y_test.contiguous(),
        "classes": list(ds.classes), "bounds": list(ds.bounds),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return ds


def config(s: Setting):
    from dlsec.training import TrainConfig

    return TrainConfig(
        epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, schedule="none", val_fraction=0.0,
        seed=0, device="cpu",
    )


def train_dlsec(s: Setting, ds, *, monitor: bool):
    from dlsec.defenses.adversarial import adversarial_train

    model, _card, result = adversarial_train(
        ds, s.arch, method="pgd", eps=s.eps, config=config(s), steps=s.steps, monitor=monitor,
        eval_steps=1, progress=False,
    )
    return model, result.seconds  # fit's own time: the training loop and its monitor


def train_art(s: Setting, ds):
    import numpy as np
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    from dlsec.models import ModelCard, build_model

    card = ModelCard(s.arch, input_shape=list(ds.input_shape), classes=list(ds.classes))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same initial weights as dlsec's train_model(seed=0)
        model = build_model(card)
    np.random.seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    clf = PyTorchClassifier(
        model, loss=torch.nn.CrossEntropyLoss(), optimizer=optimizer,
        input_shape=tuple(ds.input_shape), nb_classes=ds.num_classes, clip_values=ds.bounds,
        device_type="cpu",
    )
    trainer = AdversarialTrainerMadryPGD(
        clf, nb_epochs=s.epochs, batch_size=s.batch_size, eps=s.eps, eps_step=s.alpha,
        max_iter=s.steps, num_random_init=1,
    )
    trainer.attack.set_params(batch_size=s.batch_size, verbose=False)
    x, y = ds.x_train.numpy(), ds.y_train.numpy()
    t0 = time.perf_counter()
    trainer.fit(x, y)
    return model.eval(), time.perf_counter() - t0


def one(setting: str, trainer: str, quick: bool, threads: int) -> None:
    """One run in this (fresh) process; prints a JSON line."""
    from dlsec.attacks.evasion import PGD
    from dlsec.training import evaluate

    torch.set_num_threads(threads)
    s = (QUICK if quick else SETTINGS)[setting]
    ds = dataset(s)
    if trainer == "art":  # imports are not training memory: load them before the baseline
        import art.defences.trainer
        import art.estimators.classification  # noqa: F401
    else:
        import dlsec.defenses.adversarial  # noqa: F401
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trainer == "art":
        model, seconds = train_art(s, ds)
    else:
        model, seconds = train_dlsec(s, ds, monitor=trainer == "dlsec+monitor")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gen = torch.Generator().manual_seed(0)
    res = PGD(steps=40)(model, ds.x_test, ds.y_test, eps=s.eps, bounds=ds.bounds, generator=gen)
    row = {
        "seconds": seconds,
        "clean": evaluate(model, ds.x_test, ds.y_test)["accuracy"],
        "robust": res.robust_accuracy[0],
        "rss_growth_mib": (peak - base) / 1024,
        "rss_peak_mib": peak / 1024,
    }
    print("ROW " + json.dumps(row), flush=True)


def bench(setting: str, quick: bool, threads: int, repeat: int) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {t: [] for t in TRAINERS}
    for r in range(repeat):
        order = TRAINERS if r % 2 == 0 else TRAINERS[::-1]
        for trainer in order:
            cmd = [sys.executable, __file__, "--one", setting, trainer, "--threads", str(threads)]
            proc = subprocess.run(
                cmd + (["--quick"] if quick else []), capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{setting}/{trainer} failed:\n{proc.stderr[-3000:]}")
            line = next(x for x in proc.stdout.splitlines() if x.startswith("ROW "))
            rows[trainer].append(json.loads(line[4:]))
            print(setting, trainer, rows[trainer][-1], flush=True)
    return rows


def table(s: Setting, ds_sizes: tuple[int, int], rows: dict[str, list[dict]]) -> list[str]:
    art_time = statistics.median(r["seconds"] for r in rows["art"])
    lines = [
        f"### {s.name}: {ds_sizes[0]} training / {ds_sizes[1]} test points, Linf eps {s.eps:g}, "
        f"{s.epochs} epochs, batch {s.batch_size}, Adam lr {s.lr:g}, PGD-{s.steps} "
        f"(step {s.alpha:g}, random start)",
        "",
        "| trainer | train time (s, median) | × ART time | clean accuracy | PGD-40 accuracy "
        "| peak RSS (MiB) | RSS growth in training (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"dlsec": "dlsec PGD-AT", "dlsec+monitor": "dlsec PGD-AT + monitor",
             "art": "ART AdversarialTrainerMadryPGD"}
    for t in TRAINERS:
        rs = rows[t]
        sec = statistics.median(r["seconds"] for r in rs)
        clean = ", ".join(f"{r['clean']:.4f}" for r in rs)
        robust = ", ".join(f"{r['robust']:.4f}" for r in rs)
        peak = max(r["rss_peak_mib"] for r in rs)
        growth = max(r["rss_growth_mib"] for r in rs)
        lines.append(
            f"| {names[t]} | {sec:.2f} | {sec / art_time:.2f} | {clean} | {robust} "
            f"| {peak:.0f} | {growth:.0f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--one", nargs=2, metavar=("SETTING", "TRAINER"))
    args = parser.parse_args()
    if args.one:
        one(args.one[0], args.one[1], args.quick, args.threads)
        return 0
    import art

    settings = [k for k in SETTINGS if not args.only or k in args.only]
    cmd = "python benchmarks/adversarial_training.py" + (" --quick" if args.quick else "")
    cmd += f" --threads {args.threads} --repeat {args.repeat}"
    out = [
        "## Adversarial training: dlsec PGD-AT against ART",
        "",
        f"Command: `{cmd}` ({describe(threads=args.threads)}; every run a fresh process; "
        f"ART {art.__version__}). Same data, initial weights, "
        "optimizer, batches, epochs and PGD settings; every model evaluated with the same dlsec "
        "PGD-40. Clean and PGD-40 accuracy are listed per repeat (ART's shuffling and random "
        "starts come from numpy's seeded global RNG, dlsec's from its seeded generators).",
        "",
    ]
    all_rows = {}
    for name in settings:
        s = (QUICK if args.quick else SETTINGS)[name]
        ds = dataset(s)
        repeat = min(args.repeat, s.max_repeat or args.repeat)
        rows = bench(name, args.quick, args.threads, repeat)
        all_rows[name] = rows
        out += [*table(s, (len(ds.y_train), len(ds.y_test)), rows), ""]
    out += [*NOTES[:-1], repeat_note(all_rows), f"- Load average at the end: {load_average()}.",
            ""]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(out).rstrip() + "\n", encoding="utf-8")
    print(OUT.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
