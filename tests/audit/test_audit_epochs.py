"""The audit's training epochs: the user's number, or scaled to the training set's size."""

from __future__ import annotations

import pytest

from dlsec.audit.config import AuditConfig, ConfigError, load_config
from dlsec.audit.runner import AUTO_TRAINING_SAMPLES, audit_epochs, run_audit


@pytest.mark.parametrize(
    ("n_train", "expected"),
    [
        (1437, 30),  # the digits split: 45,000 / 1,437 = 31.3, capped at 30
        (1500, 30),  # 45,000 / 1,500 = 30
        (9000, 5),  # 45,000 / 9,000 = 5
        (11_250, 4),  # 45,000 / 11,250 = 4
        (60_000, 1),  # Fashion-MNIST: 0.75 rounds to 1
        (1_000_000, 1),  # never fewer than one epoch
        (1, 30),
    ],
)
def test_unset_epochs_scale_to_the_training_set(n_train: int, expected: int) -> None:
    assert AUTO_TRAINING_SAMPLES == 45_000
    assert audit_epochs(AuditConfig(), n_train) == expected


def test_the_users_epochs_win() -> None:
    assert audit_epochs(AuditConfig(epochs=7), 60_000) == 7
    assert audit_epochs(load_config(None, {"epochs": 2}), 1437) == 2
    with pytest.raises(ConfigError, match="epochs: must be >= 1"):
        AuditConfig(epochs=0)


def test_the_report_states_the_chosen_epochs(tmp_path) -> None:
    outcome = run_audit(AuditConfig(out=str(tmp_path / "run"), sections=["model"]),
                        progress=False)
    training = outcome.report["model"]["training"]
    assert training["epochs"] == 30
    assert "45,000 training samples" in training["epochs_rule"]
    model_rows = dict(outcome.report["sections"][0]["tables"][1]["rows"])
    assert model_rows["epochs"] == "30"
    assert "chosen by the audit" in model_rows["epochs_rule"]
    explicit = run_audit(AuditConfig(out=str(tmp_path / "explicit"), sections=["model"],
                                     epochs=2), progress=False)
    assert explicit.report["model"]["training"]["epochs"] == 2
    assert "epochs_rule" not in explicit.report["model"]["training"]
