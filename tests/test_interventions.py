"""Interventions checked against their algorithms step by step on tiny nets."""
import copy
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plasticity_lab.agents import MLP, Agent, interventions
from plasticity_lab.agents.interventions.redo import dormant_scores
from plasticity_lab.agents.interventions.units import reset_units
from plasticity_lab.agents.optimizers import make_optimizer
from plasticity_lab.agents.upgd import UPGD
from conftest import readme_snippet


def tiny_agent(opt="sgd", lr=0.1, hidden=(4,), seed=0, **kw):
    torch.manual_seed(seed)
    net = MLP(3, list(hidden), 2, activation="relu")
    return Agent(net, make_optimizer(net.parameters(), opt, lr, **kw))


def batch(seed=1, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("opt,kw,keys", [
    ("sgd", {}, []),
    ("sgd", {"momentum": 0.9}, ["momentum_buffer"]),
    ("adam", {}, ["exp_avg", "exp_avg_sq"]),
])
def test_reset_units_entry_by_entry(opt, kw, keys):
    agent = tiny_agent(opt, hidden=(4, 3), **kw)
    for s in range(3):
        agent.observe(*batch(s))
    layer = agent.model.unit_layers()[0]
    before_model = copy.deepcopy(agent.model)
    before_state = copy.deepcopy(agent.optimizer.state_dict()["state"])
    units = torch.tensor([1, 3])
    reset_units(layer, units, agent.optimizer)
    w_in, b_in, w_out = layer.incoming.weight, layer.incoming.bias, layer.outgoing.weight
    old = before_model.layers
    keep = [0, 2]
    assert torch.equal(w_in[keep], old[0].weight[keep]) and not torch.equal(w_in[units], old[0].weight[units])
    bound = agent.model.init_bound(0)  # the hidden layer's Kaiming-uniform half-width, gain sqrt 2, fan_in 3
    assert float(w_in[units].abs().max()) <= bound == pytest.approx(math.sqrt(2) * math.sqrt(3 / 3))
    assert b_in[units].tolist() == [0.0, 0.0] and torch.equal(b_in[keep], old[0].bias[keep])
    assert float(w_out[:, units].abs().sum()) == 0.0 and torch.equal(w_out[:, keep], old[1].weight[:, keep])
    assert torch.equal(agent.model.layers[2].weight, old[2].weight)  # other layers untouched
    params = list(agent.model.parameters())
    for key in keys:
        s_w_in, s_b_in, s_w_out = (agent.optimizer.state[params[i]][key] for i in (0, 1, 2))
        o_w_in, o_b_in, o_w_out = (before_state[i][key] for i in (0, 1, 2))
        assert float(s_w_in[units].abs().sum()) == 0 and torch.equal(s_w_in[keep], o_w_in[keep])
        assert float(s_b_in[units].abs().sum()) == 0 and torch.equal(s_b_in[keep], o_b_in[keep])
        assert float(s_w_out[:, units].abs().sum()) == 0 and torch.equal(s_w_out[:, keep], o_w_out[:, keep])
        assert torch.equal(agent.optimizer.state[params[3]][key], before_state[3][key])  # next bias untouched
    if opt == "adam":
        assert agent.optimizer.state[params[0]]["step"] == before_state[0]["step"]


class CBPByHand:
    """Continual backprop written out with numpy from Dohare et al. (2024), Methods
    (adaptable contribution, accumulated replacement), for one hidden layer."""

    def __init__(self, H, rr, eta, mt):
        self.rr, self.eta, self.mt = rr, eta, mt
        self.f, self.u, self.age, self.acc = np.zeros(H), np.zeros(H), np.zeros(H), 0.0

    def step(self, h, W1, W2):
        """h: pre-update features; W1, W2: weights after the optimizer step."""
        eta = self.eta
        self.age += 1
        self.f = eta * self.f + (1 - eta) * h.mean(0)
        f_hat = self.f / (1 - eta ** self.age)
        y = np.abs(W2).mean(0) * np.abs(h - f_hat).mean(0) / np.abs(W1).mean(1)
        self.u = eta * self.u + (1 - eta) * y
        u_hat = self.u / (1 - eta ** self.age)
        eligible = np.nonzero(self.age > self.mt)[0]
        chosen = []
        if len(eligible):
            self.acc += self.rr * len(eligible)
            k = math.floor(self.acc)
            self.acc -= k
            chosen = sorted(eligible[np.argsort(u_hat[eligible])[:k]].tolist())
            self.u[chosen] = self.f[chosen] = self.age[chosen] = 0
        return u_hat, self.age.copy(), chosen


def test_continual_backprop_step_by_step_against_the_algorithm():
    rr, eta, mt = 0.3, 0.5, 2
    agent = tiny_agent("sgd", lr=0.05, hidden=(6,))
    cbp = interventions.get("cbp")(replacement_rate=rr, decay_rate=eta, maturity_threshold=mt)
    cbp.on_run_start(agent)
    hand = CBPByHand(6, rr, eta, mt)
    replaced = 0
    np64 = lambda t: t.detach().numpy().astype(np.float64)
    for s in range(10):
        x, y = batch(s)
        h = np.maximum(np64(x) @ np64(agent.model.layers[0].weight).T + np64(agent.model.layers[0].bias), 0)
        info = agent.observe(x, y)
        u_hat, age, chosen = hand.step(h, np64(agent.model.layers[0].weight), np64(agent.model.layers[1].weight))
        w_before = agent.model.layers[0].weight.detach().clone()
        cbp.after_step(agent, info)
        state = cbp.layers[0]
        assert state.age.tolist() == age.tolist()
        assert (sorted(torch.nonzero(state.age == 0).flatten().tolist()) if chosen else []) == chosen
        for j in chosen:  # reset exactly as the helper defines it
            replaced += 1
            assert float(agent.model.layers[1].weight[:, j].abs().sum()) == 0.0
            assert float(agent.model.layers[0].bias[j]) == 0.0
            assert not torch.equal(agent.model.layers[0].weight[j], w_before[j])
            assert float(state.util[j]) == 0.0 and float(state.mean_feature[j]) == 0.0
        kept = [j for j in range(6) if j not in chosen]
        corrected = (state.util / (1 - eta ** state.age.double()).float())[kept]
        assert corrected.tolist() == pytest.approx(u_hat[kept].tolist(), rel=1e-4, abs=1e-7)
    assert replaced >= 4


def test_cbp_fractional_accumulation_and_maturity():
    agent = tiny_agent(hidden=(10,))
    cbp = interventions.get("cbp")(replacement_rate=0.05, maturity_threshold=3)
    cbp.on_run_start(agent)
    counts = []
    for s in range(13):
        info = agent.observe(*batch(s))
        rec = cbp.after_step(agent, info) or {}
        counts.append(rec.get("cbp/replaced/h1", 0))
    # nothing before age > 3 (steps 1-3); then 0.05 * (mature units) accumulates: 10 mature units -> 0.5 per step
    assert counts[:3] == [0, 0, 0] and sum(counts[3:5]) == 1 and sum(counts) >= 3


def test_shrink_and_perturb_per_step_and_at_task_start():
    agent, twin = tiny_agent(), tiny_agent()
    sp = interventions.get("shrink_perturb")(shrink=0.1, noise_std=0.0)
    x, y = batch()
    info = agent.observe(x, y)
    twin.observe(x, y)
    sp.after_step(agent, info)
    assert torch.allclose(agent.model.layers[0].weight, 0.9 * twin.model.layers[0].weight)
    torch.manual_seed(5)
    big = Agent(MLP(400, [300], 10), make_optimizer(MLP(400, [300], 10).parameters(), "sgd", 0.1))
    w = big.model.layers[0].weight.detach().clone()
    interventions.get("shrink_perturb")(shrink=0.0, noise_std=0.01).after_step(big, None)
    assert float((big.model.layers[0].weight - w).std()) == pytest.approx(0.01, rel=0.02)
    from plasticity_lab.streams import Task
    t = lambda k: Task(k, x, y, x, y, (0, 1))
    at_task = interventions.get("shrink_perturb")(shrink=0.5, noise_std=0.0, at="task")
    w = agent.model.layers[1].weight.detach().clone()
    at_task.on_task_start(agent, t(0))
    assert torch.equal(agent.model.layers[1].weight, w)  # not before the first task
    at_task.on_task_start(agent, t(1))
    assert torch.allclose(agent.model.layers[1].weight, 0.5 * w)
    assert at_task.moments() == {"on_task_start"} and interventions.get("shrink_perturb")().moments() == {"after_step"}


def test_l2_and_l2_init_gradients():
    agent, twin = tiny_agent(lr=0.1), tiny_agent(lr=0.1)
    l2 = interventions.get("l2")(weight=0.3)
    agent.penalties = [l2.penalty]
    x, y = batch()
    theta = [p.detach().clone() for p in twin.model.parameters()]
    twin.observe(x, y)  # plain SGD: theta - lr g
    agent.observe(x, y)
    for p, p_sgd, p0 in zip(agent.model.parameters(), twin.model.parameters(), theta):
        assert torch.allclose(p, p_sgd - 0.1 * 0.3 * p0, atol=1e-6)  # extra gradient weight * theta

    agent, twin = tiny_agent(lr=0.1), tiny_agent(lr=0.1)
    l2i = interventions.get("l2_init")(weight=0.2)
    l2i.on_run_start(agent)
    agent.penalties = [l2i.penalty]
    for s in range(2):
        xb, yb = batch(s)
        before = [p.detach().clone() for p in agent.model.parameters()]
        twin.load_state_dict(copy.deepcopy(agent.state_dict()))
        twin.observe(xb, yb)
        agent.observe(xb, yb)
        for p, p_sgd, pb, p0 in zip(agent.model.parameters(), twin.model.parameters(), before, l2i.initial):
            assert torch.allclose(p, p_sgd - 0.1 * 2 * 0.2 * (pb - p0), atol=1e-6)


def test_dormant_score_by_hand_and_redo_resets_dormant_units():
    h = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 0.0]])
    # unit means |h|: [0, 2, 1]; layer mean 1 -> scores [0, 2, 1]
    assert dormant_scores(h).tolist() == pytest.approx([0.0, 2.0, 1.0])
    agent = tiny_agent(hidden=(5,))
    with torch.no_grad():  # kill unit 2: always negative pre-activation
        agent.model.layers[0].weight[2] = -10.0 * torch.ones(3)
        agent.model.layers[0].bias[2] = -100.0
    from plasticity_lab.streams import Task
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(3))
    redo = interventions.get("redo")(tau=0.0, period=2, probe_size=32)
    redo.on_task_start(agent, Task(0, x, torch.zeros(64, dtype=torch.long), x, x, (0, 1)))
    assert redo.after_step(agent, agent.observe(*batch(0))) is None
    out_before = agent.model.layers[1].weight.detach().clone()
    rec = redo.after_step(agent, agent.observe(*batch(1)))
    assert rec == {"redo/reset/h1": 1}
    assert float(agent.model.layers[0].bias[2]) == 0.0 and float(agent.model.layers[0].weight[2].max()) > -10
    assert float(agent.model.layers[1].weight[:, 2].abs().sum()) == 0.0
    live = [0, 1, 3, 4]  # the live units' outgoing weights moved only by the SGD step (not reset to 0)
    assert torch.count_nonzero(agent.model.layers[1].weight[:, live]) == torch.count_nonzero(out_before[:, live])


def test_resets_head_all_and_zero():
    from plasticity_lab.streams import Task
    x, y = batch()
    agent = tiny_agent("adam", hidden=(4, 4))
    agent.observe(x, y)
    head = interventions.get("reset")(layers="head", mode="zero")
    w0 = agent.model.layers[0].weight.detach().clone()
    head.on_task_start(agent, Task(1, x, y, x, y, (0, 1)))
    assert float(agent.model.layers[-1].weight.abs().sum()) == 0 and torch.equal(agent.model.layers[0].weight, w0)
    assert agent.model.layers[-1].weight not in agent.optimizer.state
    last2 = interventions.get("reset")(layers="2", every="3")
    w_mid = agent.model.layers[1].weight.detach().clone()
    for s in range(3):
        rec = last2.after_step(agent, agent.observe(x, y))
    assert rec == {"reset/layers": 2} and not torch.equal(agent.model.layers[1].weight, w_mid)
    assert float(agent.model.layers[1].weight.abs().max()) <= agent.model.init_bound(1)
    with pytest.raises(ValueError, match="layers"):
        interventions.get("reset")(layers="tail")


def test_spectral_power_iteration_and_penalty_gradient():
    agent = tiny_agent(hidden=(6,))
    spec = interventions.get("spectral")(weight=0.5, iterations=50)
    spec.on_run_start(agent)
    sig = spec.sigmas(agent.model)
    for s, layer in zip(sig, agent.model.layers):
        assert float(s) == pytest.approx(float(torch.linalg.matrix_norm(layer.weight.detach(), 2)), rel=1e-4)
    W = agent.model.layers[0].weight
    agent.model.zero_grad()
    spec.penalty(agent.model).backward()
    u = spec.vectors[0]
    v = F.normalize(W.detach().t() @ u, dim=0)
    s0 = float(torch.linalg.matrix_norm(W.detach(), 2))
    assert torch.allclose(W.grad, 2 * 0.5 * (s0 - 1) * torch.outer(u, v), atol=1e-4)


def test_upgd_step_by_hand():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = UPGD([w], lr=0.1, weight_decay=0.01, beta_utility=0.9, sigma=0.0)
    w.grad = torch.tensor([0.5, 0.5, -1.0])
    opt.step()
    u = -np.array([0.5, 0.5, -1.0]) * np.array([1.0, -2.0, 0.5])  # [-0.5, 1.0, 0.5]
    U = 0.1 * u
    eta = U.max()
    gate = 1 - 1 / (1 + np.exp(-(U / 0.1) / eta))
    expected = (1 - 0.1 * 0.01) * np.array([1.0, -2.0, 0.5]) - 0.1 * np.array([0.5, 0.5, -1.0]) * gate
    assert w.detach().tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert make_optimizer([torch.nn.Parameter(torch.zeros(1))], "upgd", 1e-3).__class__ is UPGD


def test_layer_norm_before_activation_is_a_network_option():
    net = MLP(3, [4], 2, layer_norm=True)
    assert isinstance(net.norms[0], torch.nn.LayerNorm)
    _, feats = net.forward_features(torch.randn(5, 3) * 100)
    assert float(feats[0].max()) < 3  # normalised pre-activations


def test_combined_interventions_from_config(tiny_run):
    s = tiny_run("interventions=[cbp,l2,shrink_perturb]", "interventions.cbp.replacement_rate=0.01",
                 "interventions.cbp.maturity_threshold=5", "interventions.l2.weight=1e-3")
    assert s["interventions"] == ["cbp", "l2", "shrink_perturb"] and s["tasks_trained"] == 3
    from plasticity_lab.registry import ConfigError
    with pytest.raises(ConfigError, match="util_type"):
        tiny_run("interventions=[cbp]", "interventions.cbp.util_type=best", out="bad")


RESET_PLUGIN = readme_snippet("### Add an intervention")


def lab_run(cwd, *args):
    return subprocess.run([sys.executable, "-m", "plasticity_lab.lab", "run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_readme_intervention_resets_units_by_abs_sums_on_the_fused_path(tmp_path, compose):
    """The README's plug-in (one file) resets a unit every 50 steps; on the fused
    path at batch 1 it reads the |W| sums the update pass computed, on autograd
    it computes them from the weights: both runs reset the same units."""
    from plasticity_lab.lab.loop import run

    (tmp_path / "my_resets.py").write_text(RESET_PLUGIN)
    common = ["wandb.enabled=false", "progress=off", "stream.num_tasks=2", "stream.examples_per_task=200",
              "metrics.enabled=false", "train.batch_size=1", "agent.hidden=[32,16]", "agent.optimizer.lr=0.05",
              "train.log_every=50"]
    plugin = ["plugins=[my_resets]", "interventions=[reset_weakest]", "interventions.reset_weakest.every=50"]
    for out, extra in (("fast", [*plugin, "train.fast=true"]), ("slow", [*plugin, "train.fast=false"])):
        p = lab_run(tmp_path, *common, *extra, f"out_dir={out}")
        assert p.returncode == 0, p.stderr
    fast, slow = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("fast", "slow"))
    (plain,) = run(compose([*common, "train.fast=true"]), tmp_path / "plain")  # the same run without the plug-in
    assert fast["fused_path"] and not slow["fused_path"] and fast["interventions"] == ["reset_weakest"]
    resets = lambda d: [r for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())
                        if "reset_weakest/resets" in r]
    assert [r["step"] for r in resets("fast")] == [r["step"] for r in resets("slow")] == list(range(49, 400, 50))
    # float32 sums of the same weights in two orders agree to ~1e-6, far from changing the chosen unit or the losses
    assert fast["online_loss"] == pytest.approx(slow["online_loss"], rel=1e-4)
    assert fast["online_loss"] != plain["online_loss"]  # and the resets changed the run
