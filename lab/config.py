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
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from plasticity_lab.agents.activations import activations
from plasticity_lab.agents.interventions import interventions
from plasticity_lab.metrics.tracker import Tracker
from plasticity_lab.registry import ConfigError, did_you_mean, load_plugins, params_of
from plasticity_lab.streams import stream_builders


@dataclass
class OptimizerConfig:
    """``torch.optim`` class by name; null values are the optimizer's own
    defaults (``initial_accumulator_value`` is Adagrad's, ``eps`` any that
    takes one); other keyword arguments with ``+agent.optimizer.key=value``;
    preset values: ``agent/optimizer=adagrad_keskinen``."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None
    initial_accumulator_value: Optional[float] = None
    eps: Optional[float] = None


@dataclass
class InitConfig:
    """Weight init per role (agents/init.py): hidden/head: a scheme
    (kaiming_uniform, kaiming_normal, he_normal, lecun_normal, xavier_uniform,
    xavier_normal, orthogonal, pytorch; null: the network's own: Dohare et
    al.'s Kaiming uniform for mlp, PyTorch's for conv_net, torchvision's for
    resnet18); hidden_gain/head_gain: null = the scheme's default (the
    activation's gain for Kaiming and orthogonal hidden layers, 1 for the
    head); bias: zero | pytorch (null: the network's own)."""

    hidden: Optional[str] = None
    head: Optional[str] = None
    hidden_gain: Optional[float] = None
    head_gain: Optional[float] = None
    bias: Optional[str] = None


@dataclass
class AgentConfig:
    """kind: native (the lab's learner) or avalanche (an Avalanche strategy,
    ``agent=avalanche agent.strategy=ewc``, its parameters under agent.strategy.*).
    network: mlp | conv_net | resnet18 (agents/networks.py registry); hidden:
    widths of the fully connected hidden layers; channels: conv_net's conv layers;
    bias: biases in the hidden layers; head_bias: in the output layer (null:
    as ``bias``); init: the weight init (:class:`InitConfig`)."""

    kind: str = "native"
    strategy: Any = None
    network: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [100, 100])
    channels: List[int] = field(default_factory=lambda: [32, 64, 128])
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: str = "cross_entropy"
    bias: bool = True
    head_bias: Optional[bool] = None
    layer_norm: bool = False
    init: InitConfig = field(default_factory=InitConfig)


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
    use; deferred updates are then off). compiled_step: on the CPU, run the
    fused batch-1 step of every seed as one compiled call where it applies
    (agents/compiled_step.py: the same SGD to float rounding; ~4x the steps/s
    on small nets); false keeps PyTorch ops. new_head: zero the output layer
    (and its optimizer state) at each task start, Dohare et al.'s "new heads"
    of continual ImageNet (part of that protocol, not an intervention).
    threads: intra-op CPU threads; auto (one for small steps, else the free
    cores shared among a sweep's parallel jobs: lab/threads.py) or a number.
    The summary records the count: results depend on it through rounding.
    drop_last: skip each epoch's last batch when it is smaller than batch_size
    (as ``DataLoader(drop_last=True)``; some authors' code trains so)."""

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
    compiled_step: bool = True
    new_head: bool = False
    drop_last: bool = False


@dataclass
class DataConfig:
    """root: the stream's data files (MNIST-format IDX files for the MNIST
    streams; null = the embedded subset); needs_root: the protocol needs the
    full data set, so the embedded subset is refused (paper-scale presets);
    split, split_seed: how the embedded subset's 5,000 images are split into
    4,000 train / 1,000 test (shuffled | stratified; streams/sources.py DataSource)."""

    root: Optional[str] = None
    needs_root: bool = False
    split: str = "shuffled"
    split_seed: int = 0


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


@dataclass(frozen=True)
class ConfigSource:
    """Where the primary config comes from (Hydra's ``--config-dir`` and
    ``--config-name``): the lab's packaged ``config``, or ``name`` in a user's
    ``directory``, with the lab's own configs on the search path behind it (so
    the user's folder may add ``experiment/*.yaml`` presets, or a primary
    config whose defaults start from the lab's ``config``)."""

    directory: Optional[str] = None
    name: str = "config"

    def path(self) -> str:
        """The folder Hydra starts from (the one holding the primary config)."""
        if self.directory and self.name != "config":
            return str(Path(self.directory).expanduser().resolve())
        return config_dir()

    def overrides(self) -> list[str]:
        """The other folder, on Hydra's search path (a primary config is only found in the first)."""
        if not self.directory:
            return []
        if self.name != "config":
            return ["hydra.searchpath=[pkg://plasticity_lab.configs]"]
        return [f"hydra.searchpath=[file://{Path(self.directory).expanduser().resolve()}]"]

    def check(self) -> None:
        if self.directory and not Path(self.directory).expanduser().is_dir():
            raise ConfigError("--config-dir", self.directory, "an existing directory of YAML configs")
        if self.directory and self.name == "config" and (Path(self.directory).expanduser() / "config.yaml").is_file():
            raise ConfigError("--config-dir", self.directory, "a folder whose primary config is not named config.yaml "
                              "(the lab's own config.yaml would hide it): rename it and pass --config-name NAME")
        folder = Path(self.directory).expanduser() if self.directory else Path(config_dir())
        names = sorted({p.stem for p in folder.glob("*.yaml")} | {"config"})
        if self.name not in names:
            raise ConfigError("--config-name", self.name, names)


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


def compose_config(overrides: list[str], source: ConfigSource = ConfigSource()) -> DictConfig:
    """The resolved run config for ``overrides`` (``key=value`` strings).

    Loads plug-ins first, then composes; any composition problem becomes a
    ConfigError naming the key, the value and the valid choices.
    """
    check_overrides(overrides)
    source.check()
    load_plugins(plugin_modules(overrides))
    register_config_nodes()
    overrides = [strategy_choice(o) for o in overrides]
    _check_intervention_names(overrides)
    try:
        cfg = _compose(list(overrides), source)
    except Exception as err:  # Hydra raises several exception types; all are user errors here
        raise _readable(err, overrides, source) from None
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


def with_defaults(saved: Any) -> DictConfig:
    """A saved resolved config (a dict or DictConfig) on top of the schema's
    defaults: a run saved by an earlier version of the lab lacks the keys added
    since, and reads as if it had their defaults (which reproduce what it did)."""
    container = OmegaConf.to_container(saved, resolve=True) if isinstance(saved, DictConfig) else dict(saved)
    base = OmegaConf.structured(Config)
    OmegaConf.set_struct(base, False)
    return OmegaConf.merge(base, container)


def override_saved(saved: DictConfig, overrides: list[str], where: str) -> DictConfig:
    """A copy of ``saved`` (a run's resolved config.yaml, read from ``where``)
    with ``key=value`` overrides applied, their values read by Hydra's override
    grammar as ``lab run`` reads them (``progress=off`` stays the word "off",
    not YAML's false); only keys the saved config has (a typo gets the closest)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from plasticity_lab.lab.rundir import flat

    check_overrides(overrides)
    merged = with_defaults(saved)
    known = list(flat(OmegaConf.to_container(merged)))
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:  # Hydra's grammar error: name the override
        raise ConfigError("override", overrides, str(err).splitlines()[0]) from None
    for o in parsed:
        key = o.key_or_group
        if o.is_sweep_override():
            raise ConfigError(key, o.input_line.partition("=")[2], "one value (a sweep is lab run --multirun)")
        if key not in known:
            raise ConfigError(key, o.value(), f"a key of {where}" + did_you_mean(key, known))
        value = o.value()
        if key == "interventions" and isinstance(value, list):  # names, as lab run takes them: each with its defaults
            for name in value:
                if name not in interventions:
                    raise ConfigError("interventions", name, interventions.names())
            value = {name: interventions.params(name) for name in value}
        try:
            OmegaConf.update(merged, key, value, merge=False)
            OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(merged))  # the schema's types
        except Exception as err:  # OmegaConf's validation errors: one line naming the key
            expected = str(err).splitlines()[0]
            if isinstance(value, (int, float)) and "List" in expected:
                expected = f"a list like [{value}]"
            raise ConfigError(key, value, expected) from None
    return merged


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


def _compose(overrides: list[str], source: ConfigSource = ConfigSource(), with_hydra: bool = False) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=source.path(), version_base=None):
        return compose(source.name, overrides=[*source.overrides(), *overrides], return_hydra_config=with_hydra)


def compose_hydra(overrides: list[str], source: ConfigSource = ConfigSource()) -> DictConfig:
    """Hydra's own config (``hydra.*``: launcher, sweeper, sweep dir) for
    ``overrides`` (no sweep values: one job's), validated as compose_config does."""
    compose_config(overrides, source)
    return _compose([strategy_choice(o) for o in overrides], source, with_hydra=True).hydra


def _readable(err: Exception, overrides: list[str], source: ConfigSource = ConfigSource()) -> ConfigError:
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
        others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        return ConfigError(key, value, _unknown_key(key, others, source))
    cause = err.__cause__ or err.__context__
    detail = str(cause).splitlines()[0] if cause else ""
    m = re.search(r"override (\S+)", text)
    key, _, value = (m.group(1) if m else "override").partition("=")
    if "is not a ListConfig, list or tuple" in detail:
        return ConfigError(key, value, f"a list like [{value}]")
    return ConfigError(key, value, detail or text.splitlines()[0])


def _unknown_key(key: str, others: list[str], source: ConfigSource) -> str:
    """What to say about an unknown ``key``: the keys beside it in the config
    the other overrides compose (so ``activation=elephant activation.dd=4``
    lists elephant's own parameters), the closest one, or that an
    intervention's parameter needs the intervention chosen."""
    parent = key.rpartition(".")[0]
    try:
        base = _compose(others, source)
    except Exception:  # the other overrides have problems of their own: fall back to the defaults
        base = _compose([], source)
    parts = key.split(".")
    if parts[0] == "interventions" and len(parts) > 2 and parts[1] not in (base.interventions or {}):
        if parts[1] not in interventions:
            return (f"an intervention's parameter; {parts[1]!r} is none of: {', '.join(interventions.names())}"
                    + did_you_mean(parts[1], interventions.names()))
        return (f"{parts[1]} among the run's interventions first: add interventions=[{parts[1]}] "
                f"(chosen now: {list(base.interventions) or 'none'})")
    node = OmegaConf.select(base, parent) if parent else base
    if not isinstance(node, DictConfig):
        grand = parent.rpartition(".")[0]
        above = OmegaConf.select(base, grand) if grand else base
        sections = [f"{grand + '.' if grand else ''}{k}" for k in above.keys()] if isinstance(above, DictConfig) else []
        return f"a known config key (there is no {parent!r} section)" + did_you_mean(parent, sections)
    siblings = [f"{parent + '.' if parent else ''}{k}" for k in node.keys()]
    return "a known config key (keys here: " + ", ".join(siblings) + ")" + did_you_mean(key, siblings)
