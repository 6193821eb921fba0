"""ResNet-18 (CIFAR variant): its shape rules, parameter count, BatchNorm consequences."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dlsec.models import ModelError, build_network
from dlsec.models.nets import BasicBlock, ResNet18


def test_full_width_parameter_count_is_the_published_cifar_resnet18() -> None:
    # the count of Kuang Liu's pytorch-cifar ResNet18 (3x3 stem, no max-pool), 10 classes
    net = build_network("resnet18", input_shape=(3, 32, 32), num_classes=10)
    assert sum(p.numel() for p in net.parameters()) == 11_173_962


def test_narrow_stages_and_feature_map_sides() -> None:
    net = build_network("resnet18-narrow", input_shape=(3, 32, 32), num_classes=7)
    assert isinstance(net, ResNet18)
    sides: list[tuple[int, int, int]] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: sides.append(tuple(out.shape[1:])))
             for layer in (net.layer1, net.layer2, net.layer3, net.layer4)]
    out = net.eval()(torch.zeros(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 7)
    # stride 1 stem, no max-pool: 32 -> 32, 16, 8, 4; channels 64..512 x 1/8
    assert sides == [(8, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4)]
    assert net.linear.in_features == 64
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    # a projection shortcut exactly where the shape changes (stages 2-4, first block)
    assert sum(not isinstance(b.shortcut, nn.Identity) for b in blocks) == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 1 + 8 * 2 + 3


def test_residual_block_adds_its_input() -> None:
    block = BasicBlock(4, 4).eval()
    for conv in (block.conv1, block.conv2):  # zero the residual branch's convolutions
        nn.init.zeros_(conv.weight)
    x = torch.rand(1, 4, 5, 5)
    # conv branch outputs bn2's bias (0): relu(0 + x) = x for x >= 0
    assert torch.equal(block(x), x)


def test_grey_and_small_inputs_build_and_flat_inputs_are_refused() -> None:
    net = build_network("resnet18-narrow", input_shape=(1, 8, 8), num_classes=10)
    assert isinstance(net, ResNet18) and net.conv1.in_channels == 1
    with pytest.raises(ModelError, match="C x H x W"):
        build_network("resnet18", input_shape=(64,), num_classes=10)
    with pytest.raises(ValueError, match="width"):
        ResNet18(3, 10, width=0.0)



@pytest.mark.slow
def test_dp_refuses_batchnorm_and_fix_swaps_all_twenty_for_groupnorm(tmp_path: Path) -> None:
    pytest.importorskip("opacus")
    from dlsec.data.npz import load_npz
    from dlsec.data.synthetic import write_synthetic
    from dlsec.defenses.dp.training import DPError, dp_train
    from dlsec.models import load, save
    from dlsec.training import TrainConfig

    write_synthetic(tmp_path / "s.npz", n=40, shape=(3, 8, 8), seed=0)
    ds = load_npz(tmp_path / "s.npz", seed=0, test_size=0.25)
    cfg = TrainConfig(epochs=1, batch_size=16, device="cpu", val_fraction=0.0)
    with pytest.raises(DPError, match=r"layer4\.1\.bn2 \(BatchNorm2d\).*--dp-fix"):
        dp_train(ds, "resnet18-narrow", cfg, epsilon=8.0, progress=False)
    r = dp_train(ds, "resnet18-narrow", cfg, epsilon=8.0, fix=True, progress=False)
    fixed = r.card.training["dp"]["fixed_layers"]
    # 1 stem + 8 blocks x 2 + 3 projection shortcuts
    assert len(fixed) == 20 and "layer2.0.shortcut.1: BatchNorm2d -> GroupNorm" in fixed
    assert not any(isinstance(m, nn.BatchNorm2d) for m in r.model.modules())
    save(r.model, r.card, tmp_path / "m")
    again, _ = load(tmp_path / "m")  # the card's record makes loading swap the layers too
    x = ds.x_test[:4]
    assert torch.equal(r.model.eval()(x), again.eval()(x))
