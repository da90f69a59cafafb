"""The lines a run prints when it starts: what it is, what it reads, where it
writes, how it computes, and how to resume it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def network_text(cfg: DictConfig, stream: Any, parameters: int) -> str:
    """``mlp 784-100-100-10 relu (89,610 weights), sgd lr 0.1, batch 16``."""
    a = cfg.agent
    if a.network == "mlp":
        shape = "-".join(map(str, [*stream.input_shape, *a.hidden, stream.output_size]))
    else:
        shape = f"{'x'.join(map(str, stream.input_shape))} -> {stream.output_size}"
    extras = [x for x in (("layer norm" if a.layer_norm else ""), ("no biases" if not a.bias else "")) if x]
    return (f"{a.network} {shape} {cfg.activation.name} ({parameters:,} weights{', ' + ', '.join(extras) if extras else ''}), "
            f"{a.optimizer.name} lr {a.optimizer.lr:g}, batch {cfg.train.batch_size}")


def banner(cfg: DictConfig, out: Path, stream: Any, parameters: int, device: Any, threads: Any, fused: bool,
           runs: int) -> str:
    """The start banner."""
    interventions = ", ".join(cfg.interventions) or "none"
    seeds = f"seeds {list(cfg.seeds)} (trained together)" if cfg.get("seeds") is not None else f"seed {cfg.seed}"
    return "\n".join([
        f"lab: {cfg.experiment} · {seeds} · {stream.num_tasks} tasks",
        f"  run dir   {out}",
        f"  data      {stream.name}: {stream.data}",
        f"  network   {network_text(cfg, stream, parameters)}",
        f"  methods   interventions: {interventions}",
        f"  compute   {device}, {threads.threads} thread(s) [{threads.reason}], "
        f"{'fused SGD step' if fused else 'autograd'}"
        f"{(f', {runs} runs in lock-step' + ('' if fused else ' (torch.func.vmap)')) if runs > 1 else ''}",
        f"  stop      Ctrl-C or SIGTERM checkpoints; resume with: lab resume {out}",
    ])
