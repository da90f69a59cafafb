"""The fused SGD path gives the autograd path's weights and metrics, intervention by intervention."""
from dataclasses import dataclass

import pytest
import torch

from plasticity_lab.agents import MLP, Agent, activations
from plasticity_lab.agents.fused import FusedAgent
from plasticity_lab.agents.interventions import Intervention, interventions
from plasticity_lab.agents.optimizers import make_optimizer
from conftest import run_state, run_weights
from plasticity_lab.registry import ConfigError

BASE = ["wandb.enabled=false", "progress=off", "agent.hidden=[32,16]", "stream.num_tasks=3",
        "stream.examples_per_task=200", "metrics.probe_every=0", "metrics.hessian_every=0", "agent.optimizer.lr=0.05"]


@pytest.mark.parametrize("extra", [
    [], ["interventions=[l2]", "interventions.l2.weight=1e-3"],
    ["interventions=[shrink_perturb]", "interventions.shrink_perturb.shrink=1e-4", "interventions.shrink_perturb.noise_std=1e-3"],
    ["interventions=[cbp]", "interventions.cbp.replacement_rate=0.01", "interventions.cbp.maturity_threshold=20"],
    ["agent.optimizer.weight_decay=1e-3", "activation=tanh", "train.batch_size=1"],
    ["interventions=[cbp]", "interventions.cbp.replacement_rate=0.01", "interventions.cbp.maturity_threshold=20",
     "train.batch_size=1", "stream.examples_per_task=100"],
], ids=["backprop", "l2", "shrink_perturb", "cbp", "tanh_wd_batch1", "cbp_batch1_fused_sums"])
def test_fused_matches_autograd(extra, tiny_run, tmp_path):
    slow = tiny_run(*extra, "train.fast=false", base=BASE, out="slow")
    fast = tiny_run(*extra, "train.fast=true", base=BASE, out="fast")
    assert fast["fused_path"] and not slow["fused_path"]
    assert fast["online_loss"] == pytest.approx(slow["online_loss"], rel=1e-4, abs=1e-6)
    assert fast["online_accuracy"] == slow["online_accuracy"]
    a, b = run_state(tmp_path / "slow"), run_state(tmp_path / "fast")
    for k, v in a["agent"]["model"].items():  # float32 rounding drifts over hundreds of steps (exact in float64: below)
        assert torch.allclose(v, b["agent"]["model"][k], atol=5e-3), (k, float((v - b["agent"]["model"][k]).abs().max()))
    if "interventions=[cbp]" in extra:
        # the same units were replaced: utilities from |W| sums of two paths differ by float rounding (~1e-7
        # relative), far below the gaps between the units' utilities that decide a replacement here
        ages = lambda ck: [l["age"] for l in ck["interventions"][0]["layers"]]
        assert all(torch.equal(x, y) for x, y in zip(ages(a), ages(b)))
        assert all(int(l.min()) < a["step"] for l in ages(a))  # and some were, in every layer (ages restarted)


WITH_DERIVATIVE = [n for n in activations.names() if activations.facts(n).derivative is not None]


def test_the_usual_activations_register_their_derivative():
    assert {"relu", "leaky_relu", "tanh", "sigmoid", "linear", "elu", "selu", "silu", "softplus", "relu2"} <= set(WITH_DERIVATIVE)


@pytest.mark.parametrize("act", WITH_DERIVATIVE)
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("sums", [False, True], ids=["plain", "with_abs_sums"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch_ops"])
def test_one_fused_step_equals_one_autograd_step(act, batch, sums, compiled):
    import copy

    torch.manual_seed(0)
    net = MLP(6, [5, 4], 3, activation=act).double()
    twin = copy.deepcopy(net)
    slow = Agent(net, make_optimizer(net.parameters(), "sgd", 0.1, weight_decay=0.01))
    fast = FusedAgent(Agent(twin, make_optimizer(twin.parameters(), "sgd", 0.1, weight_decay=0.01)),
                      weight_abs_sums=sums, compiled_step=compiled)  # with sums at batch 1: backward and update in one pass per layer
    x, y = torch.randn(batch, 6, dtype=torch.float64), torch.randint(0, 3, (batch,))
    a, b = slow.observe(x, y), fast.observe(x, y)
    # the compiled step runs exactly where asked for and built in: batch 1 and an activation with built-in code
    assert (fast.stepper().compiled is not None) == (compiled and activations.facts(act).kernel is not None)
    if sums:
        for layer, (rows, cols) in zip(twin.layers, b.weight_abs_sums):
            assert torch.allclose(rows, layer.weight.abs().sum(1)) and torch.allclose(cols, layer.weight.abs().sum(0))
    assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-12)
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-12)
    assert all(torch.allclose(f, g) for f, g in zip(a.features, b.features))
    # gradients built on demand equal autograd's (the data loss; SGD's decay is applied inside the optimizer)
    assert all(torch.allclose(p.grad, g, atol=1e-12) for p, g in zip(net.parameters(), b.grads()))


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch_ops"])
def test_one_fused_mse_step_equals_one_autograd_step(compiled):
    """The regression loss (bit-flipping): dL/dout = 2 (out - y) / B."""
    import copy

    torch.manual_seed(0)
    net = MLP(20, [5], 1).double()
    twin = copy.deepcopy(net)
    slow = Agent(net, make_optimizer(net.parameters(), "sgd", 0.01), loss="mse")
    fast = FusedAgent(Agent(twin, make_optimizer(twin.parameters(), "sgd", 0.01), loss="mse"), compiled_step=compiled)
    for batch in (1, 3):
        x, y = torch.randint(0, 2, (batch, 20)).double(), torch.randn(batch, dtype=torch.float64)
        a, b = slow.observe(x, y), fast.observe(x, y)
        assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-12)
        for p, q in zip(net.parameters(), twin.parameters()):
            assert torch.allclose(p, q, atol=1e-12)
    assert (fast.stepper().compiled is not None) == compiled


def _stack_of(seeds: int, compiled: bool, act: str = "relu", sums: bool = True, bias: bool = True):
    """N fused agents of one 12-8-6-5 MLP configuration (float64, seed-dependent weights) and their stacked step."""
    from plasticity_lab.agents.stacked import StackedStep

    agents = []
    for n in range(seeds):
        torch.manual_seed(n)
        net = MLP(12, [8, 6], 5, activation=act, bias=bias).double()
        agents.append(FusedAgent(Agent(net, make_optimizer(net.parameters(), "sgd", 0.1, weight_decay=0.01)),
                                 weight_abs_sums=sums, compiled_step=compiled))
    return agents, StackedStep(agents)


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "linear"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_the_compiled_step_of_stacked_seeds_equals_the_torch_ops_step(act, bias):
    """Three seeds, 30 batch-1 steps, half of them under task heads that mask
    logits to -inf: every output of the step, the weights and the |W| sums of
    the compiled call equal the PyTorch ops' in float64 (1e-10: the two sum
    products in different orders, ~1e-16 per step, grown over 30 updates)."""
    fast, a = _stack_of(3, True, act, bias=bias)
    slow, b = _stack_of(3, False, act, bias=bias)
    assert a.compiled is not None and b.compiled is None
    g = torch.Generator().manual_seed(0)
    for t in range(30):
        for agent in fast + slow:
            agent.use_head((0, 2, 4) if t >= 15 else None)
        x = torch.randn(3, 1, 12, generator=g, dtype=torch.float64)
        y = torch.tensor([[0], [2], [4]]) if t >= 15 else torch.randint(0, 5, (3, 1), generator=g)
        ra, rb = a.step(x, y), b.step(x, y)
        for u, v in zip(ra[:3], rb[:3]):
            assert u.shape == v.shape and torch.allclose(u.double(), v.double(), atol=1e-10), t
        assert all(torch.allclose(u, v, atol=1e-10) for u, v in zip(ra[3], rb[3]))
        assert all(torch.allclose(u, v, atol=1e-10) for n in range(3) for u, v in zip(ra[4](n), rb[4](n)))
    for w, v in zip(a.weights + [x for x in a.biases if x is not None], b.weights + [x for x in b.biases if x is not None]):
        assert torch.allclose(w, v, atol=1e-10)
    for (r1, c1), (r2, c2) in zip(a.abs_sums, b.abs_sums):
        assert torch.allclose(r1, r2, atol=1e-10) and torch.allclose(c1, c2, atol=1e-10)


def test_a_seed_in_the_compiled_stack_equals_it_alone_exactly():
    """Each seed's pass is the same loop alone as among stacked seeds, so its bits are the same."""
    together, stack = _stack_of(3, True)
    alone = _stack_of(1, True)[0][0]  # seed 0's net, as together[0] starts
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y = torch.randn(3, 1, 12, generator=g, dtype=torch.float64), torch.randint(0, 5, (3, 1), generator=g)
        stack.step(x, y)
        alone.observe(x[0], y[0])
    assert stack.compiled is not None and alone.stepper().compiled is not None
    for p, q in zip(together[0].model.parameters(), alone.model.parameters()):
        assert torch.equal(p, q)


def test_a_bad_target_in_the_compiled_step_changes_no_seed():
    """Every target is checked before any seed's weights change (as PyTorch's cross-entropy raises before the update)."""
    agents, stack = _stack_of(2, True)
    before = [w.clone() for w in stack.weights]
    with pytest.raises(RuntimeError, match="target 7 is out of bounds for 5 classes"):
        stack.step(torch.randn(2, 1, 12, dtype=torch.float64), torch.tensor([[1], [7]]))
    assert all(torch.equal(w, v) for w, v in zip(stack.weights, before))


def test_the_compiled_step_says_why_it_does_not_run():
    from plasticity_lab.agents.compiled_step import compiled_reason

    _, stack = _stack_of(1, True)
    acts, weights = stack.acts, stack.weights
    assert compiled_reason(acts, "cross_entropy", weights, deferring=False) is None
    assert "deferred" in compiled_reason(acts, "cross_entropy", weights, deferring=True)
    assert "loss mse with 5 outputs" in compiled_reason(acts, "mse", weights, deferring=False)
    assert "float16" in compiled_reason(acts, "cross_entropy", [w.half() for w in weights], deferring=False)
    leaky = MLP(12, [8], 5, activation="leaky_relu").acts
    assert "leaky_relu" in compiled_reason(leaky, "cross_entropy", weights, deferring=False)
    assert _stack_of(1, False)[1].compiled_reason == "train.compiled_step=false"


def test_a_kernel_name_must_be_built_in_code_of_an_activation_with_a_derivative(register_for_test):
    with pytest.raises(TypeError, match="kernel= names built-in code"):
        register_for_test(activations, "bad_kernel", lambda x: x, kernel="gelu", derivative=lambda z, h: h)
    with pytest.raises(TypeError, match="kernel= names built-in code"):
        register_for_test(activations, "no_derivative", lambda x: x, kernel="relu")


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_deferred_updates_equal_autograd_steps_in_float64(act, batch, wd):
    """agents/pending.py: updates kept as U V^T and flushed every 8 examples
    (here mid-stream, 40 steps of batch 1 or 3) give autograd SGD's weights,
    losses and features at every step."""
    import copy

    from plasticity_lab.agents import MLP, Agent
    from plasticity_lab.agents.fused import FusedAgent
    from plasticity_lab.agents.optimizers import make_optimizer

    torch.manual_seed(0)
    net = MLP(6, [5, 4], 3, activation=act).double()
    twin = copy.deepcopy(net)
    slow = Agent(net, make_optimizer(net.parameters(), "sgd", 0.1, weight_decay=wd))
    fast = FusedAgent(Agent(twin, make_optimizer(twin.parameters(), "sgd", 0.1, weight_decay=wd)), deferred_updates=8)
    for step in range(40):
        x, y = torch.randn(batch, 6, dtype=torch.float64), torch.randint(0, 3, (batch,))
        a, b = slow.observe(x, y), fast.observe(x, y)
        assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-10), step
        assert all(torch.allclose(f, g, atol=1e-10) for f, g in zip(a.features, b.features)), step
    assert 0 < fast._stack.pending.count <= 8  # compared above with updates pending, after earlier flushes
    fast.flush_updates()
    assert fast._stack.pending.count == 0 and fast._stack.pending.scale == 1.0
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-10)


def test_deferred_updates_are_applied_before_the_weights_are_read(tiny_run, tmp_path, monkeypatch):
    """A run defers (no per-step intervention; the size threshold lowered for a
    tiny net) and still checkpoints, evaluates and measures the current
    weights: its records equal the undeferred run's to float rounding."""
    monkeypatch.setattr("plasticity_lab.agents.pending.MIN_WEIGHTS", 0)
    on = tiny_run("train.batch_size=1", base=BASE, out="on")
    off = tiny_run("train.batch_size=1", "train.deferred_updates=0", base=BASE, out="off")
    assert on["deferred_updates"] == 16 and off["deferred_updates"] == 0
    assert not on["compiled_step"] and off["compiled_step"]  # deferring steps stay PyTorch ops
    assert on["online_accuracy"] == pytest.approx(off["online_accuracy"], abs=0.01)
    for row_on, row_off in zip(on["acc_matrix"], off["acc_matrix"]):
        assert row_on == pytest.approx(row_off, abs=0.01)
    a, b = run_weights(tmp_path / "on"), run_weights(tmp_path / "off")
    for k, v in a.items():
        assert torch.allclose(v, b[k], atol=1e-4), k
    assert on["diagnostics"].keys() == off["diagnostics"].keys()
    for name, series in on["diagnostics"].items():  # measured at task starts on the flushed weights
        assert [v for _, v in series] == pytest.approx([v for _, v in off["diagnostics"][name]], rel=1e-2, abs=1e-3), name


def test_deferral_is_used_only_where_it_pays(tiny_run):
    from plasticity_lab.agents.pending import pays_off

    assert pays_off(9_600_000, 1, 16) and not pays_off(1_800_000, 1, 16) and not pays_off(9_600_000, 16, 16)
    assert tiny_run("train.batch_size=1", base=BASE)["deferred_updates"] == 0  # a tiny net: cache-resident weights


def test_a_run_reports_whether_its_steps_ran_compiled(tiny_run):
    assert tiny_run("train.batch_size=1", base=BASE, out="on")["compiled_step"] is True
    assert tiny_run("train.batch_size=1", "train.compiled_step=false", base=BASE, out="off")["compiled_step"] is False


def test_fast_true_says_why_it_cannot_run(tiny_run):
    with pytest.raises(ConfigError, match="train.fast.*Adam"):
        tiny_run("train.fast=true", "agent.optimizer.name=adam", base=BASE)
    with pytest.raises(ConfigError, match="train.fast.*L2Init"):
        tiny_run("train.fast=true", "interventions=[l2_init]", base=BASE)
    s = tiny_run("agent.optimizer.name=adam", "agent.optimizer.lr=0.001", base=BASE)  # auto: falls back
    assert s["fused_path"] is False


def test_fallback_to_autograd_is_said_once_with_its_reason(tiny_run, capsys):
    from plasticity_lab.lab import build

    build._said.clear()
    tiny_run("agent.optimizer.name=adam", "agent.optimizer.lr=0.001", base=BASE, out="a")
    tiny_run("agent.optimizer.name=adam", "agent.optimizer.lr=0.001", base=BASE, out="b")
    err = capsys.readouterr().err
    assert err.count("training with autograd") == 1 and "optimizer Adam" in err


def fused(opt="sgd", **kw):
    torch.manual_seed(0)
    net = MLP(6, [5, 4], 3)
    return Agent(net, make_optimizer(net.parameters(), opt, 0.1)), kw


def test_the_fused_agent_refuses_what_it_cannot_honour():
    agent, _ = fused()
    with pytest.raises(ValueError, match="weight_abs_sums.*deferred"):
        FusedAgent(agent, deferred_updates=16, weight_abs_sums=True)  # CBP would read |W| sums of zero
    with pytest.raises(ValueError, match="Adam"):
        FusedAgent(fused("adam")[0])
    with pytest.raises(ValueError, match="deferred_updates must be >= 0"):
        FusedAgent(agent, deferred_updates=-1)
    assert FusedAgent(agent, deferred_updates=16).deferred_updates == 16


@dataclass
class LossAverage(Intervention):
    """A user plug-in whose field happens to be called ``decay`` (an EMA of the loss): not a weight decay."""

    decay: float = 0.99
    average: float = 0.0

    def after_step(self, agent, info):
        self.average = self.decay * self.average + (1 - self.decay) * float(info.loss)
        return {"loss_average": self.average}

    def reads_weights_between_steps(self) -> bool:
        return False


def test_a_field_named_decay_is_not_weight_decay(tiny_run, register_for_test):
    register_for_test(interventions, "loss_average_for_test", LossAverage)
    slow = tiny_run("interventions=[loss_average_for_test]", "train.fast=false", base=BASE, out="slow")
    fast = tiny_run("interventions=[loss_average_for_test]", "train.fast=true", base=BASE, out="fast")
    assert fast["fused_path"] and not slow["fused_path"]
    assert fast["online_loss"] == pytest.approx(slow["online_loss"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("extra", [
    ["interventions=[shrink_perturb]", "interventions.shrink_perturb.at=task", "interventions.shrink_perturb.shrink=0.1"],
    ["interventions=[reset]", "interventions.reset.layers=head"],
], ids=["shrink_perturb_at_task", "reset_per_task"])
def test_per_task_interventions_keep_updates_deferred(extra, tiny_run, monkeypatch):
    monkeypatch.setattr("plasticity_lab.agents.pending.MIN_WEIGHTS", 0)
    s = tiny_run(*extra, "train.batch_size=1", base=BASE)
    assert s["fused_path"] and s["deferred_updates"] == 16


def test_the_hook_plan_reads_each_declaration_once():
    from plasticity_lab.agents.hooks import plan_hooks
    from plasticity_lab.metrics.tracker import Tracker

    cbp, l2 = interventions.get("cbp")(), interventions.get("l2")(weight=0.01)
    sp_task = interventions.get("shrink_perturb")(at="task")
    reset_steps = interventions.get("reset")(every="5")
    plan = plan_hooks([Tracker(), cbp, l2, sp_task, reset_steps])
    assert plan.after_step == (plan.after_step[0], cbp.after_step, reset_steps.after_step)  # the tracker's first
    assert sp_task.on_task_start in plan.on_task_start and reset_steps.on_task_start not in plan.on_task_start
    assert plan.penalty == (l2.penalty,) and plan.weight_decay == 0.01 and plan.other_penalties == ()
    assert plan.needs_weight_abs_sums and plan.reads_weights_between_steps
    quiet = plan_hooks([Tracker(), sp_task, interventions.get("l2_init")()])
    assert not quiet.reads_weights_between_steps and quiet.other_penalties == ("L2Init",)
    with pytest.raises(TypeError, match="RunHooks"):
        plan_hooks([object()])
