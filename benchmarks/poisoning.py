"""Poisoning and sanitization: damage of each attack and repair by each sanitizer, with
ART's backdoor attack and its two backdoor detectors side by side on the same data/model.

Usage: python benchmarks/poisoning.py [--quick]
Writes benchmarks/results/poisoning.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe, load_average

from dlsec.attacks.poisoning import backdoor, optimized_flip, random_flip
from dlsec.data import load_dataset, stratified_split
from dlsec.defenses.sanitization import (
    SanitizerSettings,
    detection_metrics,
    model_factory,
    sanitize,
    train_on,
)
from dlsec.scenarios.poisoning import run_collision_trials, run_poisoning_experiment
from dlsec.training import TrainConfig, evaluate, predict_logits

OUT = Path(__file__).resolve().parent / "results" / "poisoning.md"


def subsample(ds, n_train: int, n_test: int, seed: int = 0):
    if ds.y_train.numel() > n_train:
        _, keep = stratified_split(ds.y_train, test_size=n_train / ds.y_train.numel(), seed=seed)
        ds = dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])
    if ds.y_test.numel() > n_test:
        _, keep = stratified_split(ds.y_test, test_size=n_test / ds.y_test.numel(), seed=seed)
        ds = dataclasses.replace(ds, x_test=ds.x_test[keep], y_test=ds.y_test[keep])
    return ds


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def flips(name, ds, arch, cfg, lines, folds):
    make = model_factory(arch, input_shape=ds.input_shape, classes=ds.classes)
    clean = train_on(ds.x_train, ds.y_train, make_model=make, config=cfg)
    lines += [f"\n#### Label flipping on {name} ({arch}, {ds.y_train.numel()} training samples, "
              f"{cfg.epochs} epochs)\n",
              "| rate | clean acc % | random flip acc % (drop pp) | optimized flip acc % "
              "(drop pp) |", "|---|---|---|---|"]
    san_rows = []
    for rate in (0.2, 0.3, 0.4):
        p = random_flip(ds.x_train, ds.y_train, rate=rate, generator=torch.Generator().manual_seed(0))
        sans = ("cleanlab", "knn", "loss") if rate == 0.2 else ()
        t0 = time.perf_counter()
        er = run_poisoning_experiment(ds, p, architecture=arch, config=cfg, clean_model=clean,
                                      sanitizers=sans, settings=SanitizerSettings(folds=folds))
        eo = run_poisoning_experiment(ds, optimized_flip(ds.x_train, ds.y_train, rate=rate,
                                                         surrogate=clean),
                                      architecture=arch, config=cfg, clean_model=clean)
        lines.append(f"| {rate:.0%} | {pct(er.clean_accuracy)} | {pct(er.poisoned_accuracy)} "
                     f"({100 * er.accuracy_drop:.1f}) | {pct(eo.poisoned_accuracy)} "
                     f"({100 * eo.accuracy_drop:.1f}) |")
        for r in er.sanitized:
            san_rows.append(f"| {r.method} | {r.detection.flagged} / {r.detection.poisoned} | "
                            f"{pct(r.detection.precision)} | {pct(r.detection.recall)} | "
                            f"{pct(r.accuracy)} | {pct(r.recovered)} | {r.seconds:.1f} |")
        print(name, rate, er.poisoned_accuracy, eo.poisoned_accuracy, time.perf_counter() - t0,
              flush=True)
    lines += [f"\nSanitizers against 20 % random flipping on {name} (poisoned accuracy "
              "in the table above; recovered = share of the lost accuracy regained after "
              "retraining on the kept samples):\n",
              "| sanitizer | flagged / flipped | precision % | recall % | acc after % | "
              "recovered % | seconds |", "|---|---|---|---|---|---|---|", *san_rows]
    return clean


def art_classifier(model, ds):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(),
                             input_shape=tuple(ds.input_shape), nb_classes=ds.num_classes,
                             clip_values=ds.bounds)


def backdoors(name, ds, arch, cfg, lines):
    from art.attacks.poisoning import PoisoningAttackBackdoor
    from art.attacks.poisoning.perturbations import add_pattern_bd
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense

    make = model_factory(arch, input_shape=ds.input_shape, classes=ds.classes)
    clean = train_on(ds.x_train, ds.y_train, make_model=make, config=cfg)
    clean_acc = evaluate(clean, ds.x_test, ds.y_test)["accuracy"]
    rate, target = 0.05, 0
    ours = backdoor(ds.x_train, ds.y_train, target=target, rate=rate, bounds=ds.bounds,
                    generator=torch.Generator().manual_seed(0))
    # ART: same samples, ART's pattern (add_pattern_bd), same relabelling
    art_attack = PoisoningAttackBackdoor(lambda x: add_pattern_bd(x, channels_first=True,
                                                                  pixel_value=ds.bounds[1]))
    idx = torch.nonzero(ours.mask).flatten()
    x_art, y_art = ds.x_train.clone(), ds.y_train.clone()
    xp, _ = art_attack.poison(ds.x_train[idx].numpy(), y=np.full(idx.numel(), target))
    x_art[idx] = torch.from_numpy(xp).float()
    y_art[idx] = target
    rows = []
    for label, x_p, y_p, trig in (("dlsec BadNets checker", ours.x, ours.y, "ours"),
                                  ("ART PoisoningAttackBackdoor pattern", x_art, y_art, "art")):
        t0 = time.perf_counter()
        model = train_on(x_p, y_p, make_model=make, config=cfg)
        acc = evaluate(model, ds.x_test, ds.y_test)["accuracy"]
        other = ds.y_test != target
        if trig == "ours":
            asr = ours.success(model, ds.x_test, ds.y_test)
        else:
            xt = torch.from_numpy(add_pattern_bd(ds.x_test[other].numpy(), channels_first=True,
                                                 pixel_value=ds.bounds[1])).float()
            asr = float((predict_logits(model, xt).argmax(1) == target).float().mean())
        det = {}
        for m in ("spectral", "activation"):
            res = sanitize(m, x_p, y_p, num_classes=ds.num_classes, make_model=make, config=cfg,
                           model=model)
            det[f"dlsec {m}"] = detection_metrics(res.mask, ours.mask)
        clf = art_classifier(model, ds)
        xn, yn = x_p.numpy(), np.eye(ds.num_classes)[y_p.numpy()]
        _, is_clean = SpectralSignatureDefense(clf, xn, yn, expected_pp_poison=0.33,
                                               eps_multiplier=1.5).detect_poison()
        det["ART SpectralSignatureDefense"] = detection_metrics(
            torch.tensor(is_clean) == 0, ours.mask)
        _, is_clean = ActivationDefence(clf, xn, yn).detect_poison(nb_clusters=2, nb_dims=10,
                                                                   reduce="PCA")
        det["ART ActivationDefence"] = detection_metrics(torch.tensor(is_clean) == 0, ours.mask)
        for dname, d in det.items():
            rows.append(f"| {label} | {pct(acc)} ({100 * (acc - clean_acc):+.1f}) | {pct(asr)} | "
                        f"{dname} | {pct(d.precision)} | {pct(d.recall)} |")
        print(name, arch, label, acc, asr, time.perf_counter() - t0, flush=True)
    lines += [f"\n#### Backdoor on {name} ({arch}, {rate:.0%} of {ds.y_train.numel()} training "
              f"samples poisoned, target class {target}; clean model {pct(clean_acc)} %)\n",
              "| poisons | clean acc % (vs clean pp) | ASR % | detector | precision % | "
              "recall % |", "|---|---|---|---|---|---|", *rows]


def collisions(name, ds, arch, cfg, lines, n_targets):
    make = model_factory(arch, input_shape=ds.input_shape, classes=ds.classes)
    clean = train_on(ds.x_train, ds.y_train, make_model=make, config=cfg)
    t0 = time.perf_counter()
    tr = run_collision_trials(ds, clean, n_targets=n_targets,
                              generator=torch.Generator().manual_seed(0))
    dist = np.mean([r["image_distance"] for r in tr.rows])
    lines.append(f"| {name} | {arch} | {tr.n_targets} | {tr.successes} | "
                 f"{pct(tr.success_rate)} | {dist:.2f} | {time.perf_counter() - t0:.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller Fashion-MNIST subsample")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread each: the two cores are shared
    t_all = time.perf_counter()
    digits = load_dataset("digits", seed=0)
    fm_n = 3000 if args.quick else 10000
    fm = subsample(load_dataset("fashion-mnist"), fm_n, 2000)
    cfg_d = TrainConfig(epochs=30, lr=3e-3)
    cfg_f = TrainConfig(epochs=15, lr=3e-3, batch_size=128)
    lines = ["## Poisoning and sanitization", "",
             "Command: `.venv/bin/python benchmarks/poisoning.py`" + (" --quick" if args.quick else "")
             + f" ({describe(threads=1)}). Digits: the embedded "
             f"{digits.y_train.numel()}/{digits.y_test.numel()} "
             f"split. Fashion-MNIST: a stratified subsample of {fm.y_train.numel()} training "
             f"and {fm.y_test.numel()} test images (of 60,000/10,000) to stay within ~10 min. "
             f"Every model trains with `dlsec.training.fit` ({cfg_d.optimizer}, lr "
             f"{cfg_d.lr:g}, {cfg_d.schedule} schedule; digits {cfg_d.epochs} epochs, batch "
             f"{cfg_d.batch_size}; Fashion-MNIST {cfg_f.epochs} epochs, batch {cfg_f.batch_size}) "
             "from the same initial weights, no validation split. Cross-validated "
             "probabilities use 5 folds."]
    lines.append("\n### Label flipping: random vs optimized, and the label sanitizers")
    flips("digits", digits, "simplenet", cfg_d, lines, folds=5)
    flips("Fashion-MNIST", fm, "simplenet", cfg_f, lines, folds=5)
    lines.append("\n### Backdoor (BadNets) and the representation sanitizers, vs ART")
    lines.append("\nART's `PoisoningAttackBackdoor` with `add_pattern_bd` poisons the same "
                 "samples with its own corner pattern; ART's `SpectralSignatureDefense` "
                 "(expected_pp_poison 0.33, eps_multiplier 1.5, as dlsec's defaults) and "
                 "`ActivationDefence` (2 clusters, 10 PCA dims) inspect the same trained model "
                 "(ART takes the activations of the model's last top-level child before the "
                 "output, for SimpleNet the pre-ReLU `fc1`; dlsec the input of the last linear "
                 "layer).")
    backdoors("digits", digits, "simplenet", cfg_d, lines)
    backdoors("digits", digits, "smallcnn", cfg_d, lines)
    backdoors("Fashion-MNIST", fm, "simplenet", cfg_f, lines)
    lines += ["\n### Clean-label feature collision (Poison Frogs)\n",
              "Transfer-learning setting of the paper: the victim re-trains the last layer "
              "(60 epochs, Adam lr 1e-2, batch 256) on the clean features plus 20 poisons per "
              "target; each target is a test sample both the network and the poison-free "
              "re-trained victim get right, sent to a random other class. ART's "
              "`FeatureCollisionAttack` was not run side by side (not done in the time).\n",
              "| data | network | targets | successes | success % | mean L2 poison-base | "
              "seconds |", "|---|---|---|---|---|---|---|"]
    collisions("digits", digits, "simplenet", cfg_d, lines, 20)
    collisions("Fashion-MNIST", fm, "simplenet", cfg_f, lines, 20)
    lines.append(f"\nTotal time {time.perf_counter() - t_all:.0f} s; load average at the end "
                 f"{load_average()}.")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
