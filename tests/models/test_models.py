from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from dlsec.models import (
    ModelCard,
    ModelError,
    Normalized,
    SimpleNet,
    SmallCNN,
    build_model,
    build_network,
    load,
    read_state_dict,
    register_model,
    save,
)

CLASSES = [str(i) for i in range(10)]


def test_simplenet_is_the_seed_mlp() -> None:
    net = SimpleNet(784, 128, 10)
    layers = [(n, tuple(p.shape)) for n, p in net.named_parameters()]
    assert layers == [
        ("fc1.weight", (128, 784)),
        ("fc1.bias", (128,)),
        ("fc2.weight", (10, 128)),
        ("fc2.bias", (10,)),
    ]
    # forward is fc2(relu(fc1(flatten(x)))), checked on a hand-made case
    with torch.no_grad():
        net = SimpleNet(2, 2, 1)
        net.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        net.fc1.bias.zero_()
        net.fc2.weight.copy_(torch.tensor([[2.0, 3.0]]))
        net.fc2.bias.fill_(0.5)
    out = net(torch.tensor([[1.0, 2.0], [-1.0, -2.0]]))
    assert out.flatten().tolist() == [2.5, 6.5]


def test_smallcnn_shapes() -> None:
    net = SmallCNN(1, 28, 28, 10)
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert len([m for m in net.modules() if isinstance(m, nn.Conv2d)]) == 2
    assert len([m for m in net.modules() if isinstance(m, nn.Linear)]) == 2
    assert build_network("smallcnn", input_shape=(1, 8, 8), num_classes=10)(
        torch.zeros(2, 1, 8, 8)
    ).shape == (2, 10)


def test_registry_errors_name_the_choices() -> None:
    with pytest.raises(ModelError, match="simplenet"):
        build_network("resnet9000", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ModelError, match="cannot import"):
        build_network("no_such_module_xyz:build", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ModelError, match="no callable"):
        build_network("math:nothing_here", input_shape=(1, 8, 8), num_classes=10)


def test_user_factory_from_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mynets.py").write_text(
        "import torch.nn as nn\n"
        "def build(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1] * input_shape[-2], num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    net = build_network("mynets:build", input_shape=(1, 8, 8), num_classes=10)
    assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_register_model_decorator() -> None:
    @register_model("test-tiny-linear")
    def _tiny(*, input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    assert build_network("test-tiny-linear", input_shape=(1, 8, 8), num_classes=3)(
        torch.zeros(1, 1, 8, 8)
    ).shape == (1, 3)


def _card(**kw) -> ModelCard:
    return ModelCard("simplenet", input_shape=[1, 8, 8], classes=CLASSES, **kw)


def test_save_load_roundtrip_and_sha(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(_card())
    card = save(model, _card(dataset="digits"), tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "card.json").is_file()
    assert len(card.weights_sha256) == 64
    loaded, card2 = load(tmp_path)
    assert card2.weights_sha256 == card.weights_sha256 and card2.dataset == "digits"
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))
    assert not loaded.training


def test_normalization_lives_in_the_card(tmp_path: Path) -> None:
    card = _card(normalization={"mean": [0.5], "std": [0.25]})
    model = build_model(card)
    assert isinstance(model, Normalized)
    save(model, card, tmp_path)
    loaded, _ = load(tmp_path)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded(x), model.net((x - 0.5) / 0.25))


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    save(build_model(_card()), _card(), tmp_path)
    blob = bytearray((tmp_path / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256"):
        load(tmp_path)


def test_bad_cards(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model directory not found"):
        load(tmp_path / "absent")
    with pytest.raises(ModelError, match="no model card"):
        load(tmp_path)
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load(tmp_path)
    (tmp_path / "card.json").write_text(json.dumps({"architecture": "simplenet"}))
    with pytest.raises(ModelError, match="lacks 'input_shape'"):
        load(tmp_path)
    bad = _card().to_dict() | {"bogus": 1}
    (tmp_path / "card.json").write_text(json.dumps(bad))
    with pytest.raises(ModelError, match="unknown model card key"):
        load(tmp_path)


class _Evil:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pt"
    with evil.open("wb") as fh:
        pickle.dump({"fc1.weight": _Evil(str(marker))}, fh)
    # sanity: a plain unpickle really would run the code
    probe = tmp_path / "probe.pt"
    with probe.open("wb") as fh:
        pickle.dump(_Evil(str(tmp_path / "probe-ran")), fh)
    with probe.open("rb") as fh:
        pickle.load(fh)
    assert (tmp_path / "probe-ran").exists()

    with pytest.raises(ModelError, match="refused to load"):
        read_state_dict(evil)
    assert not marker.exists()

    # the same file named in a card is refused by load() too
    card = _card()
    card.weights_file = "weights.pt"
    card.weights_sha256 = hashlib.sha256(evil.read_bytes()).hexdigest()
    (tmp_path / "card.json").write_text(card.to_json())
    with pytest.raises(ModelError, match="refused to load"):
        load(tmp_path)
    assert not marker.exists()


def test_pt_state_dict_loads_with_weights_only(tmp_path: Path) -> None:
    model = build_model(_card())
    torch.save(model.state_dict(), tmp_path / "w.pth")
    state = read_state_dict(tmp_path / "w.pth")
    assert set(state) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
