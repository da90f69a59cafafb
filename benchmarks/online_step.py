"""Batch-1 online steps per second on Dohare et al.'s permuted-MNIST net
(784-2000-2000-2000-10, SGD lr 0.003): a plain PyTorch autograd loop, the
lab's autograd path (Agent.observe + the runner's hook dispatch and
accumulators), the lab's fused path (agents/fused.py) with its updates
deferred (agents/pending.py, what ``lab run`` uses for backprop on the
paper's net) and applied at once (what it uses when an intervention acts every
step, and for nets too small for deferral to pay), and continual backprop on
each (the paper's cfg: adaptable contribution, decay 0.99, maturity 100,
replacement rate 1e-4). The updates-at-once rows run as one compiled call on
the CPU (agents/compiled_step.py); the ``_ops`` rows are the same steps in
PyTorch ops (``train.compiled_step=false``). All measured in one process,
alternating, median of repeats. Last line: JSON.

    python benchmarks/online_step.py [--steps 300] [--repeats 3] [--width 2000] [--threads 1] [--device cuda]

On a GPU the fused agents replay their step as a CUDA graph (agents/cuda_graph.py)
and do not defer updates, as ``lab run device=cuda`` does.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from plasticity_lab.agents import MLP, Agent, interventions
from plasticity_lab.agents.fused import FusedAgent
from plasticity_lab.agents.optimizers import make_optimizer


def make(width: int, seed: int = 0, device: str = "cpu") -> Agent:
    torch.manual_seed(seed)
    net = MLP(784, [width] * 3, 10).to(device)
    return Agent(net, make_optimizer(net.parameters(), "sgd", 0.003))


def plain_loop(agent: Agent, x: torch.Tensor, y: torch.Tensor) -> float:
    model, opt = agent.model, agent.optimizer
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    t0 = time.perf_counter()
    for i in range(len(y)):
        out = model(x[i:i + 1])
        loss = F.cross_entropy(out, y[i:i + 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        correct += (out.argmax(1) == y[i:i + 1]).sum()
    correct.item()
    return len(y) / (time.perf_counter() - t0)


def lab_loop(agent: Agent, x: torch.Tensor, y: torch.Tensor, hooks: list) -> float:
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    loss_sum = torch.zeros((), device=y.device)
    t0 = time.perf_counter()
    for i in range(len(y)):
        info = agent.observe(x[i:i + 1], y[i:i + 1])
        correct.add_(info.correct)
        loss_sum.add_(info.loss)
        for h in hooks:
            h(agent, info)
    correct.item()
    return len(y) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (lab run's choice at batch 1: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev, gpu = args.device, args.device.startswith("cuda")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(args.steps, 784, generator=g).to(dev), torch.randint(0, 10, (args.steps,), generator=g).to(dev)
    plain, lab, cbp = make(args.width, device=dev), make(args.width, device=dev), make(args.width, device=dev)
    # as lab/build.py makes them: deferred updates without per-step interventions (not on a GPU: graphs there),
    # |W| sums for CBP
    fused, fused_now, fused_cbp = (
        FusedAgent(make(args.width, device=dev), deferred_updates=0 if gpu else 16, cuda_graphs=gpu),
        FusedAgent(make(args.width, device=dev), cuda_graphs=gpu),
        FusedAgent(make(args.width, device=dev), weight_abs_sums=True, cuda_graphs=gpu))
    fused_now_ops, fused_cbp_ops = (
        FusedAgent(make(args.width, device=dev), cuda_graphs=gpu, compiled_step=False),
        FusedAgent(make(args.width, device=dev), weight_abs_sums=True, cuda_graphs=gpu, compiled_step=False))
    cbp_iv, fused_cbp_iv, ops_cbp_iv = (interventions.get("cbp")(replacement_rate=1e-4, maturity_threshold=100)
                                        for _ in range(3))
    cbp_iv.on_run_start(cbp)
    fused_cbp_iv.on_run_start(fused_cbp)
    ops_cbp_iv.on_run_start(fused_cbp_ops)
    rates: dict[str, list[float]] = {"plain": [], "lab": [], "lab_cbp": [], "fused": [], "fused_now": [], "fused_cbp": [],
                                     "fused_now_ops": [], "fused_cbp_ops": []}
    for _ in range(args.repeats):
        rates["plain"].append(plain_loop(plain, x, y))
        rates["lab"].append(lab_loop(lab, x, y, []))
        rates["lab_cbp"].append(lab_loop(cbp, x, y, [cbp_iv.after_step]))
        rates["fused"].append(lab_loop(fused, x, y, []))
        rates["fused_now"].append(lab_loop(fused_now, x, y, []))
        rates["fused_cbp"].append(lab_loop(fused_cbp, x, y, [fused_cbp_iv.after_step]))
        rates["fused_now_ops"].append(lab_loop(fused_now_ops, x, y, []))
        rates["fused_cbp_ops"].append(lab_loop(fused_cbp_ops, x, y, [ops_cbp_iv.after_step]))
    med = {k: statistics.median(v) for k, v in rates.items()}
    for k, v in med.items():
        print(f"{k:<13} {v:8.1f} steps/s   ({1000 / v:.2f} ms/step)")
    result = {"width": args.width, "device": dev, "threads": torch.get_num_threads(), "steps_per_s": {k: round(v, 1) for k, v in med.items()},
              "lab_over_plain": round(med["lab"] / med["plain"], 3), "fused_over_plain": round(med["fused"] / med["plain"], 3),
              "cbp_step_cost_vs_bp": round(med["lab"] / med["lab_cbp"], 3),
              "fused_now_over_plain": round(med["fused_now"] / med["plain"], 3),
              "fused_cbp_step_cost_vs_fused_bp": round(med["fused_now"] / med["fused_cbp"], 3),
              "fused_cbp_step_cost_vs_lab_bp": round(med["fused"] / med["fused_cbp"], 3),
              "compiled_over_ops": round(med["fused_now"] / med["fused_now_ops"], 3),
              "compiled_over_ops_cbp": round(med["fused_cbp"] / med["fused_cbp_ops"], 3)}
    print(f"lab / plain {result['lab_over_plain']}   fused / plain {result['fused_over_plain']} "
          f"(updates at once: {result['fused_now_over_plain']})")
    print(f"CBP step cost / BP: autograd {result['cbp_step_cost_vs_bp']}, fused {result['fused_cbp_step_cost_vs_fused_bp']} "
          f"(vs the same step without CBP), {result['fused_cbp_step_cost_vs_lab_bp']} (vs the lab's backprop step)")
    print(f"compiled step / PyTorch ops: {result['compiled_over_ops']} (with CBP: {result['compiled_over_ops_cbp']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
