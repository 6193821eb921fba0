"""Intervals in the audit: section results carry them (old cached results without them
still load), report.json (schema 3) holds them, gates can use a bound (``KEY:lower=V``),
reports of schema 1 and 2 stay readable, and the terminal and HTML show ``value [lo, hi]``."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from dlsec.audit.config import AuditConfig, ConfigError, Gate
from dlsec.audit.report import print_summary, render_html
from dlsec.audit.report.html import format_interval, main_metrics
from dlsec.audit.result import SectionResult
from dlsec.audit.runner import REPORT_SCHEMA_VERSION, check_report, evaluate_gates, run_audit
from dlsec.cli import main
from dlsec.data import load_dataset
from dlsec.intervals import interval_record, wilson_interval

# -- gates ------------------------------------------------------------------------------------


def test_gate_parse_bound_forms() -> None:
    assert Gate.parse("evasion.robust_accuracy@0.1:lower=0.4") == Gate(
        "evasion.robust_accuracy@0.1", 0.4, "lower")
    assert Gate.parse("a.b:upper=0.5") == Gate("a.b", 0.5, "upper")
    assert Gate.parse("a.b=0.5") == Gate("a.b", 0.5, "value")  # the plain form is unchanged
    assert Gate.parse("a.b:lower=1").label == "a.b:lower"
    for bad in ("a.b:lower", ":lower=1"):
        with pytest.raises(ConfigError, match="expected KEY=VALUE"):
            Gate.parse(bad)


METRICS = {"evasion.robust_accuracy@0.1": 0.5, "accuracy.test_loss": 0.2}
INTERVALS = {"evasion.robust_accuracy@0.1": interval_record(0.38, 0.62, 64, "wilson")}


@pytest.mark.parametrize(("gate", "value", "passed"), [
    ("evasion.robust_accuracy@0.1=0.5", 0.5, True),
    ("evasion.robust_accuracy@0.1:lower=0.35", 0.38, True),
    ("evasion.robust_accuracy@0.1:lower=0.4", 0.38, False),  # the value passes, its bound not
    ("evasion.robust_accuracy@0.1:upper=0.6", 0.62, True),
    ("evasion.robust_accuracy@0.1:upper=0.7", 0.62, False),
])
def test_bound_gates_compare_the_bound(gate: str, value: float, passed: bool) -> None:
    [entry] = evaluate_gates([Gate.parse(gate)], METRICS, INTERVALS)
    assert entry["value"] == value and entry["passed"] is passed
    assert ("bound" in entry) is (":" in gate)


def test_bound_gate_on_a_metric_without_interval_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match=re.escape(
            "accuracy.test_loss:lower: accuracy.test_loss has no interval")):
        evaluate_gates([Gate.parse("accuracy.test_loss:lower=0")], METRICS, INTERVALS)


def _report(version: int, **extra: Any) -> dict[str, Any]:
    return {"schema": "dlsec.report", "schema_version": version, "metrics": METRICS, **extra}


def test_check_report_reads_versions_1_to_3() -> None:
    gates = [Gate.parse("evasion.robust_accuracy@0.1=0.45")]
    for version in (1, 2, 3):
        assert check_report(_report(version), gates)[0]["passed"] is True
    lower = [Gate.parse("evasion.robust_accuracy@0.1:lower=0.4")]
    assert check_report(_report(3, intervals=INTERVALS), lower)[0]["value"] == 0.38
    with pytest.raises(ConfigError, match="has no interval"):
        check_report(_report(1), lower)  # schema 1 has no intervals
    with pytest.raises(ConfigError, match="schema version 4"):
        check_report(_report(REPORT_SCHEMA_VERSION + 1), gates)
    with pytest.raises(ConfigError, match="not a dlsec report"):
        check_report({"metrics": METRICS}, gates)


# -- section results ----------------------------------------------------------------------


def test_section_result_without_intervals_still_loads_and_bad_ones_do_not() -> None:
    old = {"name": "accuracy", "title": "Clean accuracy", "metrics": {"clean_accuracy": 0.9}}
    assert SectionResult.from_dict(old).intervals == {}
    good = old | {"intervals": {"clean_accuracy": interval_record(0.85, 0.94, 360, "wilson")}}
    assert SectionResult.from_dict(good).intervals["clean_accuracy"]["n"] == 360
    for bad in ({"lower": 0.9, "upper": 0.8, "n": 3, "method": "wilson"},
                {"lower": 0.1, "upper": 0.8, "n": 3.5, "method": "wilson"},
                {"lower": 0.1, "upper": 0.8, "n": 3}, [0.1, 0.8]):
        with pytest.raises(ValueError, match="intervals must map"):
            SectionResult.from_dict(old | {"intervals": {"clean_accuracy": bad}})


# -- display ---------------------------------------------------------------------------------


def test_format_interval_and_unresolved() -> None:
    assert format_interval("0.9", interval_record(0.85, 0.94, 360, "wilson")) == "0.9 [0.85, 0.94]"
    rec = interval_record(0.0, 0.04, 400, "bootstrap", unresolved=True)
    assert format_interval("0.01", rec) == "unresolved: 0.01 [0, 0.04]"
    assert format_interval("0.9", None) == "0.9"
    section = {"metrics": {"a": 0.5, "b": 0.25}, "intervals": {"a": interval_record(0.4, 0.6, 9, "wilson")}}
    assert main_metrics(section) == [("a", "0.5 [0.4, 0.6]"), ("b", "0.25")]


LONG = "robust_accuracy_after_at@0.3137"


def _display_report() -> dict[str, Any]:
    section = SectionResult(
        name="evasion", title="Evasion (white-box)",
        summary="linf robust accuracy 41.3% at eps 0.1 (clean 96.8%); 3.0% at eps 0.3",
        metrics={"clean_accuracy": 0.968, "robust_accuracy@0.1": 0.413, LONG: 0.03},
        intervals={"clean_accuracy": interval_record(0.9461, 0.9817, 360, "wilson"),
                   "robust_accuracy@0.1": interval_record(0.3634, 0.4645, 360, "wilson"),
                   LONG: interval_record(0.01693, 0.0532, 360, "wilson")})
    privacy = SectionResult(
        name="privacy", title="Privacy", summary="no measurable leakage",
        metrics={"loss_tpr_at_1_fpr": 0.015},
        intervals={"loss_tpr_at_1_fpr": interval_record(0.0, 0.04, 400, "bootstrap",
                                                        unresolved=True)})
    return {"schema": "dlsec.report", "schema_version": 3, "title": "dlsec audit: simplenet",
            "sections": [section.to_dict(), privacy.to_dict()],
            "gates": [{"key": "evasion.robust_accuracy@0.1", "bound": "lower", "threshold": 0.4,
                       "value": 0.3634, "passed": False}], "passed": False}


def test_terminal_shows_intervals_at_80_columns_without_breaking_names() -> None:
    buf = io.StringIO()
    print_summary(_display_report(), Console(file=buf, width=80, color_system=None))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for name in ("clean_accuracy", "robust_accuracy@0.1", LONG, "loss_tpr_at_1_fpr"):
        assert name in text, name  # whole, on one line
    words = text.split()  # the table wraps lines between words
    for word in ("[0.3634,", "0.4645]", "unresolved:", "[0,", "0.04]"):
        assert word in words, word
    assert words.index("unresolved:") < words.index("0.015")  # flagged before the number
    assert "FAIL: evasion.robust_accuracy@0.1:lower" in text


def test_html_shows_intervals_points_and_bound_gates() -> None:
    html = render_html(_display_report())
    assert "0.413 [0.3634, 0.4645]" in html and "360 (wilson)" in html
    assert "unresolved: 0.015 [0, 0.04]" in html and "400 (bootstrap)" in html
    assert "evasion.robust_accuracy@0.1:lower" in html


# -- end to end ----------------------------------------------------------------------------


def test_audit_report_carries_wilson_intervals_and_bound_gates(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    outcome = run_audit(AuditConfig(out=str(out), epochs=1, sections=["accuracy"],
                                    fail_under=["accuracy.clean_accuracy:lower=0.01"]),
                        progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == REPORT_SCHEMA_VERSION == 3
    rec = report["intervals"]["accuracy.clean_accuracy"]
    n = len(load_dataset("digits", seed=0, test_size=0.2).y_test)  # 359
    acc = report["metrics"]["accuracy.clean_accuracy"]
    hits = round(acc * rec["n"])
    assert rec["n"] == n and rec["method"] == "wilson"
    assert (rec["lower"], rec["upper"]) == pytest.approx(wilson_interval(hits, n), abs=1e-12)
    assert rec["lower"] < acc < rec["upper"]
    assert report["sections"][0]["intervals"]["clean_accuracy"] == rec
    assert report["gates"] == [{"key": "accuracy.clean_accuracy", "bound": "lower",
                                "threshold": 0.01, "value": rec["lower"], "passed": True}]
    assert outcome.exit_code == 0
    # the same run (cached), gated on a lower bound above the value's own lower bound
    threshold = (rec["lower"] + acc) / 2
    code = main(["audit", "--out", str(out), "--epochs", "1", "--sections", "accuracy",
                 "--quiet", "--fail-under", f"accuracy.clean_accuracy:lower={threshold}",
                 "--fail-under", f"accuracy.clean_accuracy={threshold}"])
    err = capsys.readouterr().err
    assert code == 1 and "FAIL: accuracy.clean_accuracy:lower" in err
    assert err.count("FAIL:") == 1  # the plain gate on the value passes
    code = main(["audit", "--out", str(out), "--epochs", "1", "--sections", "accuracy",
                 "--quiet", "--fail-under", "accuracy.test_loss:upper=1"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: fail-under: "
                                                                 "accuracy.test_loss:upper")
    assert "Traceback" not in err


# -- the privacy section's bootstrap ------------------------------------------------------


def _membership(attack: str, shift: float, n: int, seed: int) -> Any:
    from types import SimpleNamespace

    import torch

    from dlsec.attacks.privacy.metrics import membership_metrics

    g = torch.Generator().manual_seed(seed)
    scores = torch.cat([torch.randn(n, generator=g) + shift, torch.randn(n, generator=g)])
    is_member = torch.arange(2 * n) < n
    return SimpleNamespace(attack=attack, scores=scores, is_member=is_member,
                           metrics=membership_metrics(scores, is_member))


def test_membership_intervals_flag_unresolved_tprs_and_follow_the_best_attack() -> None:
    import torch

    from dlsec.audit.sections.privacy import membership_intervals

    results = [_membership("loss", 0.0, 200, 0), _membership("lira-online", 2.0, 1000, 1)]
    got = membership_intervals(results, torch.Generator().manual_seed(0))
    assert set(got) == {"loss_auc", "loss_tpr_at_0_1_fpr", "loss_tpr_at_1_fpr", "lira_online_auc",
                        "lira_online_tpr_at_0_1_fpr", "lira_online_tpr_at_1_fpr", "membership_auc"}
    assert got["loss_auc"]["lower"] < 0.5 < got["loss_auc"]["upper"]  # no leakage
    assert got["lira_online_auc"]["lower"] > 0.85  # strong leakage: AUC ~0.92
    assert got["membership_auc"] == got["lira_online_auc"]  # the best attack's
    assert got["loss_auc"]["n"] == 400 and got["loss_auc"]["method"] == "bootstrap"
    # 200 non-members: 2 expected false positives at 1%, unresolved; 1000: 10 at 1%, resolved
    assert got["loss_tpr_at_1_fpr"].get("unresolved") is True
    assert got["lira_online_tpr_at_1_fpr"].get("unresolved") is None
    assert got["lira_online_tpr_at_0_1_fpr"].get("unresolved") is True
    again = membership_intervals(results, torch.Generator().manual_seed(0))
    assert again == got  # seeded
    for r in results:
        rec = got[f"{r.attack.replace('-', '_')}_tpr_at_1_fpr"]
        assert rec["lower"] <= r.metrics.tpr_at_1_fpr <= rec["upper"]


def test_membership_table_cells_carry_intervals_and_unresolved_marks() -> None:
    from dlsec.audit.sections.privacy import with_intervals

    columns = ["attack", "AUC", "TPR @ 0.1% FPR", "TPR @ 1% FPR", "advantage", "queries"]
    rows = [["lira-online", 0.52, 0.005, 0.02, 0.04, 400], ["other", 0.6, 0.1, 0.2, 0.1, 10]]
    intervals = {
        "lira_online_auc": interval_record(0.46, 0.58, 400, "bootstrap"),
        "lira_online_tpr_at_1_fpr": interval_record(0.0, 0.04, 400, "bootstrap", unresolved=True),
    }
    assert with_intervals(columns, rows, intervals) == [
        ["lira-online", "0.52 [0.46, 0.58]", 0.005, "unresolved: 0.02 [0, 0.04]", 0.04, 400],
        ["other", 0.6, 0.1, 0.2, 0.1, 10],
    ]
