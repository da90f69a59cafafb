"""Config -> objects: the stream, the agent and its interventions.

Everything is built before the first training step, so an unknown name or a
bad value fails at once (ConfigError) rather than mid-run.
"""
from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from plasticity_lab.agents import Agent, interventions, networks
from plasticity_lab.agents.hooks import HookPlan
from plasticity_lab.agents.init import as_spec as as_init_spec
from plasticity_lab.agents.interventions import Intervention
from plasticity_lab.agents.networks import NetworkSpec, mlp_parameters
from plasticity_lab.agents.optimizers import make_optimizer
from plasticity_lab.metrics.tracker import Tracker
from plasticity_lab.registry import ConfigError
from plasticity_lab.streams import Stream, stream_builders
from plasticity_lab.streams.sources import DataSource


def as_dict(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError("device", name, "cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "cpu or auto (no CUDA device is visible on this machine)")
    return device


def build_stream(cfg: DictConfig) -> Stream:
    if cfg.data.needs_root and not cfg.data.root:
        from plasticity_lab.streams.download import where_to_get

        raise ConfigError("data.root", None, f"a directory of the full data set: experiment={cfg.experiment} is a "
                          f"paper-scale protocol, not one for the embedded 4,000-image subset; "
                          f"{where_to_get(cfg.stream.name)}")
    params = as_dict(cfg.stream)
    name = params.pop("name")
    cls = stream_builders.get(name)
    stream_builders.check_params(name, params)
    source = DataSource(cfg.data.root, cfg.data.split, cfg.data.split_seed)
    return cls(**params).build(cfg.seed, source)


def build_agent(cfg: DictConfig, stream: Stream, device: torch.device) -> Agent:
    act = as_dict(cfg.activation)
    name = act.pop("name")
    if stream.target == "value" and cfg.agent.loss != "mse":
        raise ConfigError("agent.loss", cfg.agent.loss, f"mse (stream {stream.name} is a regression stream)")
    if stream.target == "class" and cfg.agent.loss == "mse":
        raise ConfigError("agent.loss", "mse", f"cross_entropy (stream {stream.name} has class labels)")
    head_bias = cfg.agent.bias if cfg.agent.head_bias is None else cfg.agent.head_bias
    spec = NetworkSpec(tuple(stream.input_shape), stream.output_size, list(cfg.agent.hidden), name, act, cfg.agent.bias,
                       cfg.agent.layer_norm, list(cfg.agent.channels), as_init_spec(as_dict(cfg.agent.init)), head_bias)
    if cfg.agent.network == "mlp":
        check_memory(cfg, mlp_parameters(spec), device)
    net = networks.get(cfg.agent.network)(spec).to(device)
    opt = as_dict(cfg.agent.optimizer)
    optimizer = make_optimizer(net.parameters(), opt.pop("name"), opt.pop("lr"), **opt)
    if cfg.agent.kind == "avalanche":
        from plasticity_lab.lab.avalanche_bridge.strategies import AvalancheAgent

        return AvalancheAgent(net, optimizer, as_dict(cfg.agent.strategy), cfg.train.batch_size, cfg.train.epochs, device,
                              loss=cfg.agent.loss)
    if cfg.agent.kind != "native":
        raise ConfigError("agent.kind", cfg.agent.kind, ("native", "avalanche"))
    return Agent(net, optimizer, loss=cfg.agent.loss)


def check_memory(cfg: DictConfig, parameters: int, device: torch.device) -> None:
    """Refuse a network whose weights, gradients and optimizer state cannot fit
    the memory the device has free (before allocating it, which would crash)."""
    states = {"sgd": 1 if cfg.agent.optimizer.get("momentum") else 0, "adam": 2, "adamw": 2, "adagrad": 1,
              "rmsprop": 1}.get(str(cfg.agent.optimizer.name).lower(), 2)
    seeds = len(cfg.seeds) if cfg.get("seeds") else 1
    need = parameters * 4 * (2 + states) * seeds
    free = available_memory(device)
    if free is not None and need > free:
        raise ConfigError("agent.hidden", list(cfg.agent.hidden),
                          f"a network that fits: {parameters:,} weights need about {need / 2**30:.1f} GiB "
                          f"(weights, gradients, optimizer state{f', {seeds} seeds' if seeds > 1 else ''}); "
                          f"{device.type} memory free: {free / 2**30:.1f} GiB")


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (a GPU's, or the host's MemAvailable), None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def build_interventions(cfg: DictConfig) -> list[Intervention]:
    """One instance per entry of ``cfg.interventions`` (name -> parameters)."""
    out = []
    for name, params in as_dict(cfg.interventions).items():
        cls = interventions.get(name)
        params = dict(params or {})
        interventions.check_params(name, params)
        try:
            out.append(cls(**params))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"interventions.{name}", params, str(err)) from None
    return out


def build_tracker(cfg: DictConfig) -> Tracker | None:
    """The metric tracker, or None when ``metrics.enabled=false``."""
    params = as_dict(cfg.metrics)
    if not params.pop("enabled"):
        return None
    try:
        return Tracker(**params)
    except (TypeError, ValueError) as err:
        raise ConfigError("metrics", params, str(err)) from None


def use_fast_path(cfg: DictConfig, agent: Agent, plan: HookPlan) -> tuple[Agent, str | None]:
    """The fused-step agent (agents/fused.py) when ``train.fast`` allows and the
    run qualifies; with ``auto``, also the line saying why a run that does not
    qualify trains with autograd (said once the run is sure to start)."""
    from plasticity_lab.agents.fused import FusedAgent, fused_reason

    mode = str(cfg.train.fast).lower()
    if mode not in ("auto", "true", "false"):
        raise ConfigError("train.fast", cfg.train.fast, ("auto", "true", "false"))
    if mode == "false" or cfg.agent.kind != "native":
        return agent, None
    reason = fused_reason(agent, plan)
    if reason is None:
        return FusedAgent.for_plan(agent, plan, cfg.train.batch_size, cfg.train.deferred_updates,
                                   bool(cfg.train.cuda_graphs), bool(cfg.train.compiled_step)), None
    if mode == "true":
        raise ConfigError("train.fast", True, f"a run the fused path supports; this one has {reason}")
    return agent, f"training with autograd: the fused SGD path does not take {reason} (train.fast=auto)"


_said: set[str] = set()


def say_once(message: str) -> None:
    """``message`` on stderr, once per process (a sweep or a group of seeds builds the same run many times)."""
    if message not in _said:
        _said.add(message)
        print(f"lab: {message}", file=sys.stderr, flush=True)


SEED_LIMIT = 2**63
"""Seeds are int64 (torch's generator); numpy's SeedSequence takes any non-negative one below it too."""


def check_train(cfg: DictConfig) -> None:
    """Validate the run-wide keys: the seed, the ``train`` section (positive
    sizes and cadences, threads), progress and W&B mode."""
    if not isinstance(cfg.seed, int) or not 0 <= cfg.seed < SEED_LIMIT:
        raise ConfigError("seed", cfg.seed, "an integer in 0..2**63-1")
    t = cfg.train
    for key in ("batch_size", "epochs", "eval_every", "log_every"):
        if t[key] < 1:
            raise ConfigError(f"train.{key}", t[key], "a positive integer")
    if t.deferred_updates < 0:
        raise ConfigError("train.deferred_updates", t.deferred_updates, "an integer >= 0 (0: apply each update at once)")
    if t.eval_window is not None and t.eval_window < 1:
        raise ConfigError("train.eval_window", t.eval_window, "a positive integer or null (all tasks seen)")
    if cfg.progress not in ("auto", "bar", "lines", "off"):
        raise ConfigError("progress", cfg.progress, ("auto", "bar", "lines", "off"))
    if cfg.wandb.mode not in ("auto", "online", "offline"):
        raise ConfigError("wandb.mode", cfg.wandb.mode, ("auto", "online", "offline"))
