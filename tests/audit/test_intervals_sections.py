"""Intervals on every rate the sections report: the helpers that give each rate its points
(hand-checked), and, on the default audit (slow: about 35 s), every metric whose name says
it is a rate carries its interval in report.json; subsets say they are subsets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from dlsec.audit.sections.dp import sweep_membership_intervals
from dlsec.audit.sections.federated import federated_intervals
from dlsec.audit.sections.poisoning import rate_intervals
from dlsec.intervals import wilson_interval


def _wilson(rec: dict[str, Any], hits: int, n: int) -> None:
    assert rec["n"] == n and rec["method"] == "wilson"
    assert (rec["lower"], rec["upper"]) == pytest.approx(wilson_interval(hits, n), abs=1e-12)


# -- the helpers (fast) ---------------------------------------------------------------------


def test_poisoning_rates_use_their_own_points_and_drops_get_none() -> None:
    metrics = {"random_flip_20_accuracy": 0.9, "random_flip_20_accuracy_drop": 0.05,
               "random_flip_20_cleanlab_recall": 0.75, "random_flip_20_cleanlab_precision": 0.6,
               "backdoor_asr": 0.5, "backdoor_spectral_asr": 0.25,
               "collision_success_rate": 1.0}
    details = {"test_samples": 200, "rate_points": {
        "random_flip_20_cleanlab_recall": 40, "random_flip_20_cleanlab_precision": 50,
        "backdoor_asr": 180, "backdoor_spectral_asr": 180, "collision_success_rate": 2,
        "not_a_metric": 7}}
    got = rate_intervals(metrics, details)
    assert set(got) == set(metrics) - {"random_flip_20_accuracy_drop"}
    _wilson(got["random_flip_20_accuracy"], 180, 200)
    _wilson(got["random_flip_20_cleanlab_recall"], 30, 40)     # of the poisoned points
    _wilson(got["random_flip_20_cleanlab_precision"], 30, 50)  # of the flagged points
    _wilson(got["backdoor_asr"], 90, 180)
    _wilson(got["collision_success_rate"], 2, 2)
    assert got["collision_success_rate"]["lower"] < 0.35  # 2 of 2 says little: [0.342, 1]


def test_federated_rates_use_test_backdoor_and_leakage_points() -> None:
    metrics = {"fedavg_accuracy": 0.8, "fedavg_sign-flip_0.2_accuracy": 0.1,
               "fedavg_backdoor_0.2_backdoor_asr": 1.0, "backdoor_asr@fedavg": 1.0,
               "backdoor_accuracy@fedavg": 0.75, "leakage_recognised@2": 0.5,
               "leakage_originals_recognised@2": 1.0, "leakage_psnr@2": 31.0,
               "leakage_ssim@2": 0.9}
    opt = SimpleNamespace(leakage_trials=4)
    got = federated_intervals(metrics, {"n_test": 100, "n_backdoor": 90}, opt)  # type: ignore[arg-type]
    assert set(got) == set(metrics) - {"leakage_psnr@2", "leakage_ssim@2"}
    _wilson(got["fedavg_accuracy"], 80, 100)
    _wilson(got["fedavg_sign-flip_0.2_accuracy"], 10, 100)
    _wilson(got["backdoor_asr@fedavg"], 90, 90)
    _wilson(got["fedavg_backdoor_0.2_backdoor_asr"], 90, 90)
    _wilson(got["backdoor_accuracy@fedavg"], 75, 100)
    _wilson(got["leakage_recognised@2"], 4, 8)  # batch 2 x 4 trials
    _wilson(got["leakage_originals_recognised@2"], 8, 8)


def _scored(attack: str, shift: float, n: int, seed: int) -> Any:
    from dlsec.attacks.privacy.metrics import membership_metrics

    g = torch.Generator().manual_seed(seed)
    scores = torch.cat([torch.randn(n, generator=g) + shift, torch.randn(n, generator=g)])
    is_member = torch.arange(2 * n) < n
    return SimpleNamespace(attack=attack, scores=scores, is_member=is_member,
                           metrics=membership_metrics(scores, is_member))


def test_dp_membership_intervals_are_keyed_as_the_sweep_metrics() -> None:
    results = [_scored("loss", 0.0, 200, 0), _scored("lira-offline", 2.0, 200, 1)]
    metrics = {"loss_auc@3": results[0].metrics.auc, "loss_tpr_at_1_fpr@3": 0.0,
               "loss_tpr_at_0_1_fpr@3": 0.0, "lira_auc@3": results[1].metrics.auc,
               "lira_tpr_at_1_fpr@3": 0.0, "lira_tpr_at_0_1_fpr@3": 0.0}
    got = sweep_membership_intervals("3", results, metrics, torch.Generator().manual_seed(0))
    assert set(got) == set(metrics)  # membership_auc (the best attack's) is not a sweep key
    assert got["loss_auc@3"]["lower"] < 0.5 < got["loss_auc@3"]["upper"]   # chance
    assert got["lira_auc@3"]["lower"] > 0.85  # shifted by 2 sd: AUC ~0.92
    assert got["lira_auc@3"]["n"] == 400 and got["lira_auc@3"]["method"] == "bootstrap"
    assert got["loss_tpr_at_1_fpr@3"].get("unresolved") is True  # 200 non-members: 2 FPs
    again = sweep_membership_intervals("3", results, metrics, torch.Generator().manual_seed(0))
    assert again == got
    # a label whose metrics the sweep does not hold gets nothing
    assert sweep_membership_intervals("8", results, metrics, torch.Generator()) == {}


def test_poisoning_and_dp_table_cells_carry_their_metrics_intervals() -> None:
    from dlsec.audit.sections.dp import _cell_key as dp_cell
    from dlsec.audit.sections.poisoning import _cell_key as poison_cell
    from dlsec.audit.sections.privacy import interval_cells
    from dlsec.intervals import interval_record, rate_record

    iv = {"random_flip_20_accuracy": rate_record(0.9, 100),
          "random_flip_20_cleanlab_accuracy": rate_record(0.8, 100),
          "random_flip_20_cleanlab_precision": rate_record(0.5, 10),
          "backdoor_asr": rate_record(0.5, 90), "backdoor_spectral_recall": rate_record(1.0, 8)}
    flips = interval_cells(["attack", "rate", "clean model", "poisoned", "+ cleanlab"],
                           [["random-flip", "20%", "95.0%", "90.0%", "80.0%"]], poison_cell, iv)
    lo, hi = wilson_interval(90, 100)
    assert flips == [["random-flip", "20%", "95.0%", f"90.0% [{lo:.1%}, {hi:.1%}]",
                      "80.0% [{:.1%}, {:.1%}]".format(*wilson_interval(80, 100))]]
    detection = interval_cells(
        ["attack", "sanitizer", "flagged", "poisoned", "precision", "recall"],
        [["random-flip 20%", "cleanlab", 10, 20, 0.5, 0.25]], poison_cell, iv)[0]
    assert detection[:4] == ["random-flip 20%", "cleanlab", 10, 20]  # counts untouched
    assert detection[4].startswith("0.5 [") and detection[5] == 0.25  # recall: no record
    backdoor = interval_cells(["sanitizer", "clean accuracy", "attack success rate", "precision",
                               "recall"], [["none", "94.0%", "50.0%", "–", "–"],
                                           ["spectral", "90.0%", "2.0%", 0.1, 1.0]],
                              poison_cell, iv)
    assert backdoor[0][2].startswith("50.0% [") and backdoor[0][4] == "–"
    assert backdoor[1][2] == "2.0%" and backdoor[1][4].startswith("1 [")  # no asr record here
    dp_iv = {"accuracy@3": rate_record(0.9, 100), "lira_auc@undefended":
             interval_record(0.45, 0.55, 400, "bootstrap"),
             "lira_tpr_at_1_fpr@3": interval_record(0.0, 0.05, 400, "bootstrap", unresolved=True)}
    main = interval_cells(["model", "test accuracy", "loss AUC", "LiRA (offline) AUC",
                           "LiRA (offline) TPR @ 1% FPR"],
                          [["DP-SGD ε=3", 0.9, "0.510", "—", "0.020"],
                           ["undefended", 0.98, "0.5", "0.501", "0.01"]],
                          dp_cell("Differential privacy: accuracy"), dp_iv)
    assert main[0][1].startswith("0.9 [") and main[0][4].startswith("unresolved: 0.020 [")
    assert main[1][1] == 0.98 and main[1][3] == "0.501 [0.45, 0.55]"
    per_model = interval_cells(["attack", "AUC", "TPR @ 1% FPR"], [["lira-offline", 0.5, 0.02]],
                               dp_cell("Membership inference, DP-SGD ε = 3"), dp_iv)
    assert per_model == [["lira-offline", 0.5, "unresolved: 0.02 [0, 0.05]"]]


def test_rate_cells_bracket_rates_on_their_points_and_leave_counts() -> None:
    from dlsec.audit.result import Table
    from dlsec.audit.sections.privacy import rate_cells

    table = Table("White-box vs black-box", ["view", "robust accuracy at eps 0.1"],
                  [["white-box PGD", 0.46], ["all black-box attacks", 0.54],
                   ["points fooled by black-box only", 1]])
    got = rate_cells(table, {"robust accuracy at eps 0.1": 50}, rows=slice(0, 2))
    lo, hi = wilson_interval(23, 50)
    assert got.rows[0] == ["white-box PGD", f"0.46 [{lo:.4g}, {hi:.4g}]"]
    assert got.rows[2] == ["points fooled by black-box only", 1]  # a count, not a rate
    assert "Wilson 95% intervals on 50 points" in got.caption
    assert table.rows[0][1] == 0.46  # the scenario's table is not changed in place
    assert rate_cells(table, {"other column": 50}) is table


def test_line_chart_bands_shade_the_interval_and_must_fit_the_series() -> None:
    import base64
    import io

    import numpy as np
    from PIL import Image

    from dlsec.audit.report.plots import line_chart
    from dlsec.audit.sections.evasion_whitebox import bands

    series = {"all attacks": ([0.0, 0.1, 0.3], [0.9, 0.5, 0.1])}
    plain = line_chart(series, title="t", xlabel="eps", ylabel="acc")
    shaded = line_chart(series, title="t", xlabel="eps", ylabel="acc",
                        bands={"all attacks": bands([0.9, 0.5, 0.1], 20)})

    def pixels(fig) -> np.ndarray:
        img = Image.open(io.BytesIO(base64.b64decode(fig.png_base64))).convert("RGB")
        return np.asarray(img).astype(int)

    a, b = pixels(plain), pixels(shaded)
    assert a.shape == b.shape
    changed = (np.abs(a - b).sum(axis=2) > 0).mean()
    assert changed > 0.1  # the band covers a visible share of the plot (measured: 0.30)
    with pytest.raises(ValueError, match="bands 'all attacks'"):
        line_chart(series, title="t", xlabel="eps", ylabel="acc",
                   bands={"all attacks": ([0.1], [0.2])})
    with pytest.raises(ValueError, match="bands 'nope'"):
        line_chart(series, title="t", xlabel="eps", ylabel="acc", bands={"nope": ([], [])})


def test_training_split_sizes_and_the_card_accuracies() -> None:
    from dlsec.audit.sections.model_card import recorded_accuracies
    from dlsec.audit.sections.training_curves import split_sizes

    y = torch.arange(100) % 4  # 25 per class: 10% validation is 2 or 3 per class (round)
    ds = SimpleNamespace(name="toy", y_train=y, y_test=torch.zeros(40, dtype=torch.int64))
    card = SimpleNamespace(dataset="toy", training={"val_fraction": 0.1, "seed": 0},
                           metrics={"train_accuracy": 0.5, "val_accuracy": 0.75,
                                    "test_accuracy": 0.9})
    ctx: Any = SimpleNamespace(dataset=ds, card=card)
    assert split_sizes(ctx) == {"train": 92, "validation": 8}  # round(25 * 0.1) = 2 per class
    rows = recorded_accuracies(ctx)
    assert [r[:3] for r in rows] == [["train", 92, 0.5], ["validation", 8, 0.75],
                                     ["test", 40, 0.9]]
    lo, hi = wilson_interval(6, 8)
    assert rows[1][3] == f"[{lo:.4f}, {hi:.4f}]"
    card.training = {"val_fraction": 0.0, "seed": 0}
    assert split_sizes(ctx) == {"train": 100}
    card.dataset = "other"  # trained on other data: its points are unknown here
    assert split_sizes(ctx) == {} and recorded_accuracies(ctx) == []


# -- the default audit (slow) -------------------------------------------------------------

RATE = re.compile(r"accuracy|success|fidelity|recall|precision|tpr|auc|asr|recognised")
NOT_RATES = {
    # differences of two rates, not rates: each side has its own interval
    re.compile(r"_accuracy_drop$"): "a difference of two accuracies",
    re.compile(r"^training\.generalization_gap$"): "train minus validation accuracy",
}


@pytest.fixture(scope="module")
def default_report(tmp_path_factory) -> dict[str, Any]:
    from dlsec.cli import main

    out = tmp_path_factory.mktemp("default-audit")
    assert main(["audit", "--out", str(out), "--quiet"]) == 0
    return json.loads((Path(out) / "report.json").read_text())


@pytest.mark.slow
def test_every_rate_of_the_default_audit_has_its_interval(default_report) -> None:
    report = default_report
    checked = 0
    for section in report["sections"]:
        for name, value in section["metrics"].items():
            key = f"{section['name']}.{name}"
            if not RATE.search(name) or any(p.search(key) for p in NOT_RATES):
                continue
            rec = report["intervals"].get(key)
            assert rec is not None, f"{key} has no interval"
            assert rec == section["intervals"][name]
            assert rec["n"] >= 1, key
            assert rec["lower"] - 1e-9 <= value <= rec["upper"] + 1e-9, (key, value, rec)
            checked += 1
    # measured: 89 rates across training, accuracy, evasion, blackbox, poisoning, privacy, dp
    assert checked >= 80
    by_section = {s["name"]: s for s in report["sections"]}
    # each section with rates states its points
    for name in ("training", "accuracy", "evasion", "blackbox", "poisoning", "privacy", "dp"):
        assert isinstance(by_section[name]["details"]["points"], int), name
    n_test = report["dataset"]["n_test"]
    assert by_section["accuracy"]["details"]["points"] == n_test
    assert report["intervals"]["accuracy.clean_accuracy"]["n"] == n_test
    # the training split: train + validation = the training set
    train = by_section["training"]["details"]
    assert train["points"] + train["validation_points"] == report["dataset"]["n_train"]
    # subsets say so, with their size
    for name in ("evasion", "blackbox"):
        n = by_section[name]["details"]["points"]
        assert n < n_test
        assert f"clean accuracy on the {n} attacked test points (subset)" in (
            by_section[name]["summary"]), by_section[name]["summary"]
        assert report["intervals"][f"{name}.clean_accuracy"]["n"] == n
    assert f"whole test set ({n_test} points)" in by_section["accuracy"]["summary"]
    card = next(t for t in by_section["model"]["tables"]
                if t["title"] == "Accuracies the card records")
    assert [r[:2] for r in card["rows"]] == [
        ["train", train["points"]], ["validation", train["validation_points"]], ["test", n_test]]
    # the tables show the intervals too
    dp_table = by_section["dp"]["tables"][0]
    assert all(" [" in str(row[1]) for row in dp_table["rows"]), dp_table["rows"]
    detection = next(t for t in by_section["poisoning"]["tables"]
                     if t["title"] == "Detection of poisoned samples")
    assert all(" [" in str(row[5]) for row in detection["rows"])  # every recall
    for name, title, column in (("evasion", "Robust accuracy per attack", 2),
                                ("blackbox", "Query attacks", 4),
                                ("blackbox", "Transfer attacks", 3),
                                ("privacy", "Model extraction", 3),
                                ("privacy", "Model inversion (MI-Face)", 1)):
        table = next(t for t in by_section[name]["tables"] if t["title"] == title)
        assert all(" [" in str(row[column]) for row in table["rows"]), (title, table["rows"])
    # the privacy rates use their own points
    priv = report["intervals"]
    assert priv["privacy.extraction_fidelity"]["n"] == 180  # held-out test inputs on digits
    assert priv["privacy.inversion_eval_accuracy"]["n"] == 10  # one per class
