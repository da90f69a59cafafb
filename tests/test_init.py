"""Experimental variables as config keys: weight init per role, biases, task
order, the pooled accuracy, a named optimizer value, and defaults that are
published settings."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from plasticity_lab.agents.init import InitSpec, inits
from plasticity_lab.agents.networks import NetworkSpec, networks
from plasticity_lab.lab.cli import main
from plasticity_lab.lab.config import compose_config
from plasticity_lab.registry import ConfigError

QUIET = ["wandb.enabled=false", "progress=off"]


def build(network: str, init: InitSpec, shape=(784,), hidden=(64, 32), head_bias=True, seed=0):
    torch.manual_seed(seed)
    spec = NetworkSpec(shape, 10, list(hidden), "relu", {}, True, False, [4, 8], init, head_bias)
    return networks.get(network)(spec)


@pytest.mark.parametrize("scheme,std", [
    ("kaiming_normal", lambda fi, fo: math.sqrt(2) / math.sqrt(fi)),  # the activation's (ReLU's) gain
    ("he_normal", lambda fi, fo: math.sqrt(2) / math.sqrt(fi)),  # truncated, rescaled to this variance
    ("lecun_normal", lambda fi, fo: 1 / math.sqrt(fi)),
    ("xavier_uniform", lambda fi, fo: math.sqrt(2 / (fi + fo))),
    ("xavier_normal", lambda fi, fo: math.sqrt(2 / (fi + fo))),
    ("kaiming_uniform", lambda fi, fo: math.sqrt(2) / math.sqrt(fi)),
    ("pytorch", lambda fi, fo: 1 / math.sqrt(3 * fi)),
])
def test_each_scheme_draws_its_variance(scheme, std):
    net = build("mlp", InitSpec(hidden=scheme), hidden=(2000,))
    w = net.layers[0].weight  # 2000 x 784: 1.6M draws, so the sample std is within ~0.2 % (3 s.e. < 1 %)
    assert float(w.std()) == pytest.approx(std(784, 2000), rel=0.01)


def test_orthogonal_rows_and_gain_overrides():
    net = build("mlp", InitSpec(hidden="orthogonal", hidden_gain=2.0), hidden=(64,))
    w = net.layers[0].weight.detach()
    assert torch.allclose(w @ w.T, 4.0 * torch.eye(64), atol=1e-4)  # orthonormal rows (64 < 784) times gain 2
    head = build("mlp", InitSpec(head="kaiming_uniform", head_gain=3.0), hidden=(16,)).layers[1].weight
    assert float(head.abs().max()) <= 3.0 * math.sqrt(3 / 16)


def test_pytorch_init_equals_a_plain_nn_linear_stack():
    """The same seed: the lab's MLP with PyTorch's init holds exactly the weights of nn.Linear layers built in order."""
    net = build("mlp", InitSpec("pytorch", "pytorch", bias="pytorch"), hidden=(16, 8), seed=3)
    torch.manual_seed(3)
    plain = [nn.Linear(784, 16), nn.Linear(16, 8), nn.Linear(8, 10)]
    for ours, theirs in zip(net.layers, plain):
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)


def test_default_init_is_dohare_and_biases_per_role():
    net = build("mlp", InitSpec(), head_bias=False, hidden=(32,))
    assert float(net.layers[0].bias.abs().max()) == 0.0 and net.layers[1].bias is None
    assert float(net.layers[0].weight.abs().max()) <= math.sqrt(2) * math.sqrt(3 / 784)
    conv = build("conv_net", InitSpec(hidden="xavier_uniform", bias="zero"), shape=(3, 32, 32), hidden=(16,))
    assert all(float(l.bias.abs().max()) == 0.0 for l in conv.layers)
    fi, fo = 3 * 25, 4 * 25
    assert float(conv.layers[0].weight.abs().max()) <= math.sqrt(6 / (fi + fo))
    resnet = build("resnet18", InitSpec(hidden="orthogonal", head="xavier_normal"), shape=(3, 32, 32))
    w = resnet.layers[0].weight.detach().flatten(1)  # 64 x 27: more rows than columns, so orthonormal columns
    assert torch.allclose(w.T @ w, 2.0 * torch.eye(w.shape[1]), atol=1e-4)  # ReLU gain sqrt 2, squared


def test_unit_resets_draw_from_the_layer_s_own_scheme():
    from plasticity_lab.agents.interventions.units import reset_units

    net = build("mlp", InitSpec(hidden="xavier_uniform"), hidden=(2000,))
    layer = net.unit_layers()[0]
    units = torch.arange(0, 2000, 2)
    with torch.no_grad():
        net.layers[0].weight.zero_()
        reset_units(layer, units, None)
    fresh = net.layers[0].weight[units]
    assert float(fresh.abs().max()) <= math.sqrt(6 / (784 + 2000))
    assert float(fresh.std()) == pytest.approx(math.sqrt(2 / (784 + 2000)), rel=0.01)  # 0.8M draws


@pytest.mark.parametrize("override,expected", [
    ("agent.init.hidden=ortho", "did you mean 'orthogonal'"),
    ("agent.init.head_gain=0", "positive number"),
    ("agent.init.bias=ones", "pytorch, zero"),
    ("stream.task_order=random", "fixed, shuffled"),
])
def test_bad_init_keys_are_one_line(override, expected, capsys):
    extra = ["experiment=split_mnist"] if override.startswith("stream.") else []
    assert main(["run", *QUIET, *extra, override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_init_reaches_the_checkpoint_and_the_summary_config(tmp_path):
    from plasticity_lab.lab.loop import run

    cfg = compose_config([*QUIET, "agent.hidden=[16]", "stream.num_tasks=1", "stream.examples_per_task=64",
                          "agent.init.hidden=lecun_normal", "agent.head_bias=false"])
    run(cfg, tmp_path / "r")
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["config"]["agent"]["init"]["hidden"] == "lecun_normal"
    state = ckpt["runs"][0]["agent"]
    assert not any(k.endswith("layers.1.bias") for k in state["model"])


def test_split_task_order_shuffles_per_seed():
    from plasticity_lab.streams import stream_builders

    def pairs(seed, order):
        stream = stream_builders.get("split_mnist")(task_order=order).build(seed)
        return [stream.task(k).classes for k in range(5)]

    assert pairs(0, "fixed") == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    shuffled = [pairs(s, "shuffled") for s in range(4)]
    assert all(sorted(p) == pairs(0, "fixed") for p in shuffled)
    assert len({tuple(p) for p in shuffled}) > 1 and shuffled[1] == pairs(1, "shuffled")  # per seed, reproducible


def test_pooled_accuracy_weighs_every_test_example(tmp_path):
    from plasticity_lab.lab.loop import run
    from plasticity_lab.streams import stream_builders

    (s,) = run(compose_config([*QUIET, "experiment=split_mnist", "agent.hidden=[16]", "stream.num_tasks=3",
                               "stream.examples_per_task=64", "train.checkpoint=false"]), tmp_path / "r")
    stream = stream_builders.get("split_mnist")(num_tasks=3).build(0)
    sizes = [len(stream.task(k).y_test) for k in range(3)]
    last = s["acc_matrix"][-1]
    assert s["pooled_accuracy"] == pytest.approx(sum(a * n for a, n in zip(last, sizes)) / sum(sizes))
    assert s["avg_accuracy"] == pytest.approx(np.mean(last))


def test_the_named_adagrad_value_is_keskinen_s_update():
    """torch Adagrad with adagrad_keskinen's arguments = theta -= 2e-4 g / sqrt(0.8 sum g^2 + 1e-6)."""
    cfg = compose_config(["agent/optimizer=adagrad_keskinen"])
    opt = dict(cfg.agent.optimizer)
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    adagrad = torch.optim.Adagrad([p], lr=opt["lr"], initial_accumulator_value=opt["initial_accumulator_value"],
                                  eps=opt["eps"])
    start = p.detach().clone()
    theta, acc = start.clone(), torch.zeros(2, dtype=torch.float64)
    for g in ([0.3, -0.1], [0.05, 0.2], [-0.4, 0.0]):
        grad = torch.tensor(g, dtype=torch.float64)
        p.grad = grad.clone()
        adagrad.step()
        acc += 0.8 * grad ** 2
        theta -= 2e-4 * grad / torch.sqrt(acc + 1e-6)
        # the preset writes 2e-4 / sqrt(0.8) = 2.2360680e-4 to 4 digits (2.236e-4): the moves agree to 3e-5
        assert torch.allclose(p.detach() - start, theta - start, rtol=1e-4, atol=0)
    with pytest.raises(ConfigError):
        compose_config(["agent/optimizer=adagrad_k"])


def test_shrink_perturb_alone_shrinks_and_perturbs():
    from plasticity_lab.agents.interventions import interventions

    sp = interventions.get("shrink_perturb")()
    assert sp.shrink > 0 and sp.noise_std > 0
    net = build("mlp", InitSpec(), hidden=(8,))

    class A:  # the intervention reads the agent's model only
        model = net

    before = net.layers[0].weight.detach().clone()
    torch.manual_seed(0)
    sp.after_step(A(), None)
    torch.manual_seed(0)
    noise = torch.randn_like(before)
    assert torch.allclose(net.layers[0].weight, (1 - sp.shrink) * before + sp.noise_std * noise)
    assert set(inits.names()) >= {"kaiming_uniform", "pytorch", "he_normal", "orthogonal"}


def test_drop_last_trains_only_whole_batches(tmp_path):
    from plasticity_lab.lab.loop import run

    base = [*QUIET, "agent.hidden=[8]", "stream.num_tasks=2", "stream.examples_per_task=100", "train.batch_size=16",
            "train.checkpoint=false"]
    (kept,) = run(compose_config(base), tmp_path / "a")
    (dropped,) = run(compose_config([*base, "train.drop_last=true"]), tmp_path / "b")
    assert kept["examples"] == 200 and dropped["examples"] == 2 * 96  # 6 whole batches of 16 per task
