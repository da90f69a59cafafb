"""Cost of the metric tracker: the training slowdown at the default cadence,
and the per-call cost of each metric at the paper's net.

1. Slowdown: the reduced permuted-MNIST run (784-100-100-10, batch 16) for a
   few tasks with ``metrics.enabled=true`` and ``false``, alternated, median of
   repeats; the ratio of wall times (training + metrics, evaluation and
   checkpoints off in both) minus 1 is the overhead (target <= 5 %).
2. Per call, at Dohare et al.'s net (784-2000-2000-2000-10) on a 2,000-example
   probe batch: each representation metric on one layer, the gradient read,
   the plasticity probe (100 steps, batch 32) and the Hessian top eigenvalue.

    python benchmarks/metrics_overhead.py [--tasks 20] [--repeats 3]
Last line: JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from plasticity_lab.agents import MLP, Agent
from plasticity_lab.agents.optimizers import make_optimizer
from plasticity_lab.lab.config import compose_config
from plasticity_lab.lab.loop import run
from plasticity_lab.metrics.curvature import hessian_top_eigenvalue
from plasticity_lab.metrics.probes import trainability
from plasticity_lab.metrics.rank import effective_rank, singular_values, srank, stable_rank
from plasticity_lab.metrics.sparsity import activation_sparsity, derivative_sparsity
from plasticity_lab.metrics.units import dead_fraction, dormant_fraction


def run_seconds(metrics: bool, tasks: int) -> float:
    cfg = compose_config(["wandb.enabled=false", "progress=off", f"stream.num_tasks={tasks}", f"metrics.enabled={metrics}",
                          f"train.eval_every={10**9}", "train.eval_window=1", "train.checkpoint=false"])
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        run(cfg, out)
        return time.perf_counter() - t0


def timed(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def per_call(probe: int = 2000) -> dict[str, float]:
    torch.manual_seed(0)
    net = MLP(784, [2000, 2000, 2000], 10)
    agent = Agent(net, make_optimizer(net.parameters(), "sgd", 0.003))
    x, y = torch.rand(probe, 784), torch.randint(0, 10, (probe,))
    agent.observe(x[:1], y[:1])
    feats = agent.features(x)
    A = feats["h2"]
    Z = net.forward_preactivations(x)[1].detach()
    s = singular_values(A)
    grads = [p.grad for p in net.parameters()]
    return {
        "forward_probe_batch": timed(lambda: agent.features(x)),
        "dead_fraction": timed(lambda: dead_fraction(A)),
        "dormant_fraction": timed(lambda: dormant_fraction(A)),
        "activation_sparsity": timed(lambda: activation_sparsity(A)),
        "derivative_sparsity": timed(lambda: derivative_sparsity(Z, torch.relu)),
        "svd (shared by the three ranks)": timed(lambda: singular_values(A), 1),
        "ranks_given_svd": timed(lambda: (effective_rank(s=s), srank(s=s), stable_rank(s=s))),
        "grad_read": timed(lambda: torch.cat([g.flatten() for g in grads]).norm()),
        "plasticity_probe_100_steps": timed(lambda: trainability(net, agent.optimizer, x[:512], y[:512], 100), 1),
        "hessian_top_10_iters_256": timed(lambda: hessian_top_eigenvalue(net, F.cross_entropy, x[:256], y[:256], 10), 1),
        "train_step_batch1": timed(lambda: agent.observe(x[:1], y[:1]), 20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    on, off = [], []
    for _ in range(args.repeats):
        off.append(run_seconds(False, args.tasks))
        on.append(run_seconds(True, args.tasks))
    ratio = statistics.median(on) / statistics.median(off)
    print(f"reduced run, {args.tasks} tasks: metrics on {statistics.median(on):.2f} s, off {statistics.median(off):.2f} s, "
          f"overhead {100 * (ratio - 1):.1f} %")
    costs = per_call()
    for name, sec in costs.items():
        print(f"  {name:<34} {1000 * sec:10.2f} ms")
    step = costs.pop("train_step_batch1")
    per_task = 3 * sum(v for k, v in costs.items() if not k.startswith(("plasticity", "hessian", "grad")))
    print(f"paper net: task-start metrics (3 layers) {per_task:.1f} s vs one task of training "
          f"(60,000 batch-1 steps at {1000 * step:.1f} ms) {60000 * step:.0f} s: {100 * per_task / (60000 * step):.2f} %")
    print(json.dumps({"overhead_pct": round(100 * (ratio - 1), 2), "ratio": round(ratio, 4),
                      "per_call_ms": {k: round(1000 * v, 2) for k, v in costs.items()},
                      "paper_task_start_pct": round(100 * per_task / (60000 * step), 3)}))


if __name__ == "__main__":
    main()
