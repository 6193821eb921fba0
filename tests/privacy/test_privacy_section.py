"""The audit's Privacy section at reduced sizes: metrics, figures, determinism, options."""

from __future__ import annotations

import pytest
import torch

from dlsec.audit.config import AuditConfig, ConfigError, validate_options
from dlsec.audit.context import AuditContext
from dlsec.audit.sections import registry
from dlsec.audit.sections.privacy import PrivacyOptions, run

SMALL = PrivacyOptions(members=60, shadows=2, label_only_noise=2, extraction_budget=64,
                       extraction_strategies=("natural", "active"), extraction_epochs=3,
                       inversion_black_box_iters=5, evaluator_epochs=3)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, digits, trained_simplenet):
    model, card, result = trained_simplenet
    return AuditContext(config=AuditConfig(), dataset=digits, model=model, card=card,
                        device=torch.device("cpu"), run_dir=tmp_path_factory.mktemp("run"),
                        history=result.history, progress=False)


def test_section_reports_every_threat_deterministically(ctx) -> None:
    a = run(ctx, SMALL)
    b = run(ctx, SMALL)
    assert a.to_dict() == b.to_dict()
    for key in ("loss_auc", "shadow_auc", "lira_online_auc", "lira_offline_auc",
                "label_only_auc", "lira_online_tpr_at_0_1_fpr", "membership_auc",
                "inversion_eval_accuracy", "extraction_fidelity", "extraction_fidelity_labels"):
        assert key in a.metrics
    assert a.tables[0].title == "Risk summary"
    assert len(a.tables[0].rows) == 3
    assert [f.title for f in a.figures] == ["Membership inference ROC",
                                            "Model inversion (MI-Face)",
                                            "Extraction fidelity vs queries"]
    assert registry()["privacy"].order == 70


def test_options_from_toml() -> None:
    opt = validate_options("privacy", PrivacyOptions, {"shadows": 16,
                                                       "extraction-strategies": ["random"]})
    assert opt.shadows == 16 and opt.extraction_strategies == ("random",)
    with pytest.raises(ConfigError):
        validate_options("privacy", PrivacyOptions, {"extraction-strategies": ["magic"]})
