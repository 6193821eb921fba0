"""``dlsec privacy leakage``: a small run through local steps and Flower's local DP (JSON and
gallery written, DP clearly worse), and every bad input one line on stderr, exit 2,
nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlsec.cli import main

pytest.importorskip("flwr")


def test_leakage_happy_path(model_dir: Path, tmp_path: Path, capsys) -> None:
    out, png = tmp_path / "leak.json", tmp_path / "leak.png"
    assert main(["privacy", "leakage", "--model-dir", str(model_dir), "--batch-sizes", "1",
                 "--local-steps", "1,2", "--local-dp-epsilon", "1", "--iterations", "150",
                 "--trials", "2", "--json", str(out), "--gallery", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Gradient leakage (inverting-gradients, 150 iterations)")
    body = lines[1:]
    assert len(body) == 3
    assert "1 local step, DP none" in body[0] and "2 local steps, DP none" in body[1]
    assert "DP local eps=1" in body[2] and all("recognised" in ln and "[" in ln for ln in body)
    m = json.loads(out.read_text())["metrics"]
    assert {"psnr_b1", "psnr_b1_s2", "psnr_b1_eps1", "recognised_low_b1"} <= set(m)
    # measured (means of 2 images): 45.9 dB without DP, 22.3 dB with 2 local steps (one
    # image of the two far better than the other), 5.3 dB through LocalDpMod at epsilon 1
    assert m["psnr_b1"] > m["psnr_b1_eps1"] + 20 and m["psnr_b1_s2"] > m["psnr_b1_eps1"] + 8
    assert 0 <= m["recognised_low_b1"] <= m["recognised_b1"] <= m["recognised_high_b1"] <= 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("args", "words"), [
    (["--attack", "nope"], "unknown attack 'nope'"),
    (["--batch-sizes", "0"], "--batch-sizes: every value must be >= 1"),
    (["--batch-sizes", "1,x"], "--batch-sizes: '1,x' is not"),
    (["--local-steps", "0"], "--local-steps: every value must be >= 1"),
    (["--iterations", "0"], "'--iterations': 0 is not in the range"),
    (["--trials", "0"], "'--trials': 0 is not in the range"),
    (["--local-dp-epsilon", "0"], "epsilon must be > 0"),
    (["--local-dp-epsilon", "-3"], "epsilon must be > 0"),
    (["--local-dp-epsilon", "abc"], "'abc' is not a number"),
    (["--attack", "dlg", "--local-steps", "2"], "several local steps need inverting-gradients"),
    (["--attack", "idlg", "--batch-sizes", "2"], "idlg reconstructs batches of one"),
    (["--model-dir", "MISSING"], "is not a saved model"),
    (["--model", "nonet"], "unknown architecture 'nonet'"),
    ([], "exactly one of --model-dir and --model"),
    (["--gallery", "out.jpg"], "must end in .png"),
])
def test_bad_leakage_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys, args,
                                                          words) -> None:
    out = tmp_path / "never.json"
    args = [str(tmp_path / a) if a in ("MISSING", "out.jpg") else a for a in args]
    model = [] if ("--model-dir" in args or not args or "--model" in args) else [
        "--model", "simplenet"]
    # click keeps an option's last value: the case's own values come after the defaults
    assert main(["privacy", "leakage", *model, "--iterations", "1", "--trials", "1", *args,
                 "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
    assert list(tmp_path.iterdir()) == []
