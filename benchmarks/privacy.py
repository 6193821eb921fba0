"""Privacy benchmark: dlsec's membership inference, extraction and inversion beside ART's.

Usage: python benchmarks/privacy.py   (writes benchmarks/results/privacy.md)
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)  # small models: one thread beats two on a shared 2-core machine

from dlsec.attacks.privacy._common import fresh_model  # noqa: E402
from dlsec.attacks.privacy.extraction import extract, mixup_candidates  # noqa: E402
from dlsec.attacks.privacy.inversion import class_means, inversion_quality, mi_face  # noqa: E402
from dlsec.attacks.privacy.membership import (  # noqa: E402
    ShadowModels,
    lira,
    loss_attack,
    random_halves,
    train_shadow_models,
)
from dlsec.attacks.privacy.metrics import membership_metrics  # noqa: E402
from dlsec.data import load_dataset  # noqa: E402
from dlsec.models import ModelCard  # noqa: E402
from dlsec.threat import LocalOracle  # noqa: E402
from dlsec.training import TrainConfig, fit, predict_logits, train_model  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "privacy.md"
OVERFIT = TrainConfig(epochs=200, lr=1e-2, batch_size=64, val_fraction=0.0, schedule="none",
                      device="cpu")


def art_classifier(model, card, *, lr=3e-3):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(),
                             optimizer=torch.optim.Adam(model.parameters(), lr=lr),
                             input_shape=tuple(card.input_shape), nb_classes=card.num_classes,
                             clip_values=tuple(card.bounds), device_type="cpu")


def membership(lines: list[str]) -> None:
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox

    ds = load_dataset("digits", seed=0)
    x, y = torch.cat([ds.x_train, ds.x_test]), torch.cat([ds.y_train, ds.y_test])
    card = ModelCard("simplenet", input_shape=[1, 8, 8], classes=list(ds.classes))
    keep = random_halves(17, len(y), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    target = fresh_model(card, 0)
    fit(target, x[keep[0]], y[keep[0]], config=OVERFIT, progress=False)
    t_target = time.perf_counter() - t0
    t0 = time.perf_counter()
    sh = train_shadow_models(x, y, card=card, n_models=16, config=OVERFIT, keep=keep[1:],
                             generator=torch.Generator().manual_seed(1))
    oracle = LocalOracle(target, card=card)
    res = lira(oracle, sh, is_member=keep[0])
    t_lira = time.perf_counter() - t0
    # leave-one-out over all 17 models, as in Carlini et al.: each is the target once
    models = [target, *sh.models]
    pooled: dict[str, tuple[list, list]] = {k: ([], []) for k in ("loss", "online", "offline")}
    for t in range(17):
        others = [i for i in range(17) if i != t]
        shadows = ShadowModels([models[i] for i in others], keep[others], sh.x, sh.y)
        o = LocalOracle(models[t], card=card)
        for k, r in (("loss", loss_attack(o, x, y)), ("online", lira(o, shadows)),
                     ("offline", lira(o, shadows, online=False))):
            pooled[k][0].append(r.scores)
            pooled[k][1].append(keep[t])
    lines += ["## Membership inference (digits, overfit SimpleNet)", "",
              f"Pool: all {len(y)} digits; 17 SimpleNets (200 epochs, Adam lr 0.01, no "
              "schedule) on random halves; each is the target once, the other 16 its "
              f"shadows (leave-one-out, {17 * len(y)} scored records, balanced). Target test "
              f"accuracy {float((target(x[~keep[0]]).argmax(1) == y[~keep[0]]).float().mean()):.3f}.",
              "", "| attack | AUC | TPR @ 0.1% FPR | TPR @ 1% FPR | advantage |", "|---|---|---|---|---|"]
    mets = {}
    for k, (s, m) in pooled.items():
        mm = membership_metrics(torch.cat(s), torch.cat(m))
        mets[k] = mm
        lines.append(f"| {k if k == 'loss' else 'LiRA ' + k} | {mm.auc:.4f} | "
                     f"{mm.tpr_at_0_1_fpr:.4%} | {mm.tpr_at_1_fpr:.4%} | {mm.advantage:.4f} |")
    ratio = (mets["online"].tpr_at_0_1_fpr / mets["loss"].tpr_at_0_1_fpr
             if mets["loss"].tpr_at_0_1_fpr > 0 else float("inf"))
    lines += ["", f"LiRA online / loss TPR at 0.1% FPR: {ratio:.1f}x (target: >= 10x). "
              f"LiRA with 16 shadow models (training + attack, one target): {t_lira:.1f} s "
              f"(target <= 120 s; the target itself trained in {t_target:.1f} s).", ""]
    # ART's MembershipInferenceBlackBox: supervised on half the records with known membership
    g = torch.Generator().manual_seed(2)
    perm = torch.randperm(len(y), generator=g)
    tr, te = perm[: len(y) // 2], perm[len(y) // 2 :]
    mem = keep[0]
    clf = art_classifier(target, card)
    t0 = time.perf_counter()
    art = MembershipInferenceBlackBox(clf, attack_model_type="nn")
    art.fit(x[tr][mem[tr]].numpy(), y[tr][mem[tr]].numpy(), x[tr][~mem[tr]].numpy(),
            y[tr][~mem[tr]].numpy())
    art_scores = art.infer(x[te].numpy(), y[te].numpy(), probabilities=True)
    t_art = time.perf_counter() - t0
    art_scores = torch.as_tensor(np.asarray(art_scores)).reshape(len(te), -1)[:, -1]
    art_m = membership_metrics(art_scores.double(), mem[te])
    ours = membership_metrics(res.scores[te], mem[te])
    t0 = time.perf_counter()
    loss_te = loss_attack(LocalOracle(target, card=card), x[te], y[te], is_member=mem[te])
    t_loss = time.perf_counter() - t0
    lines += ["Side by side on the same target and the same evaluation half "
              f"({len(te)} records); ART's attack model is trained on the other half with "
              "known membership (a stronger attacker than LiRA's), LiRA uses the 16 shadows:",
              "", "| attack | AUC | TPR @ 1% FPR | seconds |", "|---|---|---|---|",
              f"| dlsec LiRA online (16 shadows) | {ours.auc:.4f} | {ours.tpr_at_1_fpr:.2%} | "
              f"{t_lira:.1f} |",
              f"| ART MembershipInferenceBlackBox (nn) | {art_m.auc:.4f} | "
              f"{art_m.tpr_at_1_fpr:.2%} | {t_art:.1f} |",
              f"| dlsec loss threshold (no training) | {loss_te.metrics.auc:.4f} | "
              f"{loss_te.metrics.tpr_at_1_fpr:.2%} | {t_loss:.2f} |", ""]


def extraction(lines: list[str]) -> None:
    from art.attacks.extraction import CopycatCNN

    ds = load_dataset("digits", seed=0, test_size=0.5)
    victim, card, _ = train_model(ds, "simplenet", TrainConfig(epochs=30, lr=3e-3),
                                  progress=False)
    n = len(ds.y_test) // 2
    pool, ex, ey = ds.x_test[:n], ds.x_test[n:], ds.y_test[n:]
    vl = predict_logits(victim, ex).argmax(1)
    budget = 10_000
    lines += ["## Model extraction (digits SimpleNet victim, 10,000 queries)", "",
              f"Victim test accuracy {float((vl == ey).float().mean()):.3f}. Attacker data: "
              f"{n} unlabeled test digits (mixup of them once used up); fidelity on the other "
              f"{len(ey)}.", "",
              "| strategy | output | queries | fidelity | accuracy | fidelity per checkpoint "
              "| seconds |", "|---|---|---|---|---|---|---|"]
    for output in ("scores", "label"):
        for strategy in ("random", "natural", "jacobian", "active"):
            o = LocalOracle(victim, card=card, output=output, budget=budget)
            r = extract(o, card=card, strategy=strategy, budget=budget, x_pool=pool, eval_x=ex,
                        eval_victim_labels=vl, eval_y=ey,
                        generator=torch.Generator().manual_seed(0))
            assert r.queries == o.queries_total
            curve = ", ".join(f"{int(c['queries'])}: {c['fidelity']:.3f}" for c in r.curve)
            lines.append(f"| {strategy} | {output} | {r.queries} | {r.fidelity:.4f} | "
                         f"{r.accuracy:.4f} | {curve} | {r.seconds:.1f} |")
    # ART CopycatCNN on the same 10,000 natural queries (pool then mixup), same substitute
    g = torch.Generator().manual_seed(0)
    queries = torch.cat([pool, mixup_candidates(pool, budget - len(pool), generator=g)])
    t0 = time.perf_counter()
    thief = art_classifier(fresh_model(card, 0), card)
    # ART's use_probability takes the victim's outputs as probabilities: add the softmax
    probs_victim = torch.nn.Sequential(victim, torch.nn.Softmax(dim=1))
    copycat = CopycatCNN(art_classifier(probs_victim, card), batch_size_fit=128,
                         batch_size_query=1024, nb_epochs=30, nb_stolen=budget,
                         use_probability=True)
    stolen = copycat.extract(queries.numpy(), thieved_classifier=thief)
    t_art = time.perf_counter() - t0
    pred = torch.as_tensor(stolen.predict(ex.numpy())).argmax(1)
    o = LocalOracle(victim, card=card, budget=budget)
    ours = extract(o, card=card, strategy="natural", budget=budget, x_pool=pool, eval_x=ex,
                   eval_victim_labels=vl, eval_y=ey, schedule=[budget],
                   generator=torch.Generator().manual_seed(0))
    lines += ["", "Side by side, same 10,000 natural queries, same substitute architecture, "
              "30 epochs on the stolen scores:", "", "| attack | fidelity | seconds |",
              "|---|---|---|",
              f"| dlsec extract (natural, one checkpoint) | {ours.fidelity:.4f} | "
              f"{ours.seconds:.1f} |",
              f"| ART CopycatCNN (use_probability) | {float((pred == vl).float().mean()):.4f} | "
              f"{t_art:.1f} |", ""]


def inversion(lines: list[str]) -> None:
    from art.attacks.inference.model_inversion import MIFace

    ds = load_dataset("digits", seed=0)
    target, card, _ = train_model(ds, "simplenet", TrainConfig(epochs=30, lr=3e-3),
                                  progress=False)
    evaluator, _, _ = train_model(ds, "smallcnn", TrainConfig(epochs=30, lr=3e-3, seed=1),
                                  progress=False)
    means = class_means(ds.x_train, ds.y_train, 10)
    ours = mi_face(target, card=card)
    q = inversion_quality(ours, evaluator=evaluator, means=means)
    t0 = time.perf_counter()
    art = MIFace(art_classifier(target, card), max_iter=1000, window_length=100,
                 threshold=0.99, learning_rate=0.1)
    art_x = torch.as_tensor(art.infer(np.zeros((10, 1, 8, 8), dtype=np.float32),
                                      y=np.arange(10)))
    t_art = time.perf_counter() - t0
    art_res = type(ours)(images=art_x, classes=torch.arange(10), confidence=ours.confidence,
                         iterations=ours.iterations)
    qa = inversion_quality(art_res, evaluator=evaluator, means=means)
    lines += ["## Model inversion (MI-Face, digits SimpleNet)", "",
              "Evaluation model: a SmallCNN trained independently (seed 1). Both attacks: "
              "blank start, lr 0.1, window 100, threshold 0.99, at most 1,000 steps.", "",
              "| attack | evaluation-model accuracy | cosine to class mean | seconds |",
              "|---|---|---|---|",
              f"| dlsec mi_face (white-box) | {q['eval_accuracy']:.2f} | {q['mean_cosine']:.3f} "
              f"| {ours.seconds:.2f} |",
              f"| ART MIFace | {qa['eval_accuracy']:.2f} | {qa['mean_cosine']:.3f} | "
              f"{t_art:.2f} |", ""]


def main() -> int:
    lines = ["# Privacy", "", "Command: `.venv/bin/python benchmarks/privacy.py` "
             f"(machine: 2 CPU cores, shared; torch {torch.__version__}, Python "
             f"{platform.python_version()}, 1 torch thread for dlsec and ART alike).", ""]
    for part in (membership, extraction, inversion):
        part(lines)
        print(f"done: {part.__name__}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(OUT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
