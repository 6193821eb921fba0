"""Gradient leakage: how much of a federated client's batch its update gives away.

For each batch size, ``trials`` batches are drawn from the training split (a client's
data), their gradient on the given model (the global weights the client received) is
computed as the client would send it, and a gradient-leakage attack reconstructs the batch
(:mod:`dlsec.attacks.privacy.gradient_leakage`). Reconstructions are matched to the
originals (best total PSNR) and scored: PSNR, SSIM, and the share an *independent* model
(trained separately on the dataset, stream ``leakage/evaluator``) classifies as the
original's label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlsec.attacks.privacy.gradient_leakage import (
    ATTACKS,
    client_gradient,
    match_reconstructions,
    psnr,
    run_attack,
    ssim,
)
from dlsec.data import Dataset
from dlsec.errors import DlsecError
from dlsec.models import CardLike
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.training import TrainConfig, predict_logits, train_model


class LeakageSettingsError(DlsecError):
    """Gradient-leakage settings that cannot run (batch sizes, trials, attack name)."""


def _check(batch_sizes: Sequence[int], attack: str, iterations: int, trials: int,
           n_train: int) -> list[int]:
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise LeakageSettingsError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    if max(sizes) > n_train:
        raise LeakageSettingsError(f"batch size {max(sizes)} exceeds the {n_train} "
                                   "training examples")
    if attack not in ATTACKS:
        raise LeakageSettingsError(f"unknown gradient-leakage attack {attack!r} "
                                   f"(choose from {', '.join(ATTACKS)})")
    if attack == "idlg" and any(b != 1 for b in sizes):
        raise LeakageSettingsError("idlg reconstructs batches of one only")
    if iterations < 1 or trials < 1:
        raise LeakageSettingsError("iterations and trials must be >= 1")
    return sizes


def gradient_leakage(dataset: Dataset, model: nn.Module, card: CardLike, *,
                     batch_sizes: Sequence[int] = (1, 2, 4),
                     attack: str = "inverting-gradients", iterations: int = 300,
                     trials: int = 4, seed: int = 0, evaluator: str = "simplenet",
                     evaluator_epochs: int = 10, evaluator_model: nn.Module | None = None
                     ) -> ScenarioResult:
    """Reconstruct client batches of each size from their gradients and score them.

    ``metrics``: ``psnr_b<k>``, ``ssim_b<k>``, ``recognised_b<k>`` (means over all
    reconstructed images of batch size ``k``) and ``originals_recognised_b<k>`` (the
    evaluator's accuracy on the originals, the ceiling); one table row per batch size;
    ``figures["gallery"]``: for the first batch of each size, originals beside their matched
    reconstructions (images, labels, bounds). ``evaluator_model`` replaces the independently
    trained evaluator (it must not be ``model``).
    """
    sizes = _check(batch_sizes, attack, iterations, trials, len(dataset.y_train))
    if evaluator_model is model:
        raise LeakageSettingsError("the evaluator must be a model other than the attacked one")
    device = next(model.parameters()).device
    if evaluator_model is None:
        evaluator_model, _, _ = train_model(
            dataset, evaluator,
            TrainConfig(epochs=evaluator_epochs, lr=3e-3, seed=seed + 7919,
                        measure_train_accuracy=False, device=str(device)),
            progress=False)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = float(card.bounds[0]), float(card.bounds[1])
    metrics: dict[str, float] = {}
    rows: list[list] = []
    gallery_images: list[torch.Tensor] = []
    gallery_labels: list[str] = []
    label_hits: dict[int, float] = {}
    for b in sizes:
        ps: list[float] = []
        ss: list[float] = []
        hits: list[bool] = []
        base: list[bool] = []
        labels_right: list[bool] = []
        for trial in range(trials):
            idx = torch.randperm(len(dataset.y_train), generator=gen)[:b]
            x, y = dataset.x_train[idx].to(device), dataset.y_train[idx].to(device)
            grad = client_gradient(model, x, y)
            res = run_attack(attack, model, grad, card=card, batch_size=b,
                             iterations=iterations, generator=gen)
            perm = match_reconstructions(res.inputs, x.cpu(), data_range=hi - lo)
            rec = res.inputs[perm]
            ps += psnr(rec, x.cpu(), data_range=hi - lo).clamp(max=100.0).tolist()
            if rec.dim() == 4:
                ss += ssim(rec, x.cpu(), data_range=hi - lo).tolist()
            pred = predict_logits(evaluator_model, rec.to(device)).argmax(1).cpu()
            hits += (pred == y.cpu()).tolist()
            base += (predict_logits(evaluator_model, x).argmax(1).cpu() == y.cpu()).tolist()
            labels_right.append(bool((res.labels.sort().values == y.cpu().sort().values).all()))
            if trial == 0:
                gallery_images += [x.cpu(), rec]
                gallery_labels += [f"{card.classes[int(c)]} (b={b}, original)" for c in y]
                gallery_labels += [f"{card.classes[int(c)]} (b={b}, reconstructed)" for c in y]
        metrics[f"psnr_b{b}"] = round(sum(ps) / len(ps), 4)
        metrics[f"ssim_b{b}"] = round(sum(ss) / len(ss), 4) if ss else float("nan")
        metrics[f"recognised_b{b}"] = round(sum(hits) / len(hits), 4)
        metrics[f"originals_recognised_b{b}"] = round(sum(base) / len(base), 4)
        label_hits[b] = sum(labels_right) / len(labels_right)
        rows.append([b, len(hits), metrics[f"psnr_b{b}"], metrics[f"ssim_b{b}"],
                     metrics[f"recognised_b{b}"], metrics[f"originals_recognised_b{b}"],
                     round(label_hits[b], 4)])
    first = sizes[0]
    summary = (f"{attack}: at batch size {first}, {metrics[f'recognised_b{first}']:.0%} of "
               f"reconstructions are recognised by an independent model "
               f"(PSNR {metrics[f'psnr_b{first}']:.1f} dB)")
    table = Table(f"Gradient leakage ({attack}, {iterations} iterations)",
                  ["batch size", "images", "PSNR (dB)", "SSIM", "recognised",
                   "originals recognised", "labels right"],
                  rows, caption="recognised: share of reconstructions an independently trained "
                                "model classifies as the original's label")
    return ScenarioResult(
        name="gradient-leakage", summary=summary, metrics=metrics, tables=[table],
        figures={"gallery": {"images": torch.cat(gallery_images), "labels": gallery_labels,
                             "bounds": (lo, hi)}},
        details={"attack": attack, "iterations": iterations, "trials": trials,
                 "batch_sizes": sizes, "seed": seed,
                 "labels_right": {str(k): v for k, v in label_hits.items()}},
        artifacts={"evaluator": evaluator_model})


__all__ = ["LeakageSettingsError", "gradient_leakage"]
