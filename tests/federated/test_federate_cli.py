"""``dlsec federate``: bad input is one line (exit 2) before any simulation starts, and
nothing is written; a small run prints its accuracy per round and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlsec.cli import main


@pytest.mark.parametrize(("args", "words"), [
    (["--strategy", "krum", "--clients", "10", "--malicious", "0.4"],
     "krum tolerates f malicious of n clients only when n > 2f + 2: 4 of 10 is too many "
     "(at most 3 malicious for 10 clients)"),
    (["--strategy", "bulyan", "--clients", "10", "--malicious", "0.2"],
     "bulyan tolerates f malicious of n clients only when n >= 4f + 3: 2 of 10 is too many "
     "(at most 1 malicious"),
    (["--strategy", "fedmedian", "--clients", "4", "--malicious", "0.5"], "f < n/2: 2 of 4"),
    (["--strategy", "fedsgd"], "unknown strategy 'fedsgd' (choose from fedavg, fedprox"),
    (["--attack", "backdoor", "--malicious", "0.1"], "unknown attack 'backdoor' (choose from label-flip"),
    (["--partition", "dirichlet:0"], "Dirichlet alpha must be > 0"),
    (["--partition", "dirichlet:-0.5"], "Dirichlet alpha must be > 0"),
    (["--partition", "pathological"], "unknown partition 'pathological' (use iid"),
    (["--clients", "5000"], "1438 training records cannot be shared by 5000 clients"),
    (["--malicious", "1"], "--malicious must be a fraction in [0, 1)"),
    (["--clients", "1"], "'--clients'"),
    (["--strategy", "clipping", "--clip-norm", "0"], "--clip-norm"),
    (["--strategy", "fltrust", "--root-size", "5000"], "--root-size 5000 exceeds the 1438 training"),
    (["--attack", "scale", "--malicious", "0.1", "--backdoor-target", "10"],
     "--backdoor-target must be a class in [0, 10), got 10"),
    (["--strategy", "krum", "--attack", "alie", "--malicious", "0.4"], "krum tolerates"),
])
def test_bad_federation_is_one_line_and_writes_nothing(tmp_path: Path, capsys, one_line_error,
                                                       args, words) -> None:
    out = tmp_path / "never.json"
    assert main(["federate", "--rounds", "1", "-q", "--json", str(out), *args]) == 2
    one_line_error(capsys.readouterr().err, words)
    assert not out.exists()


@pytest.mark.slow
def test_federate_prints_rounds_and_writes_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "fl.json"
    assert main(["federate", "--clients", "5", "--rounds", "3", "--strategy", "multikrum",
                 "--malicious", "0.2", "--attack", "gaussian", "--partition", "dirichlet:1",
                 "-q", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "multikrum, 5 clients (1 malicious, gaussian), partition dirichlet:1" in text
    assert text.count("test accuracy") == 4
    data = json.loads(out.read_text())
    curve = data["accuracy_per_round"]
    assert len(curve) == 4 and data["metrics"]["final_accuracy"] == curve[-1]
    # MultiKrum drops the noise client: the model learns
    assert curve[-1] >= curve[0] + 0.3, curve


def test_without_flower_federate_says_how_to_install(tmp_path: Path, capsys, one_line_error,
                                                    monkeypatch) -> None:
    # Flower is an optional extra: with flwr unimportable the command names the extra
    import sys

    import dlsec.defenses.federated as federated

    for name in [m for m in sys.modules if m == "flwr" or m.startswith("flwr.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "flwr", None)
    monkeypatch.delitem(sys.modules, "dlsec.defenses.federated.apps", raising=False)
    monkeypatch.delattr(federated, "apps", raising=False)
    out = tmp_path / "never.json"
    assert main(["federate", "--rounds", "1", "-q", "--json", str(out)]) == 2
    one_line_error(capsys.readouterr().err, "pip install 'dlsec[federated]'")
    assert not out.exists()
