"""Where more intra-op threads pay: the lab's training examples/s with one
thread vs every core, for nets and batches from the smallest preset to the
paper's, with each step's forward FLOPs (what ``train.threads=auto`` decides
from, lab/threads.py). Run it on a quiet machine; a ratio above 1 means the
extra threads paid. Last line: JSON.

    python benchmarks/threads.py [--examples 2048]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch

from plasticity_lab.lab.config import compose_config
from plasticity_lab.lab.loop import run
from plasticity_lab.lab.threads import step_flops

CASES = [
    ("784-100-100-10, batch 1", ["agent.hidden=[100,100]", "train.batch_size=1"]),
    ("784-100-100-10, batch 16", ["agent.hidden=[100,100]", "train.batch_size=16"]),
    ("784-1000-10, batch 16", ["agent.hidden=[1000]", "train.batch_size=16"]),
    ("784-2000x3-10, batch 1", ["agent.hidden=[2000,2000,2000]", "train.batch_size=1"]),
    ("784-2000x3-10, batch 16", ["agent.hidden=[2000,2000,2000]", "train.batch_size=16"]),
    ("784-2000x3-10, batch 128", ["agent.hidden=[2000,2000,2000]", "train.batch_size=128"]),
]


def examples_per_s(overrides: list[str], threads: int, examples: int) -> tuple[float, float]:
    cfg = compose_config(["wandb.enabled=false", "progress=off", "stream.num_tasks=2", f"stream.examples_per_task={examples}",
                          "train.checkpoint=false", "metrics.enabled=false", f"train.threads={threads}", *overrides])
    from plasticity_lab.agents.networks import NetworkSpec, mlp

    spec = NetworkSpec((784,), 10, list(cfg.agent.hidden), "relu", {}, True, False, [])
    flops = step_flops(mlp(spec), torch.zeros(784), cfg.train.batch_size)
    with tempfile.TemporaryDirectory() as out:
        return run(cfg, out)[0]["examples_per_s"], flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2048)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows = []
    for name, overrides in CASES:
        n = args.examples if "batch 1," not in name + "," else max(256, args.examples // 8)
        one, flops = examples_per_s(overrides, 1, n)
        many, _ = examples_per_s(overrides, cores, n)
        rows.append({"case": name, "flops_per_step": flops, "ex_per_s_1_thread": round(one),
                     f"ex_per_s_{cores}_threads": round(many), "ratio": round(many / one, 2)})
        print(f"{name:28s} {flops:9.2e} FLOPs/step  1 thread {one:9.0f} ex/s  {cores} threads {many:9.0f} ex/s  "
              f"x{many / one:.2f}", flush=True)
    print(json.dumps({"cores": cores, "rows": rows}))


if __name__ == "__main__":
    main()
