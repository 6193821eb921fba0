"""Section "Federated learning": options' one-line errors, the cell plan with the cells a
strategy cannot tolerate, Wilson intervals by hand, the warnings and tables from a hand-built
federation result, the plots (no Ray); and one small audit through the runner (slow: one
start of Flower's simulation engine) with its gate keys and ``--fail-under``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlsec.audit.config import AuditConfig, ConfigError, load_config
from dlsec.audit.runner import run_audit
from dlsec.audit.sections import registry
from dlsec.audit.sections.federated import render_figures
from dlsec.scenarios.federated import FederationCell
from dlsec.scenarios.federated_audit import (
    FederatedAuditOptions,
    leakage_gallery,
    plan_cells,
    summarize,
    wilson_interval,
)
from dlsec.scenarios.result import ScenarioResult

# --- fast: no simulation --------------------------------------------------------------


def test_section_is_registered_not_default() -> None:
    spec = registry()["federated"]
    assert spec.title == "Federated learning" and not spec.default
    assert spec.options is not None


@pytest.mark.parametrize("table, words", [
    ('strategies = ["nope"]', ["[federated]", "strategies", "nope", "multikrum"]),
    ("strategies = []", ["[federated]", "strategies", "one or more"]),
    ('attacks = ["nope"]', ["[federated]", "attacks", "nope", "sign-flip"]),
    ('attacks = ["scale"]', ["[federated]", "backdoor"]),
    ("fractions = [0, 1.0]", ["[federated]", "fractions", "[0, 1)"]),
    ("fractions = [-0.1]", ["[federated]", "fractions", "[0, 1)"]),
    ("backdoor-fraction = 1.5", ["[federated]", "backdoor-fraction"]),
    ("clients = 1", ["[federated]", "clients", ">= 2"]),
    ('partition = "dirichlet:0"', ["[federated]", "partition"]),
    ("leakage-batch-sizes = [0]", ["[federated]", "leakage-batch-sizes"]),
    ("lr = 0", ["[federated]", "lr"]),
    ("rounds = 0", ["[federated]", "rounds"]),
])
def test_bad_options_are_one_line_config_errors(tmp_path: Path, table: str, words) -> None:
    path = tmp_path / "audit.toml"
    path.write_text(f"[federated]\n{table}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_bad_option_from_the_cli_writes_nothing(tmp_path: Path, capsys, one_line_error) -> None:
    from dlsec.cli import main

    (tmp_path / "audit.toml").write_text('sections = ["federated"]\n[federated]\n'
                                         'attacks = ["nope"]\n')
    out = tmp_path / "run"
    code = main(["audit", "--config", str(tmp_path / "audit.toml"), "--out", str(out), "--quiet"])
    assert code == 2
    one_line_error(capsys.readouterr().err, "[federated] attacks", "nope")
    assert not out.exists()


def test_wilson_interval_by_hand() -> None:
    # 0 of 10: (0, z^2/n / (1 + z^2/n)) = (0, 0.38415 / 1.38415)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    # 5 of 10: 0.5 +- z sqrt(0.025 + 0.0096) / 1.38415 = [0.2366, 0.7634]
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    # 10 of 10: the mirror of 0 of 10
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(1 - 0.27753, abs=1e-4) and hi == pytest.approx(1.0, abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_plan_skips_what_a_strategy_cannot_tolerate() -> None:
    opt = FederatedAuditOptions(clients=5, strategies=("fedmedian", "krum"),
                                attacks=("sign-flip",), fractions=(0.0, 0.1, 0.2, 0.4),
                                backdoor_fraction=0.2)
    cells, skipped = plan_cells(opt)
    # clean FedAvg always runs first, as the reference
    assert [c.key for c in cells] == [
        "fedavg", "fedmedian", "krum",
        "fedavg_sign-flip_0.2", "fedmedian_sign-flip_0.2", "krum_sign-flip_0.2",
        "fedavg_sign-flip_0.4", "fedmedian_sign-flip_0.4",
        "fedavg_scale_0.2", "fedmedian_scale_0.2", "krum_scale_0.2"]
    why = {s.cell.key: s.reason for s in skipped}
    # 0.1 of 5 clients rounds to 0 malicious; Krum needs n > 2f + 2: 2 of 5 is too many
    assert set(why) == {"fedavg_sign-flip_0.1", "fedmedian_sign-flip_0.1",
                        "krum_sign-flip_0.1", "krum_sign-flip_0.4"}
    assert "no malicious client" in why["fedavg_sign-flip_0.1"]
    assert "n > 2f + 2" in why["krum_sign-flip_0.4"] and "2 of 5" in why["krum_sign-flip_0.4"]
    none, _ = plan_cells(FederatedAuditOptions(backdoor=False, fractions=(0.0,)))
    assert [c.key for c in none] == ["fedavg", "fedmedian", "multikrum", "clipping"]


def _fed(cells: list[FederationCell], acc: dict[str, float], asr: dict[str, float],
         rounds: int = 3) -> ScenarioResult:
    """A hand-built ``run_federations`` result: straight-line curves to ``acc``."""
    metrics = {f"{k}_accuracy": v for k, v in acc.items()}
    metrics.update({f"{k}_backdoor_asr": v for k, v in asr.items()})
    curves = {k: [0.1 + (v - 0.1) * r / rounds for r in range(rounds + 1)] for k, v in acc.items()}
    base = {k: [0.0] * (rounds + 1) for k in acc}
    base.update({k: [v] * (rounds + 1) for k, v in asr.items()})
    details = {"clients": 10, "backdoor_target": 0, "partition": "iid", "cells": [
        {"key": c.key, "strategy": c.strategy, "malicious_fraction": c.malicious,
         "attack": c.attack if c.malicious else None,
         "malicious_clients": list(range(round(c.malicious * 10)))} for c in cells]}
    return ScenarioResult(name="federated", metrics=metrics, details=details,
                          figures={"accuracy_per_round": curves, "backdoor_asr_per_round": base})


@pytest.mark.slow
def test_summary_tables_warnings_and_figures_from_a_hand_built_result() -> None:
    cells = [FederationCell("fedavg"), FederationCell("fedmedian"),
             FederationCell("fedavg", 0.3, "alie"), FederationCell("fedmedian", 0.3, "alie"),
             FederationCell("fedavg", 0.3, "sign-flip"), FederationCell("fedmedian", 0.3, "sign-flip"),
             FederationCell("fedavg", 0.1, "scale"), FederationCell("fedmedian", 0.1, "scale")]
    acc = {"fedavg": 0.90, "fedmedian": 0.89, "fedavg_alie_0.3": 0.85,
           "fedmedian_alie_0.3": 0.60, "fedavg_sign-flip_0.3": 0.10,
           "fedmedian_sign-flip_0.3": 0.88, "fedavg_scale_0.1": 0.89, "fedmedian_scale_0.1": 0.87}
    asr = {"fedavg_scale_0.1": 0.99, "fedmedian_scale_0.1": 0.05}
    fed = _fed(cells, acc, asr)
    res = summarize(cells, [], fed, n_test=360, n_backdoor=324)
    res.details = {**fed.details, "n_test": 360, "n_backdoor": 324, "skipped": []}
    # the median loses 30 pp under ALIE (a warning), 2 pp under sign-flip (none); FedAvg's
    # own losses are the attack's effect, not a robust strategy failing
    assert len(res.warnings) == 1
    assert "fedmedian under alie at 0.3" in res.warnings[0] and "30.0 pp" in res.warnings[0]
    table = res.tables[0]
    row = next(r for r in table.rows if r[3] == "fedmedian_alie_0.3")
    # 216 of 360: Wilson [0.549, 0.649]; loss 90 - 60 = 30 pp
    assert row[5] == "[0.549, 0.649]" and row[6] == pytest.approx(30.0)
    assert res.metrics["backdoor_asr@fedavg"] == 0.99
    assert res.metrics["backdoor_accuracy@fedmedian"] == 0.87
    brow = next(r for r in res.tables[1].rows if r[0] == "fedmedian")
    assert brow[2] == 0.05 and brow[7] == pytest.approx(3.0)
    assert len(res.tables) == 2       # no skipped cells: no such table
    figures = render_figures(res, FederatedAuditOptions(), image_input=True)
    assert [f.title for f in figures] == [
        "Accuracy per round, honest federations", "Accuracy per round, alie at 0.3",
        "Accuracy per round, sign-flip at 0.3", "Model-replacement backdoor per strategy"]
    assert all(len(f.png_base64) > 1000 for f in figures)


def test_gallery_puts_originals_above_reconstructions_with_psnr() -> None:
    # the scenario's layout: b=1 (original, reconstruction), b=2 (2 originals, 2 recs)
    x1, r1 = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.1)   # MSE 0.01: 20 dB
    x2 = torch.ones(2, 1, 2, 2)
    r2 = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.9)])  # 100 (capped), 20 dB
    labels = ["3 (b=1, original)", "3 (b=1, reconstructed)", "1 (b=2, original)",
              "2 (b=2, original)", "1 (b=2, reconstructed)", "2 (b=2, reconstructed)"]
    g = leakage_gallery(torch.cat([x1, r1, x2, r2]), labels, [1, 2], data_range=1.0)
    assert g["ncols"] == 3
    assert torch.equal(g["images"][:3], torch.cat([x1, x2]))
    assert torch.equal(g["images"][3:], torch.cat([r1, r2]))
    assert g["labels"] == ["3 (b=1)", "1 (b=2)", "2 (b=2)", "20.0 dB", "100.0 dB", "20.0 dB"]


# --- slow: one small audit, one Flower simulation -------------------------------------

SMALL = {"clients": 5, "rounds": 2, "strategies": ["fedavg", "fedmedian"],
         "attacks": ["sign-flip"], "fractions": [0.0, 0.2, 0.6], "backdoor-fraction": 0.2,
         "leakage-batch-sizes": [1, 2], "leakage-trials": 1, "leakage-iterations": 50}


def _audit(out: Path, **kw):
    cfg = AuditConfig(out=str(out), epochs=3, sections=["federated"],
                      section_options={"federated": SMALL}, **kw)
    return run_audit(cfg, progress=False)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    out = tmp_path_factory.mktemp("federated-audit")
    return _audit(out), out


@pytest.mark.slow
def test_federated_section_through_the_runner(audited) -> None:
    """Measured (seed 0, 5 clients, 2 rounds, ~27 s with Ray's start): clean FedAvg 0.847,
    one sign-flipper of 5: FedAvg 0.100, median 0.755; backdoor success FedAvg 1.000,
    median 0.012; IG at batch 1 (50 steps) PSNR 32 dB, recognised."""
    outcome, out = audited
    m = outcome.report["metrics"]
    keys = {"federated.fedavg_accuracy", "federated.fedmedian_accuracy",
            "federated.fedavg_sign-flip_0.2_accuracy", "federated.fedmedian_sign-flip_0.2_accuracy",
            "federated.fedavg_sign-flip_0.6_accuracy", "federated.backdoor_asr@fedavg",
            "federated.backdoor_asr@fedmedian", "federated.leakage_recognised@1",
            "federated.leakage_psnr@1", "federated.leakage_psnr@2"}
    assert keys <= set(m)
    assert "federated.fedmedian_sign-flip_0.6_accuracy" not in m     # skipped
    assert m["federated.fedavg_accuracy"] > 0.6
    # the sign-flipper wrecks FedAvg (0.100), the median holds far better (0.755)
    assert m["federated.fedmedian_sign-flip_0.2_accuracy"] > (
        m["federated.fedavg_sign-flip_0.2_accuracy"] + 0.3)
    # the boosted backdoor takes FedAvg (1.000); the median drops it (0.012)
    assert m["federated.backdoor_asr@fedavg"] > 0.8
    assert m["federated.backdoor_asr@fedmedian"] < m["federated.backdoor_asr@fedavg"] - 0.5
    # batch 1 is reconstructed far better than noise (about 6 dB on digits)
    assert m["federated.leakage_psnr@1"] > 20
    sec = next(s for s in outcome.report["sections"] if s["name"] == "federated")
    assert sec["title"] == "Federated learning"
    titles = [f["title"] for f in sec["figures"]]
    assert titles == ["Accuracy per round, honest federations",
                      "Accuracy per round, sign-flip at 0.2", "Accuracy per round, sign-flip at 0.6",
                      "Model-replacement backdoor per strategy",
                      "Gradient leakage: client inputs reconstructed"]
    tables = {t["title"]: t for t in sec["tables"]}
    caption = tables["Final test accuracy per federation"]["caption"]
    assert "Settings: 5 clients, 2 rounds" in caption and "rounds = 20" in caption
    assert [r[3] for r in tables["Final test accuracy per federation"]["rows"]] == [
        "fedavg", "fedmedian", "fedavg_sign-flip_0.2", "fedmedian_sign-flip_0.2",
        "fedavg_sign-flip_0.6"]
    assert any("fedmedian under sign-flip at 0.2" in w for w in sec["warnings"])
    leak = next(t for t in sec["tables"] if t["title"].startswith("Gradient leakage"))
    assert [r[0] for r in leak["rows"]] == [1, 2]
    assert sum("95%" in c for c in leak["columns"]) == 1     # every rate with its interval
    html = (out / "report.html").read_text()
    assert "Cells not run" in html and "3 of 5 is too many" in html
    assert "Gradient leakage: client inputs reconstructed" in html


@pytest.mark.slow
def test_fail_under_on_federated_keys(audited) -> None:
    _, out = audited      # cached: no second simulation
    ok = _audit(out, fail_under=["federated.fedmedian_sign-flip_0.2_accuracy=0.5"])
    assert ok.exit_code == 0 and ok.report["gates"][0]["passed"]
    bad = _audit(out, fail_under=["federated.fedavg_sign-flip_0.2_accuracy=0.5",
                                  "federated.fedavg_accuracy=0.5"])
    assert bad.exit_code == 1 and [g["passed"] for g in bad.report["gates"]] == [False, True]
