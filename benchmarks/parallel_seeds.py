"""Vectorised seeds vs the same seeds run one after another, through the real
runner (``lab run seeds=[...]`` vs ``lab run seed=s`` for each s), W&B and
metrics off so the figures are the training path's:

- ``fused``: online permuted MNIST, 784-100-100-10 ReLU, SGD lr 0.1 (the
  hand-fused stacked step, agents/stacked.py), batch 1 and 16;
- ``cbp``: the same at batch 1 with continual backprop (its per-step
  utilities stacked across the seeds: agents/interventions/cbp.py);
- ``hard_ash``: split MNIST, 784-1000-10 Hard ASH, Adagrad, batch 16
  (experiment=split_mnist_hard_ash_reduced; the torch.func path, agents/vmapped.py);
- ``conv_net``: continual ImageNet's conv net, momentum SGD, batch 100, on
  random 32x32 images in the downsampled-ImageNet file format (the content does
  not change the arithmetic's cost), torch.func path.

Then peak memory: of a fused vectorised run after 10 tasks and after 1,000
(tiny tasks, checkpoints and evaluation on), and of the torch.func path for
1, 2, 4 and 8 seeds and after 5 vs 100 tasks, each in its own process (peak
RSS on the CPU; ``--device cuda``: peak CUDA memory allocated). Last line: JSON.

    python benchmarks/parallel_seeds.py [--seeds 8] [--setups fused cbp hard_ash conv_net] [--device cpu]
        [--tasks 2] [--examples 2000] [--batch 1 16] [--epochs 2] [--memory-tasks 10 1000] [--skip-memory]
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


def imagenet_like(root: Path, classes: int = 10, per_class: int = 300) -> Path:
    """Random uint8 images in the downsampled-ImageNet release's format, converted by ``lab data imagenet32``'s code."""
    import pickle

    import numpy as np

    from plasticity_lab.streams.imagenet32 import convert

    rng = np.random.default_rng(0)
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    labels = np.tile(np.arange(1, classes + 1), per_class // 10)
    for i in range(1, 11):  # the release's ten training files
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        (src / f"train_data_batch_{i}").write_bytes(pickle.dumps({"data": data, "labels": labels.tolist()}))
    np.savez(src / "val_data.npz", data=data[: 2 * classes], labels=labels[: 2 * classes])
    convert(src, root / "imagenet", num_classes=classes, progress=lambda _: None)
    return root / "imagenet"


SETUPS = {
    "hard_ash": ["experiment=split_mnist_hard_ash_reduced", "stream.num_tasks=5"],
    "conv_net": ["experiment=continual_imagenet", "stream.num_tasks=2", "stream.train_per_class=250",
                 "stream.test_per_class=50"],
}
"""The torch.func rows: each a preset at its own batch size and optimizer, shortened."""


def throughput(seeds: list[int], base: list[str], out: Path) -> dict:
    """Vectorised vs sequential seeds of the run ``base`` describes."""
    from plasticity_lab.lab.config import compose_config
    from plasticity_lab.lab.loop import run

    vec_runs: list = []
    seq_runs: list = []
    vec = timed(lambda: vec_runs.extend(run(compose_config([*base, f"seeds={seeds}".replace(" ", "")]), out / "vec")))
    seq = timed(lambda: seq_runs.extend(run(compose_config([*base, f"seed={s}"]), out / f"seq_{s}")[0] for s in seeds))
    n = sum(r["examples"] for r in vec_runs)
    # training loop only (summary examples_per_s = examples / time in the training loop): vectorised seeds share that time
    vec_train = n / (vec_runs[0]["examples"] / vec_runs[0]["examples_per_s"])
    seq_train = sum(r["examples"] for r in seq_runs) / sum(r["examples"] / r["examples_per_s"] for r in seq_runs)
    return {"path": vec_runs[0]["step_path"], "vectorised_s": round(vec, 2), "sequential_s": round(seq, 2),
            "wall_speedup": round(seq / vec, 2), "train_ex_per_s": {"vectorised": round(vec_train), "sequential": round(seq_train)},
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


def vmap_peak_memory_mb(seeds: list[int], tasks: int, out: Path, device: str) -> float:
    """Peak memory of a fresh process training a 784-2000-2000-10 Hard ASH net (torch.func path, Adam so that
    every parameter has two state tensors) on ``tasks`` tiny permuted-MNIST tasks: RSS on the CPU,
    CUDA memory allocated on a GPU."""
    overrides = ["wandb.enabled=false", "progress=off", "agent.hidden=[2000,2000]", "activation=hard_ash",
                 "agent.optimizer.name=adam", "agent.optimizer.lr=1e-4", f"stream.num_tasks={tasks}",
                 "stream.examples_per_task=64", "train.batch_size=16", "train.eval_every=50", "train.eval_window=5",
                 "metrics.task_every=50", "metrics.probe_every=0", "metrics.hessian_every=0", f"device={device}",
                 f"seeds={seeds}".replace(" ", ""), f"out_dir={out / f'vmem{len(seeds)}_{tasks}'}"]
    code = ("import resource, sys, torch; from plasticity_lab.lab.cli import main; code = main(['run', *sys.argv[1:]]); "
            "print('PEAK', torch.cuda.max_memory_allocated() / 1024 if torch.cuda.is_available() "
            "else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", code, *overrides], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout.split("PEAK")[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--memory-tasks", type=int, nargs=2, default=[10, 1000])
    parser.add_argument("--skip-memory", action="store_true", help="throughput only (the memory checks take ~5 min)")
    parser.add_argument("--setups", nargs="+", default=["fused", "cbp", *SETUPS], choices=["fused", "cbp", *SETUPS])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per task of the conv_net row")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    result: dict = {"seeds": args.seeds, "threads": torch.get_num_threads(), "device": args.device, "throughput": []}
    with tempfile.TemporaryDirectory() as tmp:
        device = [f"device={args.device}"]
        rows = [(f"fused, batch {b}", [*COMMON, f"stream.num_tasks={args.tasks}", f"stream.examples_per_task={args.examples}",
                                       f"train.batch_size={b}", *device]) for b in args.batch] if "fused" in args.setups else []
        if "cbp" in args.setups:
            rows.append(("fused + continual backprop, batch 1", [*COMMON, f"stream.num_tasks={args.tasks}",
                         f"stream.examples_per_task={args.examples}", "train.batch_size=1", "interventions=[cbp]", *device]))
        for name in [s for s in SETUPS if s in args.setups]:
            extra = [f"data.root={imagenet_like(Path(tmp))}"] if name == "conv_net" else []
            if name == "conv_net":
                extra.append(f"train.epochs={args.epochs}")
            rows.append((name, [*COMMON[:4], *SETUPS[name], *extra, *device]))
        for i, (name, base) in enumerate(rows):  # a short warm-up of each setup, untimed: first-call costs
            warm = [o for o in base if not o.startswith("stream.num_tasks=")]
            throughput(seeds[:2], [*warm, "stream.num_tasks=1"], Path(tmp) / f"warmup{i}")
            r = {"setup": name, **throughput(seeds, base, Path(tmp) / f"row{i}")}
            result["throughput"].append(r)
            t = r["train_ex_per_s"]
            print(f"{name} ({r['path']} path), {args.seeds} seeds: training loop {t['vectorised']} vs {t['sequential']} "
                  f"ex/s = {r['train_speedup']}x; whole runs (incl. evaluation, plots) {r['vectorised_s']:.2f} vs "
                  f"{r['sequential_s']:.2f} s = {r['wall_speedup']}x", flush=True)
        if args.skip_memory:
            print(json.dumps(result))
            return
        by_n = {n: vmap_peak_memory_mb(seeds[:n], 5, Path(tmp), args.device) for n in (1, 2, 4, 8)}
        long = vmap_peak_memory_mb(seeds[:8], 100, Path(tmp), args.device)
        result["vmap_memory"] = {"peak_mb_by_seeds": {n: round(m, 1) for n, m in by_n.items()},
                                 "peak_mb_8_seeds_100_tasks": round(long, 1)}
        print("peak memory, torch.func path (784-2000-2000-10, Adam): " + ", ".join(
            f"{n} seeds {m:.0f} MB" for n, m in by_n.items()) + f" (5 tasks); 8 seeds after 100 tasks {long:.0f} MB",
            flush=True)
        if args.device != "cpu":
            print(json.dumps(result))
            return
        few, many = args.memory_tasks
        t0 = time.perf_counter()
        m_few = peak_memory_mb(seeds, few, Path(tmp))
        m_many = peak_memory_mb(seeds, many, Path(tmp))
        result["memory"] = {"tasks": [few, many], "peak_rss_mb": [round(m_few, 1), round(m_many, 1)],
                            "ratio": round(m_many / m_few, 3), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"peak memory, {args.seeds} fused vectorised seeds: {m_few:.0f} MB after {few} tasks, {m_many:.0f} MB after {many} "
              f"({result['memory']['ratio']}x)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
