"""The ``dlsec poison`` / ``dlsec sanitize`` commands and the audit's Poisoning section."""

from __future__ import annotations

import numpy as np
import pytest

from dlsec.audit.config import AuditConfig
from dlsec.audit.context import AuditContext
from dlsec.audit.sections.poisoning import PoisoningOptions, run
from dlsec.cli import main
from dlsec.data import load_dataset


def test_poison_then_sanitize_round_trip(tmp_path, capsys):
    out = tmp_path / "p.npz"
    assert main(["poison", "label-flip", "--rate", "0.2", "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as a:
        mask, y, y_clean = a["poison_mask"], a["y"], a["y_clean"]
        assert mask.sum() == round(0.2 * y.size)
        assert ((y != y_clean) == mask).all()
    ds = load_dataset(f"npz:{out}")  # the poisoned file loads as a dataset
    assert ds.y_train.numel() == mask.size
    kept = tmp_path / "k.npz"
    assert main(["sanitize", "--dataset", f"npz:{out}", "--method", "knn",
                 "--out", str(kept), "-q"]) == 0
    line = capsys.readouterr().out
    assert "precision 0.8" in line and "recall 1.000" in line  # measured 0.862 / 1.000
    with np.load(kept, allow_pickle=False) as a:
        assert a["y"].size < mask.size


def test_poison_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["poison", "backdoor", "--target", "99", "--out", str(tmp_path / "b.npz")]) == 2
    assert "target must be in 0..9" in capsys.readouterr().err
    assert main(["sanitize", "--dataset", "digits", "--method", "nope",
                 "--out", str(tmp_path / "s.npz")]) == 2
    assert not (tmp_path / "b.npz").exists()


def _ctx(digits, trained_simplenet, tmp_path) -> AuditContext:
    model, card, _ = trained_simplenet
    return AuditContext(config=AuditConfig(seed=0), dataset=digits, model=model, card=card,
                        device=next(model.parameters()).device, run_dir=tmp_path,
                        progress=False)


def test_audit_section_reports_the_flip_damage(digits, trained_simplenet, tmp_path):
    ctx = _ctx(digits, trained_simplenet, tmp_path)
    opts = PoisoningOptions(rates=[0.3], flip_attacks=["optimized-flip"], flip_sanitizers=[],
                            backdoor_rate=0.0, collision_targets=0, epochs=10)
    res = run(ctx, opts)
    assert res.metrics["optimized_flip_30_accuracy_drop"] >= 0.15  # measured ~0.3
    assert res.tables[0].rows[0][:2] == ["optimized-flip", "30%"]


@pytest.mark.slow
def test_audit_section_is_deterministic(digits, trained_simplenet, tmp_path):
    ctx = _ctx(digits, trained_simplenet, tmp_path)
    opts = PoisoningOptions(rates=[0.3], flip_sanitizers=["knn"], collision_targets=1, epochs=5,
                            backdoor_sanitizers=["spectral"])
    first, second = run(ctx, opts), run(ctx, opts)
    assert first.metrics == second.metrics
    m = first.metrics
    assert m["optimized_flip_30_accuracy_drop"] >= m["random_flip_30_accuracy_drop"] + 0.05
    assert m["random_flip_30_knn_recall"] >= 0.9
    assert {"backdoor_asr", "backdoor_spectral_recall", "collision_success_rate"} <= set(m)
    assert len(first.figures) >= 3 and first.tables[-1].title == "Detection of poisoned samples"
