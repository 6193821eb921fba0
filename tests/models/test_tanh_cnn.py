"""``tanhcnn``: Papernot et al.'s tempered-sigmoid CNN (shapes and parameter counts worked
out by hand, tanh bounds the logits, small inputs refused, DP-SGD trains it with ghost
clipping)."""

from __future__ import annotations

import pytest
import torch

from dlsec.data.core import Dataset
from dlsec.defenses.dp import dp_train
from dlsec.models import ModelError, build_network
from dlsec.models.nets import TanhCNN
from dlsec.training import TrainConfig


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(("shape", "classes", "flat", "count"), [
    # conv1 16*1*64+16 = 1040, conv2 32*16*16+32 = 8224; 28 -> conv 14 -> pool 13 -> conv 5
    # -> pool 4: fc1 512*32+32 = 16416; fc2 32*10+10 = 330
    ((1, 28, 28), 10, 32 * 4 * 4, 1040 + 8224 + 16416 + 330),
    # 14 -> 7 -> 6 -> 2 -> 1: the smallest input
    ((1, 14, 14), 10, 32, 1040 + 8224 + (32 * 32 + 32) + 330),
    # 3 channels, 32 -> 16 -> 15 -> 6 -> 5; 5 classes
    ((3, 32, 32), 5, 32 * 5 * 5, (16 * 3 * 64 + 16) + 8224 + (800 * 32 + 32) + (32 * 5 + 5)),
    # not square: 28 x 20 -> 4 x 2
    ((1, 28, 20), 10, 32 * 4 * 2, 1040 + 8224 + (256 * 32 + 32) + 330),
])
def test_shape_and_parameter_count(shape, classes, flat, count) -> None:
    net = build_network("tanhcnn", input_shape=list(shape), num_classes=classes)
    assert isinstance(net, TanhCNN)
    assert net.fc1.in_features == flat
    assert _params(net) == count
    assert net(torch.rand(3, *shape)).shape == (3, classes)


def test_the_paper_layers() -> None:
    net = build_network("tanhcnn", input_shape=[1, 28, 28], num_classes=10)
    assert (net.conv1.out_channels, net.conv1.kernel_size, net.conv1.stride) == (16, (8, 8), (2, 2))
    assert (net.conv2.out_channels, net.conv2.kernel_size, net.conv2.stride) == (32, (4, 4), (2, 2))
    assert net.fc1.out_features == 32
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_tanh_bounds_the_logits() -> None:
    """The hidden layer is tanh: |logit_k| <= sum_j |W2[k, j]| + |b2[k]| for any input,
    however large (a ReLU network's logits grow with the input)."""
    torch.manual_seed(0)
    net = build_network("tanhcnn", input_shape=[1, 28, 28], num_classes=10)
    with torch.no_grad():
        bound = net.fc2.weight.abs().sum(1) + net.fc2.bias.abs()
        logits = net(torch.rand(8, 1, 28, 28) * 1e6)
    assert bool((logits.abs() <= bound + 1e-4).all())


@pytest.mark.parametrize("bias", [0.5, 100.0])
def test_hand_set_weights_give_32_tanh(bias) -> None:
    """Convolutions and fc1 weights zero, fc1 bias ``b``, fc2 all ones: every logit is
    32 * tanh(b) (14.79 for 0.5, 32 for 100; ReLU would give 16 and 3200)."""
    import math

    net = build_network("tanhcnn", input_shape=[1, 28, 28], num_classes=3)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.fc1.bias.fill_(bias)
        net.fc2.weight.fill_(1.0)
        logits = net(torch.rand(2, 1, 28, 28))
    assert torch.allclose(logits, torch.full((2, 3), 32 * math.tanh(bias)), atol=1e-4)


@pytest.mark.parametrize("shape", [[1, 8, 8], [1, 13, 28], [28, 28]])
def test_small_or_flat_inputs_are_refused(shape) -> None:
    with pytest.raises(ModelError, match="tanhcnn needs"):
        build_network("tanhcnn", input_shape=shape, num_classes=10)


def _corners(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16 x 16 noise images; class 1 has a bright 4 x 4 top-left corner, class 0 bottom-right."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3
    y = torch.randint(0, 2, (n,), generator=g)
    x[y == 1, :, :4, :4] = 1.0
    x[y == 0, :, -4:, -4:] = 1.0
    return x, y


def test_dp_sgd_trains_it_with_ghost_clipping() -> None:
    x_tr, y_tr = _corners(256, 0)
    x_te, y_te = _corners(128, 1)
    ds = Dataset("corners", x_tr, y_tr, x_te, y_te, classes=("a", "b"))
    cfg = TrainConfig(epochs=3, optimizer="sgd", lr=1.0, batch_size=64, schedule="none",
                      val_fraction=0.0, measure_train_accuracy=False, device="cpu")
    torch.manual_seed(0)
    before = build_network("tanhcnn", input_shape=[1, 16, 16], num_classes=2).state_dict()
    res = dp_train(ds, "tanhcnn", cfg, noise_multiplier=1.0, max_grad_norm=1.0, progress=False)
    dp = res.card.training["dp"]
    assert dp["grad_sample_mode"] == "ghost" and dp["fixed_layers"] == []
    assert dp["noise_multiplier"] == 1.0 and dp["steps"] == 3 * 4
    after = res.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every layer trained
    # chance is 0.5; measured 1.0 with these seeds
    assert res.card.metrics["test_accuracy"] >= 0.9


def test_dlsec_train_refuses_it_on_digits_in_one_line(tmp_path, capsys, one_line_error) -> None:
    from dlsec.cli import main

    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "tanhcnn", "--out", str(out),
                 "--epochs", "1"]) == 2
    one_line_error(capsys.readouterr().err, "tanhcnn needs inputs of at least 14 x 14",
                   "got 8 x 8")
    assert not out.exists()
