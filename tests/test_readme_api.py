"""README's Python API section runs as written, and does what it says it does."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_snippets() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## The Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_shows_both_families_and_a_scenario() -> None:
    code = "\n".join(_api_snippets())
    assert 'make_attack("pgd"' in code and 'make_attack("square"' in code
    assert "ScenarioContext(" in code and "ThreatModel.from_card(" in code


def test_the_python_api_section_runs(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # it saves to runs/x
    namespace: dict = {}
    for snippet in _api_snippets():
        exec(compile(snippet, str(README), "exec"), namespace)
    assert (tmp_path / "runs" / "x" / "card.json").is_file()
    # the white-box sweep, measured: 98% clean, 83% and 62% left at eps 0.05 and 0.1
    res, card = namespace["res"], namespace["card"]
    assert card.metrics["test_accuracy"] > 0.9
    acc = res.robust_accuracy
    clean = float(res.clean_correct.float().mean())
    assert len(acc) == 2 and acc[1] < acc[0] < clean - 0.05 and acc[1] < clean - 0.25
    # the black-box sweep: one result per eps, it fooled points and the oracle counted
    sweep = namespace["sweep"]
    assert sweep.eps == [0.05, 0.1] and len(sweep.results) == 2
    # measured: 15% and 30% of the 100 points fooled at eps 0.05 and 0.1
    assert sweep.success_rate[0] < sweep.success_rate[1] and sweep.success_rate[1] >= 0.2
    assert sweep.queries_total > 0
    # the scenario: a one-line summary printed and the square attack's metrics
    out = namespace["out"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == out.summary and "\n" not in out.summary
    # measured: clean 98%, 60% left after Square at eps 0.1
    assert out.metrics["square_robust_accuracy"] < out.metrics["clean_accuracy"] - 0.2
    assert out.metrics["square_queries"] > 0

