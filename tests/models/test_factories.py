"""User factories: called with the arguments they declare, refused before the call when
dlsec cannot supply one, and checked by one forward pass."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from dlsec.models import FACTORY_ARGUMENTS, ModelError, build_network

FACTORIES = """
import torch
import torch.nn as nn

CALLS = []

def build_from_channels(num_classes, in_channels, height, width):
    CALLS.append(("build_from_channels", num_classes, in_channels, height, width))
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * height * width, num_classes))

def build_n_classes(n_classes=10):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(n_classes))

def build_kwargs(**kwargs):
    CALLS.append(("build_kwargs", kwargs))
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(kwargs["num_classes"]))

def build_positional_only(num_classes, /, input_shape=None):
    CALLS.append(("build_positional_only", num_classes, input_shape))
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

def build_needs_depth(num_classes, depth):
    raise AssertionError("must not be called")

def build_raises(num_classes):
    raise ValueError("depth must be even")

def build_not_a_module(num_classes):
    return 42

def build_flat_only(num_classes):
    return nn.Linear(64, num_classes)

def build_tuple_output(num_classes):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, num_classes)
        def forward(self, x):
            return self.fc(x.flatten(1)), x
    return Two()

class Net(nn.Module):
    def __init__(self, in_channels, num_classes, *, hidden=4):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.bn = nn.BatchNorm2d(hidden)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.LazyLinear(num_classes)
    def forward(self, x):
        return self.fc(self.drop(self.bn(self.conv(x))).flatten(1))

class NotAFactory:
    def __init__(self, num_classes):
        pass

NOT_CALLABLE = 3
"""


@pytest.fixture()
def facts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of a fresh module holding the factories above, on sys.path."""
    name = f"dlsec_test_factories_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("os:system", ["'command'", "cannot supply", "num_classes"]),
        ("builtins:eval", ["'source'", "cannot supply"]),
        ("builtins:dict", ["class but not an nn.Module"]),
        ("os.path:join", ["'a'", "cannot supply"]),
        ("time:time", ["cannot read the parameters"]),
        ("os:getpid", ["built-in or non-Python callable"]),
        ("math:pi", ["float, not a callable"]),
        ("math:nothing_here", ["no callable 'nothing_here'"]),
        ("no_such_module_xyz:build", ["cannot import 'no_such_module_xyz'"]),
        (":", ["module:factory"]),
        ("mod:", ["module:factory"]),
        (":attr", ["module:factory"]),
        ("a:b:c", ["module:factory"]),
        ("../evil:build", ["module:factory"]),
        ("resnet9000", ["unknown model 'resnet9000'", "simplenet"]),
        ("torch.nn:Linear", ["requires 'in_features', 'out_features'"]),
        ("torch.nn:Identity", ["outputs shape (1, 1, 8, 8), expected (1, 10)"]),
    ],
)
def test_bad_model_specs_are_one_line(spec: str, words: list[str]) -> None:
    with pytest.raises(ModelError) as exc:
        build_network(spec, input_shape=(1, 8, 8), num_classes=10)
    msg = _one_line(exc)
    assert repr(spec) in msg
    for w in words:
        assert w in msg, msg


def test_factories_get_the_arguments_they_declare(facts: str) -> None:
    import importlib

    mod = importlib.import_module(facts)
    net = build_network(f"{facts}:build_from_channels", input_shape=(3, 5, 7), num_classes=4)
    assert net(torch.zeros(2, 3, 5, 7)).shape == (2, 4)
    build_network(f"{facts}:build_kwargs", input_shape=(6,), num_classes=2)
    build_network(f"{facts}:build_positional_only", input_shape=(2, 3), num_classes=3)
    build_network(f"{facts}:build_from_channels", input_shape=(8, 9), num_classes=2)
    assert mod.CALLS == [
        ("build_from_channels", 4, 3, 5, 7),
        ("build_kwargs", {"input_shape": (6,), "num_classes": 2}),
        ("build_positional_only", 3, (2, 3)),
        ("build_from_channels", 2, 1, 8, 9),  # H x W inputs have one channel
    ]
    # a class is a factory too
    net = build_network(f"{facts}:Net", input_shape=(2, 8, 8), num_classes=3)
    assert net.conv.in_channels == 2 and net.fc.out_features == 3
    assert FACTORY_ARGUMENTS == ("input_shape", "num_classes", "in_channels", "height", "width")


def test_the_check_forward_keeps_training_flags_and_statistics(facts: str) -> None:
    net = build_network(f"{facts}:Net", input_shape=(3, 8, 8), num_classes=5)
    assert all(m.training for m in net.modules())  # a fresh module stays in training mode
    assert int(net.bn.num_batches_tracked) == 0  # the check ran in eval mode
    assert torch.equal(net.bn.running_mean, torch.zeros(4))
    assert net.fc.weight.shape == (5, 4 * 8 * 8)


@pytest.mark.parametrize(
    ("factory", "shape", "classes", "words"),
    [
        ("build_needs_depth", (1, 8, 8), 10, ["requires 'depth'", "cannot supply"]),
        ("build_from_channels", (64,), 10, ["requires 'in_channels', 'height', 'width'"]),
        ("build_raises", (1, 8, 8), 10, ["the factory raised ValueError: depth must be even"]),
        ("build_not_a_module", (1, 8, 8), 10, ["value of type int, not an nn.Module"]),
        ("NotAFactory", (1, 8, 8), 10, ["class but not an nn.Module"]),
        ("NOT_CALLABLE", (1, 8, 8), 10, ["int, not a callable"]),
        ("build_n_classes", (1, 8, 8), 3, ["outputs shape (1, 10), expected (1, 3)"]),
        ("build_flat_only", (3, 8, 8), 10, ["forward pass on one input of shape (3, 8, 8) failed"]),
        ("build_tuple_output", (1, 8, 8), 10, ["value of type tuple, not a tensor of logits"]),
    ],
)
def test_factory_mistakes_are_one_line(
    facts: str, factory: str, shape: tuple[int, ...], classes: int, words: list[str]
) -> None:
    with pytest.raises(ModelError) as exc:
        build_network(f"{facts}:{factory}", input_shape=shape, num_classes=classes)
    msg = _one_line(exc)
    assert f"'{facts}:{factory}'" in msg
    for w in words:
        assert w in msg, msg


def test_a_factory_with_its_own_default_width_is_built_when_it_fits(facts: str) -> None:
    net = build_network(f"{facts}:build_n_classes", input_shape=(1, 8, 8), num_classes=10)
    assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


@pytest.mark.parametrize(
    ("shape", "classes", "words"),
    [
        ((0, 8), 10, ["at least 1"]),
        ((-1, 8, 8), 10, ["at least 1"]),
        ((1, 2**14, 2**14), 10, ["more than the 67,108,864"]),
        ((1.5, 8), 10, ["integers"]),
        ((1, 8, 8), 0, ["num_classes must be a positive integer"]),
    ],
)
def test_bad_shapes_and_class_counts(shape: tuple, classes: int, words: list[str]) -> None:
    with pytest.raises(ModelError) as exc:
        build_network("simplenet", input_shape=shape, num_classes=classes)
    msg = _one_line(exc)
    for w in words:
        assert w in msg, msg


def test_smallcnn_refuses_tiny_images_in_one_line() -> None:
    with pytest.raises(ModelError, match="at least 4 x 4"):
        build_network("smallcnn", input_shape=(1, 2, 8), num_classes=10)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("os:system", ["'command'"]),
        ("builtins:eval", ["'source'"]),
        ("builtins:dict", ["not an nn.Module"]),
        ("os.path:join", ["'a'"]),
        (":", ["module:factory"]),
    ],
)
def test_train_with_a_bad_model_spec_is_one_line(
    spec: str, words: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from dlsec.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", spec, "--out", "m", "--epochs", "1", "-q"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0]
    assert not (tmp_path / "m").exists()


def test_train_with_a_raising_factory_is_one_line(
    facts: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from dlsec.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", f"{facts}:build_raises", "--out", "m", "-q"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == [f"error: model '{facts}:build_raises': the factory raised ValueError: "
                     "depth must be even"]
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("def build(:\n", ["raised SyntaxError"]),
        ("import sys\nsys.exit(3)\n", ["raised SystemExit: 3"]),
        ("raise RuntimeError('no GPU here\\nsecond line')\n", ["raised RuntimeError: no GPU here"]),
        ("import no_such_dependency_xyz\n", ["cannot import", "no_such_dependency_xyz"]),
    ],
)
def test_a_module_failing_on_import_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, words: list[str]
) -> None:
    name = f"dlsec_test_broken_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError) as exc:
        build_network(f"{name}:build", input_shape=(1, 8, 8), num_classes=10)
    msg = _one_line(exc)
    for w in words:
        assert w in msg, msg
