"""Run configuration: typed schema, Hydra composition, readable errors.

``configs/config.yaml`` composes the schema below with one choice from each
group (``stream``, ``activation``, ``interventions``, ``experiment``) and the
command-line overrides. The ``metrics`` section is the metric tracker's own
parameters (metrics/tracker.py) plus ``enabled``. The ``stream``, ``activation`` and ``interventions``
groups are generated from the registries (a plug-in's parameters and defaults
come from its definition), so registering a plug-in is all it takes to make
``activation=mine activation.p=3`` valid; ``experiment`` presets are YAML.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Dict, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from plasticity_lab.agents.activations import activations
from plasticity_lab.agents.interventions import interventions
from plasticity_lab.metrics.tracker import Tracker
from plasticity_lab.registry import ConfigError, load_plugins, params_of
from plasticity_lab.streams import stream_builders


@dataclass
class OptimizerConfig:
    """``torch.optim`` class by name; other keyword arguments with ``+agent.optimizer.key=value``."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None


@dataclass
class AgentConfig:
    """kind: native (the lab's learner) or avalanche (an Avalanche strategy,
    ``agent=avalanche agent.strategy=ewc``, its parameters under agent.strategy.*).
    network: mlp | conv_net | resnet18 (agents/networks.py registry); hidden:
    widths of the fully connected hidden layers; channels: conv_net's conv layers."""

    kind: str = "native"
    strategy: Any = None
    network: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [100, 100])
    channels: List[int] = field(default_factory=lambda: [32, 64, 128])
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: str = "cross_entropy"
    bias: bool = True
    layer_norm: bool = False


@dataclass
class TrainConfig:
    """batch_size/epochs: per task. eval_every: evaluate every N tasks (the
    last task always). eval_window: evaluate only the last W tasks seen
    (null = all seen tasks). log_every: steps between records (the only
    moment the loop reads numbers back from the device). fast: auto (the
    fused SGD path of agents/fused.py where the run allows it), true
    (require it), false (always autograd). deferred_updates: on the fused
    path, how many examples' weight updates may stay pending as a low-rank
    correction, applied with one matrix product (agents/pending.py: the same
    SGD to float rounding, ~1.4x the steps/s at batch 1 on the paper's net);
    used only when no intervention acts between steps, the net has >= 4M
    weights and the batch is at most a quarter of it (below that it costs
    more than it saves: agents/pending.py ``pays_off``); 0 applies each update
    at once. cuda_graphs: on a GPU, replay the fused step as a CUDA graph
    (agents/cuda_graph.py; it checks itself against the eager step on first
    use; deferred updates are then off). new_head: zero the output layer
    (and its optimizer state) at each task start, Dohare et al.'s "new heads"
    of continual ImageNet (part of that protocol, not an intervention).
    threads: intra-op CPU threads; auto (one for small steps, else the free
    cores shared among a sweep's parallel jobs: lab/threads.py) or a number.
    The summary records the count: results depend on it through rounding."""

    batch_size: int = 16
    epochs: int = 1
    eval_every: int = 1
    eval_window: Optional[int] = None
    log_every: int = 250
    threads: Any = "auto"
    checkpoint: bool = True
    fast: str = "auto"
    deferred_updates: int = 16
    cuda_graphs: bool = True
    new_head: bool = False


@dataclass
class DataConfig:
    """root: the stream's data files (MNIST-format IDX files for the MNIST
    streams; null = the embedded subset); needs_root: the protocol needs the
    full data set, so the embedded subset is refused (paper-scale presets)."""

    root: Optional[str] = None
    needs_root: bool = False


@dataclass
class WandbConfig:
    """mode: auto (online with a login and network, else offline) | online | offline."""

    enabled: bool = True
    project: str = "plasticity-lab"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    job_type: str = "train"
    mode: str = "auto"


@dataclass
class Config:
    experiment: str = "permuted_mnist"
    seed: int = 0
    seeds: Optional[List[int]] = None
    out_dir: Optional[str] = None
    device: str = "cpu"
    plugins: List[str] = field(default_factory=list)
    progress: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    stream: Any = None
    agent: AgentConfig = field(default_factory=AgentConfig)
    activation: Any = None
    interventions: Dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: Any = None
    wandb: WandbConfig = field(default_factory=WandbConfig)


def config_dir() -> str:
    """Where the packaged YAML lives (works for editable and wheel installs)."""
    return str(files("plasticity_lab.configs"))


def register_config_nodes() -> None:
    """Put the schema and one node per registered plug-in in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="metrics", name="default", node={"enabled": True, **params_of(Tracker)})
    for name in stream_builders.names():
        cs.store(group="stream", name=name, node={"name": name, **stream_builders.params(name)})
    for name in activations.names():
        cs.store(group="activation", name=name, node={"name": name, **activations.params(name)})
    from plasticity_lab.lab.avalanche_bridge.strategies import STRATEGIES

    for name, (_, params) in STRATEGIES.items():
        cs.store(group="agent/strategy", name=name, node={"name": name, **params}, package="agent.strategy")
    for name in interventions.names():
        cs.store(group="interventions", name=name, node=interventions.params(name), package=f"interventions.{name}")


def plugin_modules(overrides: list[str]) -> list[str]:
    """The modules named by a ``plugins=[a,b]`` override (loaded before composing)."""
    for o in overrides:
        m = re.fullmatch(r"\+?plugins=\[?([^\]]*)\]?", o)
        if m:
            return [p.strip() for p in m.group(1).split(",") if p.strip()]
    return []


def compose_config(overrides: list[str]) -> DictConfig:
    """The resolved run config for ``overrides`` (``key=value`` strings).

    Loads plug-ins first, then composes; any composition problem becomes a
    ConfigError naming the key, the value and the valid choices.
    """
    check_overrides(overrides)
    load_plugins(plugin_modules(overrides))
    register_config_nodes()
    overrides = [strategy_choice(o) for o in overrides]
    _check_intervention_names(overrides)
    try:
        cfg = _compose(list(overrides))
    except Exception as err:  # Hydra raises several exception types; all are user errors here
        raise _readable(err, overrides) from None
    OmegaConf.resolve(cfg)
    return cfg


def check_overrides(overrides: list[str]) -> None:
    """Each override is ``key=value`` (or Hydra's ``~key``), and no key comes
    twice (the last would silently win)."""
    seen: dict[str, str] = {}
    for o in overrides:
        key, sep, value = o.partition("=")
        name = key.lstrip("+~")
        if not re.fullmatch(r"[A-Za-z_][\w.\-/@]*", name) or not (sep or key.startswith("~")):
            raise ConfigError("override", o, "key=value, e.g. agent.optimizer.lr=0.01 (a key, then =, then the value)")
        if name in seen:
            raise ConfigError(name, [seen[name], value], "one value (it was given twice)")
        seen[name] = value


def strategy_choice(override: str) -> str:
    """``agent.strategy=ewc`` picks the strategy's config node (``agent/strategy=ewc``)."""
    key, sep, value = override.partition("=")
    return f"agent/strategy={value}" if sep and key.lstrip("+") == "agent.strategy" else override


def _check_intervention_names(overrides: list[str]) -> None:
    """Unknown names in ``interventions=[a,b]`` (Hydra's own message is obscure
    while a group has few members)."""
    for o in overrides:
        m = re.fullmatch(r"\+?interventions=\[?([^\]]*)\]?", o)
        for name in (m.group(1).split(",") if m else []):
            if name.strip() and name.strip() not in interventions:
                raise ConfigError("interventions", name.strip(), interventions.names() or ["(none registered)"])


def _compose(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        return compose("config", overrides=overrides)


def _readable(err: Exception, overrides: list[str]) -> ConfigError:
    """Translate a Hydra composition error into a ConfigError."""
    text = str(err)
    missing = re.search(r"Could not find '([^']+)/([^/']+)'", text)
    if missing:
        group, value = missing.groups()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_dir(), version_base=None):
            options = GlobalHydra.instance().config_loader().get_group_options(group)
        return ConfigError(group.replace("/", "."), value, options)
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), None)
        return ConfigError(key, value, f"a known config key ({_siblings(key)})")
    cause = err.__cause__ or err.__context__
    detail = str(cause).splitlines()[0] if cause else ""
    m = re.search(r"override (\S+)", text)
    key, _, value = (m.group(1) if m else "override").partition("=")
    return ConfigError(key, value, detail or text.splitlines()[0])


def _siblings(key: str) -> str:
    """The valid keys beside ``key`` in the default config."""
    parent = key.rpartition(".")[0]
    base = _compose([])
    node = OmegaConf.select(base, parent) if parent else base
    if isinstance(node, DictConfig):
        return "keys here: " + ", ".join(f"{parent + '.' if parent else ''}{k}" for k in node.keys())
    return f"no key {key!r}"
