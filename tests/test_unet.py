"""UNet backbone and the backbone protocol."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

from conprediff.backbones import Backbone, UNet, check_backbone_output


@pytest.mark.parametrize("mults,attn", [((1,), ()), ((1, 2), (1,)), ((1, 2, 2), (0, 2))])
def test_shapes_and_features(mults, attn):
    net = UNet(in_channels=2, base_channels=8, channel_mults=mults, attention_levels=attn, heads=2)
    x = torch.randn(3, 2, 8, 8)
    pred, feats = net(x, torch.tensor([0, 5, 999]))
    assert pred.shape == x.shape
    assert feats.shape == (3, net.feature_channels, 8, 8)
    assert isinstance(net, Backbone)


def test_features_are_the_input_of_the_output_conv():
    net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2))
    # make the output non-trivial and check prediction == conv_out(features)
    nn.init.normal_(net.conv_out.weight)
    pred, feats = net(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]))
    torch.testing.assert_close(pred, net.conv_out(feats))


def test_time_and_class_conditioning_change_the_output():
    torch.manual_seed(0)
    net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), num_classes=3)
    for p in net.parameters():  # zero-initialised layers would hide the conditioning
        nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 1, 8, 8)
    a = net(x, torch.tensor([1]))[0]
    assert not torch.allclose(a, net(x, torch.tensor([500]))[0])
    assert not torch.allclose(net(x, torch.tensor([1]), torch.tensor([0]))[0], a)
    torch.testing.assert_close(net(x, torch.tensor([1]), torch.tensor([3]))[0], a)


def test_gradients_reach_every_parameter():
    net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), attention_levels=(1,))
    for p in net.parameters():
        nn.init.normal_(p, std=0.1)
    pred, feats = net(torch.randn(2, 1, 8, 8), torch.tensor([3, 4]))
    (pred.sum() + feats.sum()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_get_set_params_and_clone():
    net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2))
    assert net.get_params()["base_channels"] == 8
    net.set_params(base_channels=16)
    assert net.feature_channels == 16 and net.conv_in.out_channels == 16
    c = clone(net)
    assert c is not net and c.get_params() == net.get_params()
    with pytest.raises(ValueError, match="widht"):
        net.set_params(widht=3)


def test_bad_sizes_and_arguments():
    net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 6, 6), torch.tensor([0]))
    with pytest.raises(ValueError, match="base_channels"):
        UNet(in_channels=1, base_channels=0)
    with pytest.raises(RuntimeError, match="template"):
        UNet()(torch.randn(1, 1, 8, 8), torch.tensor([0]))


@pytest.mark.parametrize(("base", "expected"), [(8, {8}), (12, {6, 8}), (10, {5, 6, 8})])
def test_group_norm_takes_a_divisor_of_any_channel_count(base, expected):
    net = UNet(in_channels=1, base_channels=base, channel_mults=(1, 2))
    groups = {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == expected
    assert net(torch.randn(2, 1, 8, 8), torch.tensor([0, 5]))[0].shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="groups must be an integer >= 1"):
        UNet(in_channels=1, groups=0)


def test_numpy_integers_are_accepted():
    net = UNet(np.int64(1), np.int64(8), (1, 2), heads=np.int64(2), groups=np.int32(4))
    assert net(torch.randn(1, 1, 8, 8), torch.tensor([0]))[0].shape == (1, 1, 8, 8)
    assert type(net.base_channels) is int and type(net.heads) is int  # JSON-serialisable


@pytest.mark.parametrize(
    "key", ["in_channels", "base_channels", "num_res_blocks", "heads", "groups", "num_classes"]
)
@pytest.mark.parametrize(
    "value,error", [(np.int64(2), None), (np.int32(2), None), (True, TypeError), (2.0, TypeError)]
)
def test_integer_arguments_take_numpy_integers_not_bools_or_floats(key, value, error):
    kwargs = {"in_channels": 1, "base_channels": 8, "channel_mults": (1, 2), "heads": 2, key: value}
    if error is not None:
        with pytest.raises(error, match=key):
            UNet(**kwargs)
        return
    net = UNet(**kwargs)
    assert getattr(net, key) == 2 and type(getattr(net, key)) is int
    x = torch.randn(1, net.in_channels, 8, 8)
    assert net(x, torch.tensor([0]))[0].shape == x.shape


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"channel_mults": (1, 2.0)}, TypeError, r"channel_mults\[1\]"),
        ({"channel_mults": (1, 0)}, ValueError, r"channel_mults\[1\]"),
        ({"channel_mults": 2}, TypeError, "channel_mults"),
        ({"attention_levels": (-1,)}, ValueError, "attention_levels"),
        ({"dropout": 1.5}, ValueError, "dropout"),
        ({"dropout": "0.1"}, TypeError, "dropout"),
        ({"features": None}, TypeError, "features"),
        ({"base_channels": 0, "in_channels": None}, ValueError, "base_channels"),
    ],
)
def test_bad_arguments_raise_by_the_rule(kwargs, error, match):
    with pytest.raises(error, match=match):
        UNet(**{"in_channels": 1, **kwargs})


def test_check_backbone_output_messages():
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(TypeError, match="pair"):
        check_backbone_output(x, x)
    with pytest.raises(ValueError, match="prediction"):
        check_backbone_output((x[:, :, :2], x), x)
    with pytest.raises(ValueError, match="features"):
        check_backbone_output((x, x[:, :, :2]), x)


def test_mid_features_are_the_bottleneck_repeated_to_the_grid_and_change_nothing_else():
    torch.manual_seed(0)
    out_net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2, 2))
    torch.manual_seed(0)
    mid_net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2, 2), features="mid")
    assert mid_net.feature_channels == 16 and out_net.feature_channels == 8
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 400])
    (pred_a, _), (pred_b, feats) = out_net(x, t), mid_net(x, t)
    assert torch.equal(pred_a, pred_b)  # same parameters (same init), same prediction
    assert feats.shape == (2, 16, 8, 8)
    assert torch.equal(feats[..., ::4, ::4], feats[..., 3::4, 3::4])  # 4x4 blocks repeat one value
    captured = {}
    mid_net.mid2.register_forward_hook(lambda m, i, o: captured.setdefault("mid", o))
    mid_net(x, t)
    assert torch.equal(feats[..., ::4, ::4], captured["mid"])
    with pytest.raises(ValueError, match="features must be one of 'output', 'mid'"):
        UNet(in_channels=1, features="bottleneck")
