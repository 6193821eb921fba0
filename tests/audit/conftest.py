"""Fixtures for the audit tests: a small, complete report dict with real figures."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from dlsec.audit.report import bar_chart, heatmap, image_grid, line_chart, roc_curve
from dlsec.audit.result import SectionResult, Table


def make_sample_report(*, passed: bool = True) -> dict[str, Any]:
    """A report dict shaped like ``report.json``, with five figures across two sections."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 1, 8, 8, generator=g)
    confusion = np.array([[9, 1, 0], [0, 8, 2], [1, 0, 9]])
    accuracy = SectionResult(
        name="accuracy",
        title="Clean accuracy",
        summary="96.0% of the test set is classified correctly.",
        metrics={"clean_accuracy": 0.96, "n_test": 360},
        tables=[Table(title="Per class", columns=["class", "accuracy"],
                      rows=[["0", 0.9], ["1", 0.8], ["2", 0.9]], caption="Recall per class.")],
        figures=[
            heatmap(confusion, ["0", "1", "2"], ["0", "1", "2"], title="Confusion matrix",
                    xlabel="predicted", ylabel="true"),
            image_grid(images, [str(i % 10) for i in range(12)], title="Test samples",
                       caption="The first twelve test images.", ncols=6),
        ],
    )
    evasion = SectionResult(
        name="evasion",
        title="White-box evasion",
        summary="PGD brings accuracy to 12% at eps=0.1.",
        metrics={"robust_accuracy": 0.1234567, "fgsm_accuracy": 0.5},
        figures=[
            line_chart({"pgd": ([0, 0.05, 0.1], [0.96, 0.4, 0.12])}, title="Robust accuracy",
                       xlabel="eps", ylabel="accuracy"),
            bar_chart(["clean", "fgsm", "pgd"], {"model": [0.96, 0.5, 0.12]},
                      title="Accuracy by attack", ylim=(0, 1)),
            roc_curve({"loss": ([0.0, 0.01, 0.1, 1.0], [0.0, 0.05, 0.3, 1.0])}, title="ROC"),
        ],
        warnings=["Gradients are zero for 3% of the inputs."],
        details={"eps": [0.05, 0.1], "steps": 40},
    )
    return {
        "schema": "dlsec.report",
        "schema_version": 1,
        "dlsec_version": "0.1.0",
        "title": "dlsec audit: simplenet on digits",
        "config": {"model": "simplenet", "dataset": "digits", "seed": 0},
        "dataset": {"name": "digits", "n_train": 1437, "n_test": 360, "classes": ["0", "1"]},
        "model": {"architecture": "simplenet", "input_shape": [1, 8, 8]},
        "sections": [accuracy.to_dict(), evasion.to_dict()],
        "metrics": {"accuracy.clean_accuracy": 0.96, "evasion.robust_accuracy": 0.1234567},
        "gates": [{"key": "accuracy.clean_accuracy", "threshold": 0.9, "value": 0.96,
                   "passed": passed}],
        "passed": passed,
    }


@pytest.fixture(scope="session")
def sample_report() -> dict[str, Any]:
    """A passing sample report (built once per session: drawing figures takes a second)."""
    return make_sample_report()
