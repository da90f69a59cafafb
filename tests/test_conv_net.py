"""The paper's conv net: shapes, unit views of channels, resets and CBP utilities on conv layers."""
import pytest
import torch

from plasticity_lab.agents.conv_net import ConvNet as _ConvNet
from plasticity_lab.agents.networks import NetworkSpec
from plasticity_lab.agents.interventions.cbp import WeightMagnitudes
from plasticity_lab.agents.interventions.units import reset_units
from plasticity_lab.agents.optimizers import make_optimizer
from plasticity_lab.registry import ConfigError


def ConvNet(input_shape, hidden, outputs, **kw):
    return _ConvNet(NetworkSpec(input_shape, outputs, hidden, **kw))


def net(**kw):
    torch.manual_seed(0)
    return ConvNet((3, 32, 32), [128, 128], 2, **kw)


def test_paper_shapes_and_default_init():
    n = net()
    assert [tuple(l.weight.shape) for l in n.layers] == [(32, 3, 5, 5), (64, 32, 3, 3), (128, 64, 3, 3), (128, 512),
                                                          (128, 128), (2, 128)]
    assert n.positions == 4 and n.hidden_names == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    logits, feats = n.forward_features(torch.rand(7, 3, 32, 32))
    assert logits.shape == (7, 2)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 14, 14), (64, 6, 6), (128, 2, 2), (128,), (128,)]
    assert n.init_bound(0) == pytest.approx(1 / 75 ** 0.5)  # PyTorch's default bound, sqrt(1/(3*5*5))
    assert float(n.layers[0].weight.detach().abs().max()) <= n.init_bound(0)
    pre = n.forward_preactivations(torch.rand(2, 3, 32, 32))
    assert tuple(pre[0].shape) == (2, 32, 28, 28)  # before pooling


def test_bad_configurations_are_named():
    with pytest.raises(ConfigError, match="agent.network.*image stream"):
        ConvNet((784,), [10], 10)
    with pytest.raises(ConfigError, match="activation.*crelu"):
        ConvNet((3, 32, 32), [10], 2, activation="crelu")
    with pytest.raises(ConfigError, match="agent.channels.*fewer conv layers"):
        ConvNet((3, 32, 32), [10], 2, channels=[4, 4, 4, 4, 4])


def test_reset_conv_channels_and_the_flatten_boundary():
    n = net()
    opt = make_optimizer(n.parameters(), "sgd", 0.1, momentum=0.9)
    n(torch.rand(4, 3, 32, 32)).sum().backward()
    opt.step()
    layers = n.unit_layers()
    conv2, conv3 = layers[1], layers[2]
    assert conv3.fan_out_per_unit == 4 and conv3.consecutive and not conv2.consecutive
    before = [l.weight.clone() for l in n.layers]
    reset_units(conv2, torch.tensor([5]), opt)
    w = n.layers[1].weight
    assert not torch.equal(w[5], before[1][5]) and float(w[5].detach().abs().max()) <= n.init_bound(1)
    assert torch.equal(w[:5], before[1][:5]) and float(n.layers[1].bias[5]) == 0.0
    assert torch.all(n.layers[2].weight[:, 5] == 0) and torch.equal(n.layers[2].weight[:, 4], before[2][:, 4])
    assert torch.all(opt.state[n.layers[2].weight]["momentum_buffer"][:, 5] == 0)
    assert torch.all(opt.state[n.layers[1].weight]["momentum_buffer"][5] == 0)
    reset_units(conv3, torch.tensor([2]), opt)  # channel 2 feeds flattened columns 8..11 of fc1
    fc1 = n.layers[3].weight
    assert torch.all(fc1[:, 8:12] == 0) and torch.equal(fc1[:, 12:], before[3][:, 12:])
    assert torch.equal(fc1[:, :8], before[3][:, :8])


def test_cbp_magnitudes_per_channel():
    """out-magnitude of a conv unit = mean |W_next| over (out channels, kh, kw); across the flatten
    boundary = mean over the rows and the unit's P consecutive columns; in-magnitude = mean over (in, kh, kw)."""
    n = net().requires_grad_(False)  # CBP reads them under no_grad
    layers = n.unit_layers()
    mags = WeightMagnitudes()
    w2, w4 = n.layers[1].weight, n.layers[3].weight
    assert torch.allclose(mags.outgoing(layers[0]), w2.abs().mean(dim=(0, 2, 3)))
    assert torch.allclose(mags.incoming(layers[1]), w2.abs().flatten(1).mean(1))
    expected = w4.abs().view(128, 128, 4).mean(dim=(0, 2))
    assert torch.allclose(mags.outgoing(layers[2]), expected, atol=1e-7)


def test_elephant_has_per_channel_parameters_on_conv_maps():
    n = ConvNet((3, 32, 32), [16], 2, activation="elephant", channels=[8, 8])
    logits = n(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 2)
