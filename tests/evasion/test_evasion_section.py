"""The audit's white-box evasion section, with and without adversarial training."""

from __future__ import annotations

import pytest

from dlsec.audit.config import AuditConfig, ConfigError, load_config
from dlsec.audit.runner import run_audit


def test_evasion_section_before_and_after_adversarial_training(tmp_path) -> None:
    options = {"eps": [0.1, 0.2, 0.3], "samples": 150, "adversarial-training": "pgd",
               "at-eps": 0.2, "at-epochs": 8}
    cfg = AuditConfig(out=str(tmp_path / "r"), sections=["evasion"], epochs=20,
                      section_options={"evasion": options})
    report = run_audit(cfg, progress=False).report
    m = report["metrics"]
    assert m["evasion.clean_accuracy"] > 0.9
    before, after = m["evasion.robust_accuracy@0.2"], m["evasion.robust_accuracy_after_at@0.2"]
    assert before < 0.05  # undefended: PGD at 0.2 fools nearly everything
    assert after >= before + 0.2, (before, after)
    section = report["sections"][0]
    assert len(section["figures"]) == 2  # curves + example grid
    assert "after pgd adversarial training" in section["summary"]


def test_evasion_options_are_validated(tmp_path) -> None:
    p = tmp_path / "a.toml"
    p.write_text('[evasion]\nnorm = "l3"\n')
    with pytest.raises(ConfigError, match="norm"):
        run_audit(load_config(p, {"out": str(tmp_path / "o"), "sections": ["evasion"]}),
                  progress=False)
    p.write_text("[evasion]\nsamples = \"many\"\n")
    with pytest.raises(ConfigError, match=r"\[evasion\] samples: expected int"):
        load_config(p)
