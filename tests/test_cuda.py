"""The GPU path: data, step and interventions on the device; the fused step
replayed as a CUDA graph equals the eager step. These need a CUDA device and
are skipped without one (this lab's CI machine has none; run them where one is)."""
import pytest
import torch

from conftest import run_weights

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BASE = ["wandb.enabled=false", "progress=off", "agent.hidden=[64,32]", "stream.num_tasks=3",
        "stream.examples_per_task=200", "metrics.probe_every=0", "metrics.hessian_every=0", "agent.optimizer.lr=0.05",
        "train.batch_size=1", "device=cuda"]


def test_off_the_gpu_the_step_is_not_wrapped():
    from plasticity_lab.agents import MLP, Agent
    from plasticity_lab.agents.cuda_graph import graphed
    from plasticity_lab.agents.fused import FusedAgent
    from plasticity_lab.agents.optimizers import make_optimizer
    from plasticity_lab.agents.stacked import StackedStep

    net = MLP(6, [5], 3)
    step = StackedStep([FusedAgent(Agent(net, make_optimizer(net.parameters(), "sgd", 0.1)))])
    assert graphed(step) is step


def _weights(path):
    return {k: v.cpu() for k, v in run_weights(path).items()}


@cuda
@pytest.mark.parametrize("extra", [
    [],
    ["interventions=[cbp]", "interventions.cbp.replacement_rate=0.01", "interventions.cbp.maturity_threshold=20"],
    ["experiment=split_mnist", "stream.scenario=task", "stream.num_tasks=3"],
], ids=["backprop", "cbp", "task_heads_recapture"])
def test_graphed_run_equals_eager_run(extra, tiny_run, tmp_path):
    graph = tiny_run(*extra, base=BASE, out="graph")
    eager = tiny_run(*extra, "train.cuda_graphs=false", base=BASE, out="eager")
    assert graph["fused_path"] and eager["fused_path"]
    assert graph["online_loss"] == pytest.approx(eager["online_loss"], rel=1e-4, abs=1e-6)
    for k, v in _weights(tmp_path / "eager").items():
        assert torch.allclose(v, _weights(tmp_path / "graph")[k], atol=1e-4), k


@cuda
def test_the_graph_is_captured_and_replayed():
    from plasticity_lab.agents import MLP, Agent
    from plasticity_lab.agents.cuda_graph import GraphedStep, WARMUP
    from plasticity_lab.agents.fused import FusedAgent
    from plasticity_lab.agents.optimizers import make_optimizer

    torch.manual_seed(0)
    net = MLP(20, [16], 4).cuda()
    twin = MLP(20, [16], 4).cuda()
    twin.load_state_dict(net.state_dict())
    fast = FusedAgent(Agent(net, make_optimizer(net.parameters(), "sgd", 0.1)), cuda_graphs=True)
    eager = FusedAgent(Agent(twin, make_optimizer(twin.parameters(), "sgd", 0.1)))
    for s in range(WARMUP + 5):
        x, y = torch.randn(1, 20, device="cuda"), torch.randint(0, 4, (1,), device="cuda")
        a, b = fast.observe(x, y), eager.observe(x, y)
        assert torch.allclose(a.logits, b.logits, atol=1e-6), s
    assert isinstance(fast._stepper, GraphedStep) and fast._stepper.graph is not None and not fast._stepper.disabled
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


@cuda
@pytest.mark.parametrize("extra", [
    ["agent.optimizer.name=adam", "agent.optimizer.lr=0.001", "activation=hard_ash", "train.batch_size=16"],
    ["agent.optimizer.name=sgd", "agent.optimizer.momentum=0.9", "agent.optimizer.lr=0.01", "train.batch_size=16",
     "interventions=[cbp]", "interventions.cbp.replacement_rate=0.01", "interventions.cbp.maturity_threshold=20"],
], ids=["adam_hard_ash", "momentum_cbp"])
def test_vmapped_seeds_on_the_gpu_equal_each_seed_alone(extra, tiny_run, compose, tmp_path):
    """The torch.func path on the GPU: data, stacked weights, the fused optimizer and the seeds'
    interventions on the device; each seed equals itself alone to float rounding (cuBLAS may pick
    another kernel for the batched product: 1e-4, as on the CPU)."""
    from plasticity_lab.lab.loop import run

    many = run(compose([*BASE, *extra, "seeds=[0,1]"]), tmp_path / "many")
    assert [s["step_path"] for s in many] == ["vmap", "vmap"]
    for s in (0, 1):
        alone = tiny_run(*extra, f"seed={s}", base=BASE, out=f"alone{s}")
        assert many[s]["online_loss"] == pytest.approx(alone["online_loss"], rel=1e-4)
        for k, v in _weights(tmp_path / f"alone{s}").items():
            assert torch.allclose(v, _weights(tmp_path / f"many/seed_{s}")[k], rtol=1e-4, atol=1e-4), (s, k)
