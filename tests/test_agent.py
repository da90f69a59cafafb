"""The MLP agent: init as Dohare et al., online accuracy from the pre-update forward, heads, features."""
import copy

import pytest
import torch
import torch.nn.functional as F

from plasticity_lab.agents import MLP, Agent
from plasticity_lab.agents.optimizers import make_optimizer
from plasticity_lab.registry import ConfigError


def make(hidden=(8, 6), act="relu", lr=0.1, **kw):
    torch.manual_seed(0)
    net = MLP(5, list(hidden), 4, activation=act, **kw)
    return Agent(net, make_optimizer(net.parameters(), "sgd", lr))


def test_kaiming_uniform_weights_and_zero_biases():
    torch.manual_seed(0)
    net = MLP(400, [300, 200], 10, activation="relu")
    w1, w_out = net.layers[0].weight, net.layers[-1].weight
    relu_bound = 2 ** 0.5 * (3 / 400) ** 0.5
    assert float(w1.abs().max()) <= relu_bound and float(w1.abs().max()) > 0.99 * relu_bound
    # uniform on [-b, b] has variance b^2 / 3
    assert float(w1.var()) == pytest.approx(relu_bound ** 2 / 3, rel=0.02)
    assert float(w_out.abs().max()) <= (3 / 200) ** 0.5  # output layer: linear gain 1
    assert all(float(l.bias.abs().sum()) == 0 for l in net.layers)
    tanh = MLP(400, [300], 10, activation="tanh").layers[0].weight
    assert float(tanh.abs().max()) == pytest.approx(5 / 3 * (3 / 400) ** 0.5, rel=0.01)


def test_observe_reports_loss_and_correct_from_the_pre_update_forward():
    agent = make()
    x, y = torch.randn(16, 5), torch.randint(0, 4, (16,))
    before = copy.deepcopy(agent.model)
    logits = before(x)
    info = agent.observe(x, y)
    assert float(info.loss) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert int(info.correct) == int((logits.argmax(1) == y).sum())
    # and one SGD step was taken: w <- w - lr * grad
    before.zero_grad()
    F.cross_entropy(before(x), y).backward()
    expected = before.layers[0].weight - 0.1 * before.layers[0].weight.grad
    assert torch.allclose(agent.model.layers[0].weight, expected, atol=1e-6)
    assert [f.shape for f in info.features] == [(16, 8), (16, 6)]


def test_features_are_named_post_activation_outputs():
    agent = make()
    feats = agent.features(torch.randn(3, 5))
    assert list(feats) == ["h1", "h2"]
    assert float(feats["h1"].min()) >= 0.0  # after ReLU


def test_task_heads_mask_other_classes():
    agent = make()
    x, y = torch.randn(32, 5), torch.randint(2, 4, (32,))
    agent.use_head((2, 3))
    info = agent.observe(x, y)
    assert set(info.logits.argmax(1).tolist()) <= {2, 3}
    w = agent.model.layers[-1].weight.detach().clone()
    agent.observe(x, y)
    # rows of the masked-out classes 0 and 1 get no gradient
    assert torch.equal(agent.model.layers[-1].weight[:2], w[:2])
    assert set(agent.predict(x, (0, 1)).argmax(1).tolist()) <= {0, 1}


def test_training_actually_learns():
    torch.manual_seed(1)
    x = torch.randn(256, 5)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    agent = make(hidden=(32,), lr=0.2)
    for _ in range(300):
        agent.observe(x, y)
    assert float((agent.predict(x).argmax(1) == y).float().mean()) > 0.9


@pytest.mark.parametrize("bad,field", [
    (dict(hidden=[]), "agent.hidden"), (dict(hidden=[0]), "agent.hidden"), (dict(act="nope"), "activation"),
])
def test_bad_network_config_names_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        MLP(5, bad.get("hidden", [4]), 2, activation=bad.get("act", "relu"))


def test_bad_optimizer_config_names_the_field():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ConfigError, match="agent.optimizer.name.*adam"):
        make_optimizer(params, "adamm", 0.1)
    with pytest.raises(ConfigError, match="agent.optimizer.lr"):
        make_optimizer(params, "sgd", -0.1)
    with pytest.raises(ConfigError, match="agent.optimizer.betas.*momentum"):
        make_optimizer(params, "sgd", 0.1, betas=(0.9, 0.9))
    assert type(make_optimizer(params, "Adagrad", 0.1)).__name__ == "Adagrad"
