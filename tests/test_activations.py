"""Every activation: values and gradients against hand computation, gradcheck, no batch mixing, plug-ins."""
import json
import math
import subprocess
import sys

import pytest
import torch

from plasticity_lab.agents import MLP, activations
from conftest import readme_snippet
from plasticity_lab.agents.activations import init_gain, make_activation
from plasticity_lab.registry import ConfigError

X = torch.tensor([[-2.0, -0.5, 0.0, 0.3, 1.0, 2.5]])
sig = lambda v: 1 / (1 + math.exp(-v))
Phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))

# name, params, f(x) written out by hand for one element
ELEMENTWISE = [
    ("relu", {}, lambda v: max(0.0, v)),
    ("leaky_relu", {"negative_slope": 0.1}, lambda v: v if v > 0 else 0.1 * v),
    ("elu", {}, lambda v: v if v > 0 else math.exp(v) - 1),
    ("selu", {}, lambda v: 1.0507009873554805 * (v if v > 0 else 1.6732632423543772 * (math.exp(v) - 1))),
    ("gelu", {}, lambda v: v * Phi(v)),
    ("silu", {}, lambda v: v * sig(v)),
    ("swish", {}, lambda v: v * sig(v)),
    ("tanh", {}, math.tanh),
    ("sigmoid", {}, sig),
    ("softplus", {}, lambda v: math.log1p(math.exp(v))),
    ("relu2", {}, lambda v: max(0.0, v) ** 2),
    ("linear", {}, lambda v: v),
    ("xsilu", {"a": 0.5}, lambda v: v * (2 * sig(v) - 0.5)),
    ("xgelu", {"a": 0.5}, lambda v: v * (2 * Phi(v) - 0.5)),
    ("xatlu", {"a": 0.5}, lambda v: v * (2 * (math.atan(v) / math.pi + 0.5) - 0.5)),
    ("crrelu", {"eps": 0.01}, lambda v: max(0.0, v) + 0.01 * v * math.exp(-v * v / 2)),
    ("elephant", {"d": 4, "a": 0.5, "h": 2.0, "layer_norm": False}, lambda v: 2.0 / (1 + abs(v / 0.5) ** 4)),
]


@pytest.mark.parametrize("name,params,f", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_values_against_hand_computation(name, params, f):
    y = make_activation(name, X.shape[1], **params)(X)
    assert y.detach()[0].tolist() == pytest.approx([f(v) for v in X[0].tolist()], abs=1e-6)


@pytest.mark.parametrize("name,params,f", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_gradients_against_central_differences_of_the_hand_formula(name, params, f):
    x = X.clone().double().requires_grad_(True)
    module = make_activation(name, X.shape[1], **params).double()
    module(x).sum().backward()
    h = 1e-6
    for v, g in zip(X[0].tolist(), x.grad[0].tolist()):
        if name in ("relu", "leaky_relu", "relu2", "crrelu", "elu", "selu") and v == 0.0:
            continue  # kink: PyTorch picks a one-sided derivative
        assert g == pytest.approx((f(v + h) - f(v - h)) / (2 * h), abs=1e-5), v


def test_elephant_derivative_formula_at_a():
    # d/dx h/(1+|x/a|^d) at x = a: -h d a^(d-1) / a^d / (1+1)^2 = -h d / (4 a)
    x = torch.tensor([[0.1]], dtype=torch.float64, requires_grad=True)
    make_activation("elephant", 1, d=4, a=0.1, h=1.0, layer_norm=False).double()(x).sum().backward()
    assert float(x.grad) == pytest.approx(-4 / (4 * 0.1))


def test_concatenating_activations_double_the_width():
    assert make_activation("crelu", 6)(X)[0].tolist() == [0, 0, 0, 0.3, 1, 2.5, 2, 0.5, 0, 0, 0, 0] or torch.allclose(
        make_activation("crelu", 6)(X), torch.tensor([[0, 0, 0, 0.3, 1, 2.5, 2, 0.5, 0, 0, 0, 0]]))
    y = make_activation("fourier", 6)(X)
    assert torch.allclose(y, torch.cat([torch.sin(X), torch.cos(X)], -1))


def test_ash_and_hard_ash_use_per_example_unit_statistics():
    x = X.clone()
    mu, sd = float(x.mean()), float(x.std(unbiased=False))
    ash = make_activation("ash", 6, alpha=2.0, z_k=0.5)(x)
    expect = [v * sig(2.0 * (v - mu - 0.5 * sd)) for v in x[0].tolist()]
    assert ash.detach()[0].tolist() == pytest.approx(expect, abs=1e-6)
    hard = make_activation("hard_ash", 6, alpha=3.0, z_k=1.0)(x)
    expect = [min(max(v, 0.0), 2.0) * sig(3.0 * (v - mu - 1.0 * sd)) for v in x[0].tolist()]
    assert hard[0].tolist() == pytest.approx(expect, abs=1e-6)


@pytest.mark.parametrize("name", ["ash", "hard_ash", "elephant"])
def test_per_example_statistics_do_not_mix_the_batch(name):
    torch.manual_seed(0)
    act = make_activation(name, 8)
    batch = torch.randn(5, 8)
    changed = batch.clone()
    changed[2] = 100 * torch.randn(8)
    a, b = act(batch), act(changed)
    keep = [0, 1, 3, 4]
    assert torch.equal(a[keep], b[keep]) and not torch.equal(a[2], b[2])


@pytest.mark.parametrize("name", activations.names())
def test_gradcheck_in_double_precision(name):
    torch.manual_seed(0)
    module = make_activation(name, 5).double()
    x = (torch.randn(3, 5, dtype=torch.float64) * 1.5 + 0.1).requires_grad_(True)
    # keep clear of kinks where finite differences are undefined
    x.data[x.data.abs() < 0.05] += 0.2
    x.data[(x.data - 2).abs() < 0.05] += 0.2
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5)


def test_elephant_options_as_in_the_authors_code():
    e = make_activation("elephant", 10, a=0.2, h=1.5)
    assert isinstance(e.log_a, torch.nn.Parameter) and e.log_a.shape == (10,)
    assert torch.allclose(e.log_a.exp(), torch.full((10,), 0.2)) and torch.allclose(e.log_h.exp(), torch.full((10,), 1.5))
    assert isinstance(e.norm, torch.nn.LayerNorm)
    fixed = make_activation("elephant", 10, learnable=False, layer_norm=False)
    assert not any(True for _ in fixed.parameters())
    net = MLP(20, [9], 3, activation="elephant", activation_params={"bias_std": 1.0})
    b = net.layers[0].bias.detach()
    assert torch.allclose(b, torch.linspace(-math.sqrt(3), math.sqrt(3), 9))
    assert float(net.layers[-1].bias.detach().abs().sum()) == 0.0
    assert float(net.layers[0].weight.abs().max()) <= (1 / 20) ** 0.5  # PyTorch fan-in bound
    assert init_gain("elephant") == pytest.approx(3 ** -0.5)


def test_width_doubling_nets_build_and_train():
    torch.manual_seed(0)
    for name in ("crelu", "fourier"):
        net = MLP(10, [16, 8], 3, activation=name)
        assert net.layers[1].in_features == 32 and net.layers[2].in_features == 16
        # init uses the doubled fan-in
        assert float(net.layers[1].weight.abs().max()) <= init_gain(name) * (3 / 32) ** 0.5
        x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        first = None
        for _ in range(100):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            first = first if first is not None else float(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert float(loss) < 0.7 * first


def test_bad_activation_parameters_are_named():
    with pytest.raises(ConfigError, match="activation.dd"):
        make_activation("elephant", 4, dd=3)
    with pytest.raises(ConfigError, match="a must be > 0"):
        make_activation("elephant", 4, a=-1.0)
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        make_activation("hard_ash", 4, alpha=0.0)


PLUGIN = readme_snippet("### Add an activation")


def test_readme_activation_trains_on_the_fused_path_from_its_own_file(tmp_path, capsys):
    """The README's plug-in (one file, with its derivative) runs on the fused SGD
    path and agrees with the same run on autograd; it stays out of other runs."""
    (tmp_path / "my_acts.py").write_text(PLUGIN)
    args = ["plugins=[my_acts]", "activation=mine", "activation.p=1.5", "agent.optimizer.lr=0.05", "wandb.enabled=false",
            "progress=off", "stream.num_tasks=2", "stream.examples_per_task=1000"]
    for fast, out in (("true", "fused"), ("false", "autograd")):
        p = subprocess.run([sys.executable, "-m", "plasticity_lab.lab", "run", *args, f"train.fast={fast}",
                            f"out_dir={out}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
    fast, slow = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("fused", "autograd"))
    assert fast["fused_path"] and not slow["fused_path"] and fast["activation"] == "mine"
    assert fast["online_accuracy"][1] > 0.3
    # the registered derivative gives autograd's update: float32 rounding apart, the same losses
    assert fast["online_loss"] == pytest.approx(slow["online_loss"], rel=1e-4)
    assert "p: 1.5" in (tmp_path / "fused" / "config.yaml").read_text()
    from plasticity_lab.lab.cli import main

    capsys.readouterr()
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "relu" in listed and "mine" not in listed  # registered only where it is asked for


def test_user_activation_from_an_installed_entry_point(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "ep_acts.py").write_text(PLUGIN.replace('"mine"', '"mine_ep"'))
    dist = pkg / "ep_acts-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-acts\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[plasticity_lab.plugins]\nacts = ep_acts\n")
    monkeypatch.syspath_prepend(str(pkg))
    from plasticity_lab.lab.config import compose_config

    cfg = compose_config(["activation=mine_ep", "activation.p=1.5"])
    assert cfg.activation.name == "mine_ep" and cfg.activation.p == 1.5
    y = make_activation("mine_ep", 3, p=1.5)(torch.tensor([[4.0, -1.0, 0.0]]))
    assert y.tolist() == [[8.0, 0.0, 0.0]]


def test_a_registration_declares_known_facts_only():
    with pytest.raises(TypeError, match="unknown registration fact.*derivatve.*derivative"):
        activations.register("typo_for_test", derivatve=lambda z, h: z)(lambda x: x)

    class WithParameters(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="derivative= is for function activations"):
        activations.register("module_for_test", derivative=lambda z, h: z)(WithParameters)
    assert "typo_for_test" not in activations and "module_for_test" not in activations
