"""Privacy benchmark: dlsec's membership inference, extraction and inversion beside ART's.

Usage: python benchmarks/privacy.py [--only digits|fashion-mnist]
(writes benchmarks/results/privacy.md; with --only, only that part runs and its section of
the file is replaced, the other part's section is kept as it is)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

THREADS = 1  # small models: one thread beats two on a shared 2-core machine
torch.set_num_threads(THREADS)

from machine import describe, load_average  # noqa: E402  (benchmarks/machine.py)

from dlsec.attacks.privacy.inversion import class_means, inversion_quality, mi_face  # noqa: E402
from dlsec.attacks.privacy.membership import (  # noqa: E402
    ShadowModels,
    label_only_attack,
    lira,
    loss_attack,
    random_halves,
    shadow_attack,
    train_shadow_models,
)
from dlsec.attacks.privacy.metrics import membership_metrics  # noqa: E402
from dlsec.attacks.surrogate import (  # noqa: E402
    extract,
    fresh_model,
    mixup_candidates,
)
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
    lines += ["### Membership inference (digits, overfit SimpleNet)", "",
              f"Pool: all {len(y)} digits; 17 SimpleNets ({OVERFIT.epochs} epochs, Adam lr "
              f"{OVERFIT.lr:g}, batch {OVERFIT.batch_size}, no schedule), each record in 8 of "
              f"the 17 models' training sets ({int(keep.sum(1).min())}-{int(keep.sum(1).max())} "
              "digits each); each is the target once, the other 16 its "
              f"shadows (leave-one-out, {17 * len(y)} scored records, "
              f"{_membership_counts(pooled)}). Target test "
              f"accuracy {float((target(x[~keep[0]]).argmax(1) == y[~keep[0]]).float().mean()):.3f}.",
              "", "| attack | AUC | TPR @ 0.1% FPR | TPR @ 1% FPR | advantage |", "|---|---|---|---|---|"]
    mets = {}
    for k, (s, m) in pooled.items():
        mm = membership_metrics(torch.cat(s), torch.cat(m))
        mets[k] = mm
        lines.append(f"| {k if k == 'loss' else 'LiRA ' + k} | {mm.auc:.4f} | "
                     f"{mm.tpr_at_0_1_fpr:.4%} | {mm.tpr_at_1_fpr:.4%} | {mm.advantage:.4f} |")
    n_members = int(torch.cat(pooled["loss"][1]).sum())
    lines += ["", lira_vs_loss(mets["online"].tpr_at_0_1_fpr, mets["loss"].tpr_at_0_1_fpr,
                               members=n_members, non_members=17 * len(y) - n_members)
              + f" LiRA with 16 shadow models (training + attack, one target): {t_lira:.1f} s "
              f"(target <= 120 s: {'met' if t_lira <= 120 else 'missed'}; the target itself "
              f"trained in {t_target:.1f} s).", ""]
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
    lines += ["### Model extraction (digits SimpleNet victim, 10,000 queries)", "",
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
    lines += ["### Model inversion (MI-Face, digits SimpleNet)", "",
              "Evaluation model: a SmallCNN trained independently (seed 1). Both attacks: "
              "blank start, lr 0.1, window 100, threshold 0.99, at most 1,000 steps.", "",
              "| attack | evaluation-model accuracy | cosine to class mean | seconds |",
              "|---|---|---|---|",
              f"| dlsec mi_face (white-box) | {q['eval_accuracy']:.2f} | {q['mean_cosine']:.3f} "
              f"| {ours.seconds:.2f} |",
              f"| ART MIFace | {qa['eval_accuracy']:.2f} | {qa['mean_cosine']:.3f} | "
              f"{t_art:.2f} |", ""]


# -- Fashion-MNIST part ------------------------------------------------------------------------
# Sized to run in about 8 minutes on the shared 2-core machine with one torch thread.
FM_POOL = 4_000  # membership pool: random Fashion-MNIST training images (seed 0)
FM_MODELS = 17  # target + 16 shadows, each model the target once (leave-one-out)
FM_OVERFIT = TrainConfig(epochs=60, lr=3e-3, batch_size=128, val_fraction=0.0, schedule="none",
                         device="cpu")
FM_VICTIM_TRAIN = 10_000  # extraction victim / inversion target: the first 10,000 train images
FM_EVAL_TRAIN = (10_000, 14_000)  # the inversion evaluator's own (disjoint) training images
FM_BUDGET = 10_000


def _membership_counts(pooled: dict[str, tuple[list, list]]) -> str:
    """Members and non-members among the scored records, as counted."""
    is_member = torch.cat(next(iter(pooled.values()))[1])
    members = int(is_member.sum())
    return f"{members} members, {is_member.numel() - members} non-members"


def lira_vs_loss(online: float, loss: float, *, members: int, non_members: int) -> str:
    """LiRA online against the loss attack at 0.1% FPR, as measured (target: >= 10x).

    A ratio against zero is no ratio: where the loss attack finds no member at that FPR
    the sentence says so and gives no verdict on the 10x target.
    """
    fp = int(non_members * 0.001)
    head = (f"At 0.1% FPR ({non_members} non-members, so at most {fp} false positives) LiRA "
            f"online finds {online:.2%} of the {members} members (about "
            f"{round(online * members)})")
    if loss > 0:
        ratio = online / loss
        return (head + f", the loss attack {loss:.2%} (about {round(loss * members)}): "
                f"{ratio:.1f}x (target: >= 10x, {'met' if ratio >= 10 else 'missed'}).")
    if online > 0:
        return (head + ", and the loss attack finds no member at 0.1% FPR: no ratio to "
                "compare with the >= 10x target.")
    return head + "; neither attack finds a member at 0.1% FPR: no ratio."


def _row(name: str, m, seconds: float) -> str:
    return (f"| {name} | {m.auc:.4f} | {m.tpr_at_0_1_fpr:.2%} | {m.tpr_at_1_fpr:.2%} | "
            f"{seconds:.1f} |")


def fashion_membership(lines: list[str]) -> None:
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox

    ds = load_dataset("fashion-mnist")
    pick = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(0))[:FM_POOL]
    x, y = ds.x_train[pick], ds.y_train[pick]
    card = ModelCard("simplenet", input_shape=list(ds.input_shape), classes=list(ds.classes))
    n_models = FM_MODELS
    keep = random_halves(n_models, len(y), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    target = fresh_model(card, 0)
    fit(target, x[keep[0]], y[keep[0]], config=FM_OVERFIT, progress=False)
    t_target = time.perf_counter() - t0
    with torch.no_grad():
        acc_train = float((target(x[keep[0]]).argmax(1) == y[keep[0]]).float().mean())
        acc_test = float((target(ds.x_test).argmax(1) == ds.y_test).float().mean())
    t0 = time.perf_counter()
    sh = train_shadow_models(x, y, card=card, n_models=n_models - 1, config=FM_OVERFIT,
                             keep=keep[1:], generator=torch.Generator().manual_seed(1))
    oracle = LocalOracle(target, card=card)
    res = lira(oracle, sh, is_member=keep[0])
    t_lira = time.perf_counter() - t0
    print(f"  fashion membership: target {t_target:.1f} s, LiRA {t_lira:.1f} s", flush=True)
    models = [target, *sh.models]
    kinds = ("loss", "online", "offline", "label-only")
    pooled: dict[str, tuple[list, list]] = {k: ([], []) for k in kinds}
    for t in range(n_models):
        others = [i for i in range(n_models) if i != t]
        shadows = ShadowModels([models[i] for i in others], keep[others], sh.x, sh.y)
        o = LocalOracle(models[t], card=card)
        ol = LocalOracle(models[t], card=card, output="label")
        for k, r in (("loss", loss_attack(o, x, y)), ("online", lira(o, shadows)),
                     ("offline", lira(o, shadows, online=False)),
                     ("label-only", label_only_attack(
                         ol, x, y, generator=torch.Generator().manual_seed(t)))):
            pooled[k][0].append(r.scores)
            pooled[k][1].append(keep[t])
    names = {"loss": "loss threshold", "online": "LiRA online", "offline": "LiRA offline",
             "label-only": "label-only (5 shifts + 20 noise views, labels only)"}
    lines += ["### Membership inference (Fashion-MNIST, overfit SimpleNet)", "",
              f"Pool: {FM_POOL} random Fashion-MNIST training images (seed 0); {n_models} "
              f"SimpleNets ({FM_OVERFIT.epochs} epochs, Adam lr {FM_OVERFIT.lr:g}, batch "
              f"{FM_OVERFIT.batch_size}, no schedule), each record in {n_models // 2} of the "
              f"{n_models} models' training sets ({int(keep.sum(1).min())}-"
              f"{int(keep.sum(1).max())} images each); each is the target once, the other "
              f"{n_models - 1} its shadows "
              f"(leave-one-out, {n_models * FM_POOL} scored records, "
              f"{_membership_counts(pooled)}). Target: train "
              f"accuracy {acc_train:.3f}, accuracy on the 10,000 test images {acc_test:.3f}.",
              "", "| attack | AUC | TPR @ 0.1% FPR | TPR @ 1% FPR | advantage |",
              "|---|---|---|---|---|"]
    mets = {}
    for k, (s, m) in pooled.items():
        mm = membership_metrics(torch.cat(s), torch.cat(m))
        mets[k] = mm
        lines.append(f"| {names[k]} | {mm.auc:.4f} | {mm.tpr_at_0_1_fpr:.4%} | "
                     f"{mm.tpr_at_1_fpr:.4%} | {mm.advantage:.4f} |")
    lo_tpr, on_tpr = mets["loss"].tpr_at_0_1_fpr, mets["online"].tpr_at_0_1_fpr
    n_members = int(torch.cat(pooled["loss"][1]).sum())
    lines += ["", lira_vs_loss(on_tpr, lo_tpr, members=n_members,
                               non_members=n_models * FM_POOL - n_members) + " "
              f"LiRA with {n_models - 1} shadow models (training + attack, one target): "
              f"{t_lira:.1f} s (the target itself trained in {t_target:.1f} s).", ""]
    # side by side on one evaluation half of the pool; ART's attack model and the Shokri
    # attack classifier learn on the other half
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(2))
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
    sh_tr = ShadowModels(sh.models, sh.keep[:, tr], x[tr], y[tr])
    shokri = shadow_attack(LocalOracle(target, card=card), x[te], y[te], shadows=sh_tr,
                           is_member=mem[te])
    loss_te = loss_attack(LocalOracle(target, card=card), x[te], y[te], is_member=mem[te])
    lab_te = label_only_attack(LocalOracle(target, card=card, output="label"), x[te], y[te],
                               is_member=mem[te], generator=torch.Generator().manual_seed(0))
    fp_te = int((~mem[te]).sum()) * 0.001
    lines += ["Side by side on the same target and the same evaluation half "
              f"({len(te)} records, {int((~mem[te]).sum())} of them non-members, so TPR at "
              f"0.1% FPR rests on {fp_te:.1f} false positives); "
              "ART's attack model is trained on the other half with known membership of the "
              "target (a stronger attacker than LiRA's); the Shokri attack classifier learns "
              f"from the {n_models - 1} shadows' outputs on that other half:", "",
              "| attack | AUC | TPR @ 0.1% FPR | TPR @ 1% FPR | seconds |",
              "|---|---|---|---|---|",
              _row(f"dlsec LiRA online ({n_models - 1} shadows)", ours, t_lira),
              _row("ART MembershipInferenceBlackBox (nn)", art_m, t_art),
              _row(f"dlsec Shokri shadow attack ({n_models - 1} shadows, training not "
                   "counted)", shokri.metrics, shokri.seconds),
              _row("dlsec loss threshold (no training)", loss_te.metrics, loss_te.seconds),
              _row("dlsec label-only (labels only)", lab_te.metrics, lab_te.seconds), ""]


def fashion_extraction_inversion(lines: list[str]) -> None:
    from art.attacks.extraction import CopycatCNN
    from art.attacks.inference.model_inversion import MIFace

    ds = load_dataset("fashion-mnist")
    lo, hi = FM_EVAL_TRAIN
    sub = dataclasses.replace(ds, x_train=ds.x_train[:FM_VICTIM_TRAIN],
                              y_train=ds.y_train[:FM_VICTIM_TRAIN])
    t0 = time.perf_counter()
    victim_cfg = TrainConfig(epochs=20, lr=3e-3, batch_size=128)
    victim, card, _ = train_model(sub, "simplenet", victim_cfg, progress=False)
    t_victim = time.perf_counter() - t0
    n = len(ds.y_test) // 2
    pool, ex, ey = ds.x_test[:n], ds.x_test[n:], ds.y_test[n:]
    vl = predict_logits(victim, ex).argmax(1)
    budget = FM_BUDGET
    lines += ["### Model extraction (Fashion-MNIST SimpleNet victim, 10,000 queries)", "",
              f"Victim: SimpleNet trained on the first {FM_VICTIM_TRAIN} training images "
              f"({victim_cfg.epochs} epochs, {victim_cfg.optimizer} lr {victim_cfg.lr:g}, batch "
              f"{victim_cfg.batch_size}, {victim_cfg.schedule} schedule, "
              f"{victim_cfg.val_fraction:.0%} validation; {t_victim:.1f} s), "
              f"accuracy {float((vl == ey).float().mean()):.3f} on the evaluation half. "
              f"Attacker data: the first {n} test images, unlabeled (mixup of them once used "
              f"up); fidelity on the other {len(ey)}. Substitute: SimpleNet, 30 epochs per "
              "checkpoint (warm start), budget 10,000 queries each run.", "",
              "| strategy | output | queries | fidelity | accuracy | fidelity per checkpoint "
              "| seconds |", "|---|---|---|---|---|---|---|"]
    for output in ("scores", "label"):
        for strategy in ("random", "natural", "jacobian", "active"):
            o = LocalOracle(victim, card=card, output=output, budget=budget)
            r = extract(o, card=card, strategy=strategy, budget=budget, x_pool=pool, eval_x=ex,
                        eval_victim_labels=vl, eval_y=ey,
                        generator=torch.Generator().manual_seed(0))
            assert r.queries == o.queries_total <= budget
            curve = ", ".join(f"{int(c['queries'])}: {c['fidelity']:.3f}" for c in r.curve)
            lines.append(f"| {strategy} | {output} | {r.queries} | {r.fidelity:.4f} | "
                         f"{r.accuracy:.4f} | {curve} | {r.seconds:.1f} |")
            print(f"  fashion extraction {strategy}/{output}: {r.fidelity:.4f} "
                  f"({r.seconds:.1f} s)", flush=True)
    g = torch.Generator().manual_seed(0)
    queries = torch.cat([pool, mixup_candidates(pool, max(budget - len(pool), 0),
                                                generator=g)])[:budget]
    t0 = time.perf_counter()
    thief = art_classifier(fresh_model(card, 0), card)
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
    print("  fashion extraction done", flush=True)
    # inversion: the victim above is the target; the evaluator is a SmallCNN trained on
    # other training images under another seed
    ev_ds = dataclasses.replace(ds, x_train=ds.x_train[lo:hi], y_train=ds.y_train[lo:hi])
    t0 = time.perf_counter()
    evaluator, ev_card, _ = train_model(ev_ds, "smallcnn",
                                        TrainConfig(epochs=5, lr=3e-3, seed=1), progress=False)
    t_eval = time.perf_counter() - t0
    means = class_means(ds.x_train, ds.y_train, 10)
    ours_inv = mi_face(victim, card=card)
    q = inversion_quality(ours_inv, evaluator=evaluator, means=means)
    t0 = time.perf_counter()
    art_inv = MIFace(art_classifier(victim, card), max_iter=1000, window_length=100,
                     threshold=0.99, learning_rate=0.1)
    art_x = torch.as_tensor(art_inv.infer(np.zeros((10, *ds.input_shape), dtype=np.float32),
                                          y=np.arange(10)))
    t_art = time.perf_counter() - t0
    art_res = type(ours_inv)(images=art_x, classes=torch.arange(10),
                             confidence=ours_inv.confidence, iterations=ours_inv.iterations)
    qa = inversion_quality(art_res, evaluator=evaluator, means=means)
    lines += ["### Model inversion (MI-Face, Fashion-MNIST SimpleNet)", "",
              "Target: the extraction victim above. Evaluation model: a SmallCNN trained "
              f"independently on training images {lo}-{hi - 1} (seed 1, 5 epochs, {t_eval:.0f} "
              f"s), test accuracy {ev_card.metrics['test_accuracy']:.3f}. Class means: all "
              "60,000 training images. Both attacks: blank start, lr 0.1, window 100, "
              "threshold 0.99, at most 1,000 steps.", "",
              "| attack | evaluation-model accuracy | cosine to class mean | nearest class mean "
              "| target confidence | seconds |", "|---|---|---|---|---|---|",
              f"| dlsec mi_face (white-box) | {q['eval_accuracy']:.2f} | {q['mean_cosine']:.3f} "
              f"| {q['nearest_mean_accuracy']:.2f} | {float(ours_inv.confidence.mean()):.3f} "
              f"| {ours_inv.seconds:.2f} |",
              f"| ART MIFace | {qa['eval_accuracy']:.2f} | {qa['mean_cosine']:.3f} | "
              f"{qa['nearest_mean_accuracy']:.2f} | "
              f"{float(torch.softmax(predict_logits(victim, art_x), 1)[torch.arange(10), torch.arange(10)].mean()):.3f}"
              f" | {t_art:.2f} |", ""]


PARTS = {
    "digits": ("Digits", (membership, extraction, inversion)),
    "fashion-mnist": ("Fashion-MNIST", (fashion_membership, fashion_extraction_inversion)),
}


def _block(text: str, part: str) -> str | None:
    start, end = f"<!-- part: {part} -->", f"<!-- end part: {part} -->"
    if start not in text or end not in text:
        return None
    return text[text.index(start) : text.index(end) + len(end)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(PARTS), help="run one part, keep the other's "
                    "section of the results file")
    args = ap.parse_args(argv)
    old = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
    blocks: dict[str, str | None] = {p: _block(old, p) for p in PARTS}
    for part, (title, funcs) in PARTS.items():
        if args.only not in (None, part):
            continue
        t0 = time.perf_counter()
        machine = describe(threads=THREADS)
        lines = [f"<!-- part: {part} -->", f"## {title}", ""]
        body: list[str] = []
        for f in funcs:
            f(body)
            print(f"done: {f.__name__}", flush=True)
        cmd = f".venv/bin/python benchmarks/privacy.py --only {part}"
        lines += [f"Command: `{cmd}` (or without `--only`, both parts): {machine}, the same "
                  f"thread count for dlsec and ART. This part took "
                  f"{time.perf_counter() - t0:.0f} s; load average at its end "
                  f"{load_average()}.", "", *body, f"<!-- end part: {part} -->"]
        blocks[part] = "\n".join(lines)
    head = ["# Privacy", "",
            "`.venv/bin/python benchmarks/privacy.py` runs both parts and rewrites this file; "
            "`--only digits` or `--only fashion-mnist` runs one part and replaces only its "
            "section.", ""]
    text = "\n".join(head) + "\n" + "\n\n".join(b for b in blocks.values() if b) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
