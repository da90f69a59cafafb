"""Vectorised seeds vs the same seeds run one after another, through the real
runner (``lab run seeds=[...]`` vs ``lab run seed=s`` for each s): online
permuted MNIST, 784-100-100-10 ReLU, SGD lr 0.1, W&B and metrics off so the
figures are the training path's. Then peak memory of a vectorised run after
10 tasks and after 1,000 (tiny tasks, checkpoints and evaluation on), each in
its own process. Last line: JSON.

    python benchmarks/parallel_seeds.py [--seeds 8] [--tasks 2] [--examples 2000] [--batch 1 16] [--memory-tasks 10 1000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["wandb.enabled=false", "progress=off", "metrics.enabled=false", "train.checkpoint=false",
          "agent.hidden=[100,100]", "agent.optimizer.lr=0.1", "train.eval_every=1000", "train.log_every=1000"]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def throughput(seeds: list[int], tasks: int, examples: int, batch: int, out: Path) -> dict:
    from plasticity_lab.lab.config import compose_config
    from plasticity_lab.lab.loop import run

    base = [*COMMON, f"stream.num_tasks={tasks}", f"stream.examples_per_task={examples}", f"train.batch_size={batch}"]
    vec_runs: list = []
    seq_runs: list = []
    vec = timed(lambda: vec_runs.extend(run(compose_config([*base, f"seeds={seeds}".replace(" ", "")]), out / f"vec{batch}")))
    seq = timed(lambda: seq_runs.extend(run(compose_config([*base, f"seed={s}"]), out / f"seq{batch}_{s}")[0] for s in seeds))
    n = len(seeds) * tasks * examples
    # training loop only (summary examples_per_s = examples / time in the training loop): vectorised seeds share that time
    vec_train = n / (vec_runs[0]["examples"] / vec_runs[0]["examples_per_s"])
    seq_train = n / sum(r["examples"] / r["examples_per_s"] for r in seq_runs)
    return {"batch": batch, "vectorised_s": round(vec, 2), "sequential_s": round(seq, 2), "wall_speedup": round(seq / vec, 2),
            "train_ex_per_s": {"vectorised": round(vec_train), "sequential": round(seq_train)},
            "train_speedup": round(vec_train / seq_train, 2)}


def peak_memory_mb(seeds: list[int], tasks: int, out: Path) -> float:
    """Peak RSS of a fresh process running ``tasks`` tiny tasks of vectorised seeds."""
    overrides = ["wandb.enabled=false", "progress=off", "agent.hidden=[100,100]", f"stream.num_tasks={tasks}",
                 "stream.examples_per_task=16", "train.batch_size=16", "train.eval_every=50", "train.eval_window=5",
                 "metrics.task_every=50", "metrics.probe_every=0", "metrics.hessian_every=0",
                 f"seeds={seeds}".replace(" ", ""), f"out_dir={out / f'mem{tasks}'}"]
    code = ("import resource, sys; from plasticity_lab.lab.cli import main; code = main(['run', *sys.argv[1:]]); "
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", code, *overrides], cwd=ROOT, capture_output=True, text=True, check=True)
    return int(done.stdout.split("MAXRSS")[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--memory-tasks", type=int, nargs=2, default=[10, 1000])
    parser.add_argument("--skip-memory", action="store_true", help="throughput only (the memory check takes ~3 min)")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    result: dict = {"seeds": args.seeds, "threads": torch.get_num_threads(), "throughput": []}
    with tempfile.TemporaryDirectory() as tmp:
        throughput(seeds[:2], 1, 32, 16, Path(tmp) / "warmup")  # one-off imports and first-call costs, untimed
        for b in args.batch:
            r = throughput(seeds, args.tasks, args.examples, b, Path(tmp))
            result["throughput"].append(r)
            t = r["train_ex_per_s"]
            print(f"batch {b:>3}, {args.seeds} seeds: training loop {t['vectorised']} vs {t['sequential']} ex/s "
                  f"= {r['train_speedup']}x; whole runs (incl. evaluation, plots) {r['vectorised_s']:.2f} vs "
                  f"{r['sequential_s']:.2f} s = {r['wall_speedup']}x")
        if args.skip_memory:
            print(json.dumps(result))
            return
        few, many = args.memory_tasks
        t0 = time.perf_counter()
        m_few = peak_memory_mb(seeds, few, Path(tmp))
        m_many = peak_memory_mb(seeds, many, Path(tmp))
        result["memory"] = {"tasks": [few, many], "peak_rss_mb": [round(m_few, 1), round(m_many, 1)],
                            "ratio": round(m_many / m_few, 3), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"peak memory, {args.seeds} vectorised seeds: {m_few:.0f} MB after {few} tasks, {m_many:.0f} MB after {many} "
              f"({result['memory']['ratio']}x)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
