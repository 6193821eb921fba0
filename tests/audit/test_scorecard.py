"""The scorecard: severity per threat, evidence, the defense that helps most, its rendering."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from dlsec.audit.config import AuditConfig, ConfigError, Gate, load_config
from dlsec.audit.report import render_html
from dlsec.audit.report.terminal import print_summary
from dlsec.audit.runner import run_audit, unresolved_gate_warnings
from dlsec.audit.scorecard import ScorecardThresholds, build_scorecard
from dlsec.scenarios.matrix_columns import COLUMNS, THREATS


def iv(lo: float, hi: float, n: int = 200, **flags: Any) -> dict[str, Any]:
    return {"lower": lo, "upper": hi, "n": n, "method": "wilson", **flags}


def by_threat(report: dict[str, Any], th: ScorecardThresholds | None = None) -> dict[str, Any]:
    return {r["threat"]: r for r in build_scorecard(report, th)}


def whitebox_report(robust: float) -> dict[str, Any]:
    """Three epsilons: the middle one (0.1) is the evidence."""
    metrics = {"evasion.robust_accuracy@0.05": 0.99, "evasion.robust_accuracy@0.1": robust,
               "evasion.robust_accuracy@0.3": 0.0}
    return {"metrics": metrics, "intervals": {"evasion.robust_accuracy@0.1": iv(0.2, 0.4)}}


def matrix_report(cells: dict[str, dict[str, float]], intervals: dict[str, Any] | None = None,
                  metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """A report whose ``defenses`` section holds a matrix ``{defense: {column: value}}``
    (as the lead's section writes it: details, metrics and intervals)."""
    rows = [{"defense": d, "kind": "reference" if d == "none" else "training",
             "cells": dict(c), "notes": {}} for d, c in cells.items()]
    matrix = {"columns": [c.to_dict() for c in COLUMNS], "rows": rows}
    flat = {f"defenses.{k}@{d}": v for d, c in cells.items() for k, v in c.items()}
    return {"sections": [{"name": "defenses", "details": {"matrix": matrix}}],
            "metrics": {**flat, **(metrics or {})}, "intervals": intervals or {}}


# -- severity ------------------------------------------------------------------------------
@pytest.mark.parametrize(("robust", "severity"), [(0.29, "high"), (0.31, "medium"),
                                                  (0.69, "medium"), (0.71, "low")])
def test_whitebox_severity_on_each_side_of_the_thresholds(robust: float, severity: str) -> None:
    row = by_threat(whitebox_report(robust))["whitebox"]
    assert row["severity"] == severity
    assert row["metric"] == "evasion.robust_accuracy@0.1" and row["value"] == robust
    assert "at eps 0.1" in row["evidence"] and "[20.0, 40.0]" in row["evidence"]
    assert "200 points" in row["evidence"]


@pytest.mark.parametrize(("metrics", "threat", "severity"), [
    ({"privacy.extraction_fidelity": 0.91}, "extraction", "high"),
    ({"privacy.extraction_fidelity": 0.89}, "extraction", "medium"),
    ({"privacy.extraction_fidelity": 0.69}, "extraction", "low"),
    ({"poisoning.backdoor_asr": 0.5}, "backdoor", "high"),
    ({"poisoning.backdoor_asr": 0.09}, "backdoor", "low"),
    ({"blackbox.transfer_a_success_rate": 0.1, "blackbox.transfer_b_success_rate": 0.55},
     "transfer", "high"),  # the best transfer attack counts
    ({"poisoning.random_flip_20_accuracy_drop": 0.01,
      "poisoning.optimized_flip_20_accuracy_drop": 0.05}, "poisoning", "medium"),
    ({"blackbox.blackbox_robust_accuracy": 0.2}, "blackbox", "high"),
    ({"privacy.inversion_eval_accuracy": 0.25}, "inversion", "low"),
])
def test_risk_severities(metrics: dict[str, float], threat: str, severity: str) -> None:
    row = by_threat({"metrics": metrics})[threat]
    assert row["severity"] == severity and row["value"] == max(metrics.values())


def test_poisoning_evidence_names_the_worst_attack() -> None:
    row = by_threat({"metrics": {"poisoning.random_flip_20_accuracy_drop": 0.01,
                                 "poisoning.optimized_flip_40_accuracy_drop": 0.426,
                                 "poisoning.optimized_flip_40_cleanlab_accuracy_drop": 0.9,
                                 "poisoning.optimized_flip_40_accuracy": 0.513}})["poisoning"]
    assert row["metric"] == "poisoning.optimized_flip_40_accuracy_drop"
    assert row["evidence"].startswith("accuracy drop 42.6 points (optimized flips of 40%")


def membership(auc: float, auc_iv: dict[str, Any] | None, tpr: float = 0.0,
               unresolved: bool = False) -> dict[str, Any]:
    intervals = {"privacy.lira_online_tpr_at_1_fpr": iv(0.0, 0.2, 400, unresolved=unresolved)}
    if auc_iv:
        intervals["privacy.membership_auc"] = auc_iv
    return by_threat({"metrics": {"privacy.membership_auc": auc,
                                  "privacy.lira_online_tpr_at_1_fpr": tpr},
                      "intervals": intervals})["membership"]


def test_membership_severity() -> None:
    assert membership(0.71, iv(0.65, 0.77))["severity"] == "high"
    assert membership(0.69, iv(0.65, 0.73))["severity"] == "medium"  # interval above 0.5
    low = membership(0.52, iv(0.46, 0.57))
    assert low["severity"] == "low" and "no measurable leakage" in low["evidence"]
    assert membership(0.52, iv(0.505, 0.54))["severity"] == "medium"
    # a TPR of 12% at 1% FPR is high when resolved, not when it rests on a few points
    assert membership(0.52, iv(0.46, 0.57), tpr=0.12)["severity"] == "high"
    unresolved = membership(0.52, iv(0.46, 0.57), tpr=0.12, unresolved=True)
    assert unresolved["severity"] == "low" and "unresolved: 12.0%" in unresolved["evidence"]
    # no interval: the AUC against membership-auc-medium (0.55)
    assert membership(0.56, None)["severity"] == "medium"
    assert membership(0.54, None)["severity"] == "low"


def test_nothing_measured() -> None:
    rows = build_scorecard({})
    assert [r["threat"] for r in rows] == [t.key for t in THREATS] and len(rows) == 8
    assert {r["severity"] for r in rows} == {"not measured"}
    assert all(r["defense"] is None and r["defense_note"] == "no matrix: run with --defenses"
               for r in rows)


# -- the defense that helps most -----------------------------------------------------------
CELLS = {
    "none": {"clean_accuracy": 0.98, "whitebox_robust_accuracy": 0.44, "membership_auc": 0.52,
             "transfer_success": 0.30, "train_seconds": 3.0},
    "pgd-at": {"clean_accuracy": 0.95, "whitebox_robust_accuracy": 0.70, "membership_auc": 0.58,
               "transfer_success": 0.35, "train_seconds": 30.0},
    "trades": {"clean_accuracy": 0.96, "whitebox_robust_accuracy": 0.65, "membership_auc": 0.56,
               "transfer_success": 0.40, "train_seconds": 40.0},
    "dp:3": {"clean_accuracy": 0.89, "whitebox_robust_accuracy": 0.30, "membership_auc": 0.50,
             "transfer_success": 0.31, "train_seconds": 12.0},
}
INTERVALS = {"defenses.membership_auc@none": iv(0.46, 0.57, 400),
             "defenses.membership_auc@dp:3": iv(0.44, 0.56, 400),
             "defenses.whitebox_robust_accuracy@none": iv(0.37, 0.51),
             "defenses.whitebox_robust_accuracy@pgd-at": iv(0.63, 0.76)}


def test_best_defense_is_the_largest_signed_gain() -> None:
    rows = by_threat(matrix_report(CELLS, INTERVALS))
    white = rows["whitebox"]["defense"]
    assert white["name"] == "pgd-at" and white["gain"] == pytest.approx(0.26)
    assert white["within_noise"] is False  # [0.63, 0.76] vs [0.37, 0.51]
    assert white["cost"]["clean_accuracy_change"] == pytest.approx(-0.03)
    assert white["cost"]["train_seconds"] == 30.0
    assert "pgd-at: +26.0 points (44.0% [37.0, 51.0] -> 70.0% [63.0, 76.0])" in white["summary"]
    # lower is better for membership: dp:3 lowers the AUC by 0.02, within the noise
    member = rows["membership"]["defense"]
    assert member["name"] == "dp:3" and member["gain"] == pytest.approx(0.02)
    assert member["within_noise"] is True and "within noise" in member["summary"]
    assert member["cost"]["clean_accuracy_change"] == pytest.approx(-0.09)
    # every defense raises transfer success: none helps
    assert rows["transfer"]["defense"] is None
    assert rows["transfer"]["defense_note"] == "no defense improved it"
    # a column the undefended row lacks; a column only the undefended row has
    assert rows["extraction"]["defense"] is None
    assert rows["extraction"]["defense_note"] == "the undefended row has no extraction fidelity"
    only_none = by_threat(matrix_report({**CELLS, "none": {**CELLS["none"],
                                                          "inversion_accuracy": 0.9}}))
    assert only_none["inversion"]["defense_note"] == (
        "no defense in the matrix measured inversion accuracy")


def test_evidence_falls_back_to_the_matrix_none_row() -> None:
    rows = by_threat(matrix_report(CELLS, INTERVALS))
    white = rows["whitebox"]
    assert white["metric"] == "defenses.whitebox_robust_accuracy@none"
    assert white["value"] == 0.44 and white["severity"] == "medium"
    assert "the matrix's undefended row" in white["evidence"]
    assert rows["inversion"]["severity"] == "not measured"
    # the section's own figure wins over the matrix when the section ran
    both = by_threat(matrix_report(CELLS, INTERVALS, {"evasion.robust_accuracy@0.1": 0.2}))
    assert both["whitebox"]["metric"] == "evasion.robust_accuracy@0.1"
    assert both["whitebox"]["severity"] == "high"


# -- thresholds from audit.toml ------------------------------------------------------------
def test_toml_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "audit.toml"
    path.write_text("seed = 1\n[scorecard]\nwhitebox-high = 0.5\nwhitebox-medium = 0.9\n")
    config = load_config(path)
    th = config.scorecard_thresholds
    assert (th.whitebox_high, th.whitebox_medium, th.blackbox_high) == (0.5, 0.9, 0.3)
    # 0.44 robust accuracy: medium by default, high under these thresholds
    assert by_threat(whitebox_report(0.44))["whitebox"]["severity"] == "medium"
    assert by_threat(whitebox_report(0.44), th)["whitebox"]["severity"] == "high"


@pytest.mark.parametrize(("table", "message"), [
    ("whitebox-hihg = 0.5", r"\[scorecard\] whitebox-hihg: unknown key"),
    ("transfer-high = 'x'", r"\[scorecard\] transfer-high: expected float"),
    ("whitebox-high = 0.8", r"whitebox-high must be <= whitebox-medium"),
    ("extraction-medium = 1.5", r"extraction-medium: must be in \[0, 1\]"),
])
def test_bad_scorecard_table(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "audit.toml"
    path.write_text(f"[scorecard]\n{table}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown section"):  # other tables: sections only
        path.write_text("[scorecards]\nx = 1\n")
        load_config(path)


# -- the gate warning ----------------------------------------------------------------------
def test_bound_gate_on_an_unresolved_interval_warns() -> None:
    intervals = {"privacy.tpr": iv(0.0, 0.05, 400, unresolved=True), "privacy.auc": iv(0.4, 0.6)}
    gates = [Gate.parse("privacy.tpr:upper=0.1"), Gate.parse("privacy.tpr=0.0"),
             Gate.parse("privacy.auc:lower=0.1")]
    warnings = unresolved_gate_warnings(gates, intervals)
    assert len(warnings) == 1 and "privacy.tpr:upper" in warnings[0]
    assert "unresolved" in warnings[0] and "\n" not in warnings[0]


# -- rendering -----------------------------------------------------------------------------
def rendered_report() -> dict[str, Any]:
    report = matrix_report(CELLS, INTERVALS, {
        "privacy.membership_auc": 0.517, "privacy.lira_online_tpr_at_1_fpr": 0.035,
        "poisoning.optimized_flip_40_accuracy_drop": 0.426,
        "blackbox.transfer_graybox_success_rate": 0.36})
    report["intervals"] |= {"privacy.membership_auc": iv(0.465, 0.575, 400),
                            "privacy.lira_online_tpr_at_1_fpr": iv(0.005, 0.065, 400,
                                                                   unresolved=True)}
    report["sections"].insert(0, {"name": "accuracy", "title": "Clean accuracy",
                                  "summary": "98% of the test set", "metrics": {"x": 1.0}})
    report["title"] = "dlsec audit: simplenet on digits"
    report["scorecard"] = build_scorecard(report)
    return report


def test_terminal_scorecard_fits_80_columns_without_splitting_words() -> None:
    report = rendered_report()
    console = Console(width=80, file=io.StringIO(), force_terminal=False)
    print_summary(report, console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert out.index("Scorecard") < out.index("dlsec audit: simplenet on digits")
    texts = [r["evidence"] for r in report["scorecard"]]
    texts += [(r["defense"] or {}).get("summary") or r["defense_note"] for r in report["scorecard"]]
    texts += [r["label"] for r in report["scorecard"]] + ["Severity", "not measured"]
    words = {w for t in texts for w in t.split()}
    assert len(words) > 60
    broken = [w for w in words if not any(w in line for line in lines)]
    assert not broken, f"words split across lines: {broken}"


def test_html_scorecard_comes_before_the_sections() -> None:
    page = render_html(rendered_report())
    start = page.index('id="scorecard"')
    assert start < page.index('id="s1-accuracy"') and start < page.index('id="gates"')
    table = page[start:page.index("</section>", start)]
    assert table.count("<tr>") == 1 + 8  # header + one row per threat
    assert 'class="sev sev-high"' in table and 'class="sev sev-not-measured"' in table
    assert "pgd-at" in table and "within noise" in table
    assert "+26.0 points" in table


# -- the real audit ------------------------------------------------------------------------
@pytest.mark.slow
def test_default_audit_scorecard(tmp_path: Path) -> None:
    gate = "privacy.lira_online_tpr_at_1_fpr:upper=0.0"
    outcome = run_audit(AuditConfig(out=str(tmp_path), epochs=3, fail_under=[gate]),
                        progress=False)
    rows = outcome.report["scorecard"]
    assert [r["threat"] for r in rows] == [t.key for t in THREATS]
    sections = ("evasion.", "blackbox.", "poisoning.", "privacy.")
    assert all(r["metric"].startswith(sections) for r in rows)
    assert all(r["severity"] in ("high", "medium", "low") for r in rows)
    assert all(r["defense_note"] == "no matrix: run with --defenses" for r in rows)
    assert any(gate.partition("=")[0] in w and "unresolved" in w
               for w in outcome.report["warnings"])
    html = outcome.html_path.read_text()
    assert html.index('id="scorecard"') < html.index('id="s1-')
