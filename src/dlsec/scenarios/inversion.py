"""Model inversion: MI-Face reconstructs one representative input per class.

White-box (gradients of the model) and black-box (gradients estimated through its oracle,
stream ``inversion/black-box``). With an evaluator named, an independently trained model of
that architecture (stream ``inversion/evaluator``) scores the reconstructions: the share it
recognises as their class, their cosine to the class means of the training data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlsec.attacks.privacy.inversion import (
    InversionResult,
    class_means,
    inversion_quality,
    mi_face,
    mi_face_black_box,
)
from dlsec.data import Dataset
from dlsec.errors import DlsecError
from dlsec.models import CardLike
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.training import TrainConfig, scaled_epochs, train_model


def evaluator_epochs(requested: int, n_train: int) -> int:
    """``requested``, or (0) 10 epochs, fewer where the epochs-by-training-set rule gives
    fewer (Fashion-MNIST's 60,000 images: 1)."""
    return requested or min(10, scaled_epochs(n_train))


def no_data(card: CardLike) -> Dataset:
    """An empty dataset of the card's input shape: MI-Face needs no data of the attacker's
    (only the evaluation of its reconstructions does)."""
    shape = tuple(int(v) for v in card.input_shape)
    empty_x, empty_y = torch.empty(0, *shape), torch.empty(0, dtype=torch.long)
    return Dataset(name="none", x_train=empty_x, y_train=empty_y, x_test=empty_x,
                   y_test=empty_y, classes=tuple(card.classes),
                   bounds=(float(card.bounds[0]), float(card.bounds[1])))


@dataclass
class InversionOptions:
    """``white_box``: run white-box MI-Face (``white_box_iters`` steps at most, None: the
    attack's default); ``black_box_iters``: steps of the black-box variant (0: none);
    ``evaluator``: architecture of the evaluation model (None: no scoring, no data needed);
    ``evaluator_epochs``: its epochs (0: :func:`evaluator_epochs`)."""

    white_box: bool = True
    white_box_iters: int | None = None
    black_box_iters: int = 100
    evaluator: str | None = "simplenet"
    evaluator_epochs: int = 0

    def __post_init__(self) -> None:
        if not self.white_box and self.black_box_iters < 1:
            raise DlsecError("inversion needs the white-box or the black-box variant")
        if self.black_box_iters < 0 or self.evaluator_epochs < 0:
            raise DlsecError("black-box iterations and evaluator epochs must be >= 0")


def run_inversion(ctx: ScenarioContext, options: InversionOptions | None = None
                  ) -> ScenarioResult:
    """Reconstructions (``figures["reconstructions"]``: images, labels, bounds; the class means
    follow them when an evaluator scores them) and their quality.

    ``artifacts["results"]``: ``{"white-box": InversionResult, "black-box": ...}``.
    """
    opt = options or InversionOptions()
    ds, card = ctx.dataset, ctx.card
    found: dict[str, InversionResult] = {}
    if opt.white_box:
        found["white-box"] = (mi_face(ctx.model, card=card) if opt.white_box_iters is None
                              else mi_face(ctx.model, card=card, max_iter=opt.white_box_iters))
    if opt.black_box_iters > 0:
        found["black-box"] = mi_face_black_box(ctx.oracle(output="scores"),
                                               max_iter=opt.black_box_iters,
                                               generator=ctx.generator("inversion/black-box"))
    tag = {"white-box": "wb", "black-box": "bb"}
    images = [r.images.cpu() for r in found.values()]
    labels = [f"{card.classes[int(c)]} ({tag[k]})" for k, r in found.items() for c in r.classes]
    metrics: dict[str, float] = {}
    rows: list[list] = []
    details: dict = {"variants": list(found),
                     "iterations": {k: r.iterations.tolist() for k, r in found.items()},
                     "queries": {k: r.queries for k, r in found.items()}}
    if opt.evaluator is not None:
        epochs = evaluator_epochs(opt.evaluator_epochs, len(ds.y_train))
        evaluator, _, _ = train_model(
            ds, opt.evaluator,
            TrainConfig(epochs=epochs, lr=3e-3, batch_size=128,
                        seed=ctx.seed_for("inversion/evaluator"), measure_train_accuracy=False,
                        device=str(ctx.device)),
            progress=False,
        )
        details["evaluator_epochs"] = epochs
        means = class_means(ds.x_train.to(ctx.device), ds.y_train.to(ctx.device),
                            ds.num_classes)
        for k, r in found.items():
            q = inversion_quality(r, evaluator=evaluator, means=means)
            key = "inversion" if k == "white-box" else "inversion_black_box"
            metrics[f"{key}_eval_accuracy"] = q["eval_accuracy"]
            if k == "white-box":
                metrics["inversion_mean_cosine"] = round(q["mean_cosine"], 6)
            rows.append([k, round(q["eval_accuracy"], 4), round(q["mean_cosine"], 4),
                         round(q["nearest_mean_accuracy"], 4), r.queries])
        images.append(means.cpu())
        labels += [f"{c} (mean)" for c in card.classes]
    summary = (f"{metrics['inversion_eval_accuracy']:.0%} of white-box reconstructions are "
               "recognised as their class by an independent model"
               if "inversion_eval_accuracy" in metrics else "")
    tables = [Table("Model inversion (MI-Face)",
                    ["variant", "evaluation-model accuracy", "cosine to class mean",
                     "nearest class mean", "queries"], rows)] if rows else []
    return ScenarioResult(
        name="inversion", summary=summary, metrics=metrics, tables=tables,
        figures={"reconstructions": {"images": torch.cat(images), "labels": labels,
                                     "bounds": (float(card.bounds[0]), float(card.bounds[1])),
                                     "ncols": min(10, card.num_classes)}},
        details=details, artifacts={"results": found})


__all__ = ["InversionOptions", "evaluator_epochs", "no_data", "run_inversion"]
