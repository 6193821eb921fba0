"""Model cards are checked field by field: each mistake is one line naming the file and field."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from dlsec.models import ModelCard, ModelError, Normalized, build_model, load, read_card, save

CLASSES = [str(i) for i in range(10)]


def _saved(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    card = ModelCard("simplenet", input_shape=[1, 8, 8], classes=CLASSES, **kw)
    torch.manual_seed(0)
    save(build_model(card), card, tmp_path)
    return json.loads((tmp_path / "card.json").read_text())


def _write(tmp_path: Path, card: dict[str, Any]) -> Path:
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))  # json writes NaN / Infinity as Python's json reads them
    return path


SHA = "ab" * 32


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("input_shape", [-1, 8, 8], ["at least 1"]),
        ("input_shape", [0, 8], ["at least 1"]),
        ("input_shape", [1, 100_000, 100_000], ["10,000,000,000 values", "67,108,864"]),
        ("input_shape", [1.5, 8], ["list of integers"]),
        ("input_shape", [1.0, 8, 8], ["list of integers"]),
        ("input_shape", ["8"], ["list of integers"]),
        ("input_shape", [True, 8], ["list of integers"]),
        ("input_shape", [], ["list of integers"]),
        ("input_shape", 64, ["list of integers"]),
        ("input_shape", {"c": 1}, ["list of integers"]),
        (
            "normalization",
            {"mean": [0.5, 0.5], "std": [1, 1]},
            ["need 1 value each", "got 2 and 2"],
        ),
        ("normalization", {"mean": [0.5], "std": [1, 1]}, ["got 1 and 2"]),
        ("normalization", {"mean": 0.5, "std": 0.25}, ["lists of finite numbers"]),
        ("normalization", {"mean": ["a"], "std": [1]}, ["lists of finite numbers"]),
        ("normalization", {"mean": [math.nan], "std": [1]}, ["lists of finite numbers"]),
        ("normalization", {"mean": [0.0], "std": [math.inf]}, ["lists of finite numbers"]),
        ("normalization", {"mean": [0.0], "std": [0.0]}, ["std values must be > 0"]),
        ("normalization", {"mean": [0.0]}, ['{"mean": [...], "std": [...]}']),
        ("normalization", [0.5, 0.25], ['{"mean": [...], "std": [...]}']),
        ("training", "x", ["must be an object"]),
        ("training", {"seed": "1"}, ["'seed' must be int"]),
        ("training", {"seed": 1.5}, ["'seed' must be int"]),
        ("training", {"seed": True}, ["'seed' must be int"]),
        ("training", {"seed": -1}, ["'seed' must be between 0 and 4294967295"]),
        ("training", {"seed": 2**64}, ["'seed' must be between 0 and 4294967295"]),
        ("training", {"epochs": "10"}, ["'epochs' must be int"]),
        ("training", {"lr": "fast"}, ["'lr' must be int or float"]),
        ("training", {"lr": math.inf}, ["'lr' must be finite"]),
        ("training", {"patience": "x"}, ["'patience' must be int or null"]),
        ("training", {"restore_best": 1}, ["'restore_best' must be bool"]),
        ("classes", "0123456789", ["list of strings"]),
        ("classes", list(range(10)), ["list of strings"]),
        ("classes", [], ["between 1 and"]),
        ("classes", ["a", "a"], ["twice"]),
        ("bounds", [0], ["[low, high]"]),
        ("bounds", [1, 0], ["low < high"]),
        ("bounds", [0, math.inf], ["finite"]),
        ("bounds", [math.nan, 1], ["finite"]),
        ("bounds", [0, "1"], ["finite"]),
        ("bounds", "01", ["[low, high]"]),
        ("architecture", 5, ["non-empty string"]),
        ("architecture", "", ["non-empty string"]),
        ("architecture", None, ["non-empty string"]),
        ("weights_file", "../model.safetensors", ["file name in the model directory"]),
        ("weights_file", "sub/model.safetensors", ["file name in the model directory"]),
        ("weights_file", "..", ["file name in the model directory"]),
        ("weights_file", "", ["file name in the model directory"]),
        ("weights_file", "C:\\model.safetensors", ["file name in the model directory"]),
        ("weights_file", 5, ["file name in the model directory"]),
        ("weights_sha256", "", ["64 hex digits"]),
        ("weights_sha256", "abc", ["64 hex digits"]),
        ("weights_sha256", "z" * 64, ["64 hex digits"]),
        ("weights_sha256", None, ["64 hex digits"]),
        ("metrics", "x", ["object of numbers"]),
        ("metrics", {"accuracy": "high"}, ["object of numbers"]),
        ("dataset", 5, ["must be a string"]),
        ("dlsec_version", 1.0, ["must be a string"]),
        ("schema_version", 99, ["newer dlsec"]),
        ("schema_version", "1", ["must be an integer"]),
    ],
)
def test_bad_card_fields_are_one_line_naming_the_file_and_field(
    tmp_path: Path, field: str, value: Any, words: list[str]
) -> None:
    card = _saved(tmp_path)
    path = _write(tmp_path, card | {field: value})
    with pytest.raises(ModelError) as exc:
        load(tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{path}: field '{field}'"), msg
    for w in words:
        assert w in msg, msg


def test_a_missing_digest_is_an_error(tmp_path: Path) -> None:
    card = _saved(tmp_path)
    del card["weights_sha256"]
    path = _write(tmp_path, card)
    with pytest.raises(ModelError, match="lacks 'weights_sha256'") as exc:
        load(tmp_path)
    assert str(exc.value).startswith(str(path))


def test_an_upper_case_digest_is_the_same_digest(tmp_path: Path) -> None:
    card = _saved(tmp_path)
    _write(tmp_path, card | {"weights_sha256": card["weights_sha256"].upper()})
    _, loaded = load(tmp_path)
    assert loaded.weights_sha256 == card["weights_sha256"]


def test_a_wrong_digest_is_refused(tmp_path: Path) -> None:
    card = _saved(tmp_path)
    _write(tmp_path, card | {"weights_sha256": SHA})
    with pytest.raises(ModelError, match="sha256 does not match"):
        load(tmp_path)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\xff\xfe{\x00}\x00", ["not UTF-8 text (byte 0)"]),
        (b'{"architecture": "simplenet\xe9"}', ["not UTF-8 text"]),
        (b"\x89PNG\r\n\x1a\n\x00\x00", ["not UTF-8 text"]),
        (b"[" * 100_000, ["nested too deeply"]),
        (b"[1]", ["must be a JSON object"]),
        (b" " * (1 << 20) + b"{}", ["more than a model card may hold"]),
    ],
)
def test_unreadable_card_files_are_one_line(
    tmp_path: Path, content: bytes, words: list[str]
) -> None:
    (tmp_path / "card.json").write_bytes(content)
    with pytest.raises(ModelError) as exc:
        read_card(tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "card.json")), msg
    for w in words:
        assert w in msg, msg


def test_a_card_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "card.json").mkdir()
    with pytest.raises(ModelError, match="no model card"):
        read_card(tmp_path)


def test_private_fields_are_not_saved_and_not_read(tmp_path: Path) -> None:
    card = _saved(tmp_path)
    assert "_allowed_code" not in card and "_source" not in card
    _write(tmp_path, card | {"_allowed_code": "evil:build"})
    with pytest.raises(ModelError, match="unknown model card key"):
        read_card(tmp_path)


def test_per_channel_normalization(tmp_path: Path) -> None:
    card = ModelCard(
        "simplenet",
        input_shape=[3, 2, 2],
        classes=["a", "b"],
        normalization={"mean": [0.0, 1.0, 2.0], "std": [1.0, 2.0, 4.0]},
    )
    model = build_model(card)
    assert isinstance(model, Normalized)
    save(model, card, tmp_path)
    loaded, _ = load(tmp_path)
    x = torch.ones(1, 3, 2, 2)
    expected = torch.tensor([1.0, 0.0, -0.25]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.equal(loaded(x), loaded.net(expected))


@pytest.mark.parametrize(
    ("shape", "mean", "std", "x", "expected"),
    [
        ([2], [1.0, 2.0], [2.0, 4.0], [[3.0, 2.0]], [[1.0, 0.0]]),  # per feature of flat inputs
        ([2], [1.0], [2.0], [[3.0, 2.0]], [[1.0, 0.5]]),  # one value for all
        ([2, 2], [1.0], [2.0], [[[3.0, 1.0], [5.0, 1.0]]], [[[1.0, 0.0], [2.0, 0.0]]]),
    ],
)
def test_normalization_of_flat_and_two_dimensional_inputs(
    shape: list[int], mean: list[float], std: list[float], x: list, expected: list
) -> None:
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(t)
            return t

    Normalized(Spy(), mean, std)(torch.tensor(x))
    assert seen[0].tolist() == expected


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"input_shape": [1, -8, 8]}, ["field 'input_shape'", "at least 1"]),
        ({"weights_sha256": ""}, ["field 'weights_sha256'"]),
        ({"training": {"seed": "0"}}, ["field 'training'", "'seed'"]),
        (b"\x00\xff binary", ["not UTF-8 text"]),
    ],
)
def test_audit_of_a_bad_card_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, change: Any, words: list[str]
) -> None:
    from dlsec.cli import main

    model_dir = tmp_path / "m"
    card = _saved(model_dir)
    if isinstance(change, bytes):
        (model_dir / "card.json").write_bytes(change)
    else:
        _write(model_dir, card | change)
    monkeypatch.chdir(tmp_path)
    assert main(["audit", "--model-dir", "m", "--out", "r", "-q"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "card.json" in lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    assert not (tmp_path / "r" / "report.json").exists()
