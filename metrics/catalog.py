"""The catalog of metrics: every record name the lab writes, with what it
measures, its unit, when it is measured and where it is shown.

A metric the tracker computes is one registered pure function::

    @metrics.register("units/dead_frac", when="task_start", per="layer", every="task_every",
                      inputs={"A": "features"}, title="dead units", unit="fraction of units",
                      plot=True, panel="Representation", column="dead units (final)")
    def dead_fraction(A): ...

``inputs`` maps the function's parameters to what the tracker hands a metric
of that moment (:data:`INPUTS`, checked at registration). ``per="layer"``
records ``<name>/<layer>`` for every hidden layer, ``per="weight_layer"`` for
every weight layer (the head is ``out``). Records other parts of the lab
write (the runner's training and evaluation records, interventions' resets)
are declared with :func:`declare` (metrics/records.py), so that every name has
one entry. The tracker's schedule, ``lab plot``'s diagnostics panels
(``plot``), ``lab compare``'s columns (``column``), the W&B dashboard's panels
(``panel``) and the README's metric table all come from here.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from plasticity_lab.registry import Registry

WHEN = {
    "task_start": "task start, on the probe batch (every `metrics.task_every` tasks)",
    "step": "every `metrics.every_steps` steps",
    "task_end": "task end",
    "log": "every `train.log_every` steps",
    "eval": "task end (`train.eval_every`)",
    "intervention": "when the intervention acts",
}
"""When a metric is recorded, as the README's table says it."""

PER = ("global", "layer", "weight_layer", "task")

CADENCES = ("task_every", "every_steps", "probe_every", "hessian_every")
"""The tracker's parameters (``metrics.*``) a metric's ``every`` may name."""

INPUTS: dict[tuple[str, str], dict[str, str]] = {
    ("task_start", "layer"): {
        "features": "the hidden layer's output on the probe batch, (inputs, units); a conv layer's as "
                    "(inputs x positions, channels)",
        "preactivations": "the layer's input to its activation, shaped as features",
        "activation": "the layer's activation module",
        "singular_values": "singular values of features (float64, computed once per layer)",
        "sparsity_eps": "0 for an activation registered with exact_zeros, else metrics.sparsity_eps",
        "dormant_tau": "metrics.dormant_tau",
    },
    ("task_start", "weight_layer"): {"weight": "the layer's weight tensor"},
    ("step", "global"): {"gradients": "the step's parameter gradients (a list of tensors on the run's device)"},
    ("task_end", "global"): {
        "plasticity": "the plasticity probes of this task's end (metrics/probes.py PlasticityProbes; "
                      "None for a regression stream)",
        "model": "the network", "loss_fn": "the run's loss function",
        "x": "the first 256 training inputs of the task", "y": "their targets",
    },
}
"""What the tracker hands a metric, by (when, per): the names ``inputs`` may use."""


@dataclass(frozen=True)
class MetricFacts:
    """What a metric's registration declares.

    ``title``: its name in plots, panels, tables; ``unit``: what its number
    counts; ``when``: a key of :data:`WHEN`; ``per``: one of :data:`PER`;
    ``every``: the ``metrics.*`` parameter that sets its cadence (0 there turns
    it off); ``inputs``: function parameter -> tracker input (:data:`INPUTS`);
    ``definition``: the README's one-line definition (default: the first line
    of the function's docstring); ``plot``: a panel of ``lab plot``'s
    diagnostics figure; ``panel``: the W&B dashboard section showing it;
    ``column``: the header of its ``lab compare`` column (the run's final
    value, averaged over layers)."""

    title: str
    unit: str
    when: str
    per: str = "global"
    every: Optional[str] = None
    inputs: dict[str, str] = field(default_factory=dict)
    definition: Optional[str] = None
    plot: bool = False
    panel: Optional[str] = None
    column: Optional[str] = None

    def describe(self) -> dict[str, Any]:
        """The facts as plain values (what ``summary.json`` and ``lab list --json`` carry)."""
        return asdict(self)


def _check(name: str, fn: Optional[Callable], facts: MetricFacts) -> None:
    if facts.when not in WHEN:
        raise TypeError(f"metric {name!r}: when={facts.when!r}; expected one of {', '.join(WHEN)}")
    if facts.per not in PER:
        raise TypeError(f"metric {name!r}: per={facts.per!r}; expected one of {', '.join(PER)}")
    if facts.every is not None and facts.every not in CADENCES:
        raise TypeError(f"metric {name!r}: every={facts.every!r}; expected one of {', '.join(CADENCES)}")
    if fn is None:
        if facts.inputs:
            raise TypeError(f"metric {name!r}: a declared record has no inputs")
        return
    available = INPUTS.get((facts.when, facts.per))
    if available is None:
        raise TypeError(f"metric {name!r}: the tracker computes metrics at {sorted(INPUTS)} (when, per), "
                        f"not ({facts.when!r}, {facts.per!r}); records written elsewhere use declare()")
    params = inspect.signature(fn).parameters
    for param, source in facts.inputs.items():
        if param not in params:
            raise TypeError(f"metric {name!r}: inputs names {param!r}, not a parameter of {fn.__name__}")
        if source not in available:
            raise TypeError(f"metric {name!r}: input {source!r} is not one of {', '.join(available)}")
    missing = [p.name for p in params.values() if p.default is p.empty and p.name not in facts.inputs]
    if missing:
        raise TypeError(f"metric {name!r}: parameters {missing} have no input and no default")


metrics = Registry("metric", facts=MetricFacts, check=_check)


def declare(name: str, **facts: Any) -> None:
    """Declare a record another part of the lab writes (nothing for the tracker to compute)."""
    metrics.register(name, **facts)(None)


def definition(name: str) -> str:
    """The README's one-line definition of ``name``."""
    entry = metrics.entry(name)
    return entry.facts.definition or (entry.doc.splitlines()[0].rstrip(".") if entry.doc else entry.facts.title)


def catalog_name(key: str) -> str | None:
    """The catalog entry a record key belongs to (``units/dead_frac/h1`` -> ``units/dead_frac``), or None."""
    if key in metrics:
        return key
    stem, _, last = key.rpartition("/")
    if stem in metrics and metrics.facts(stem).per in ("layer", "weight_layer"):
        return stem
    stem = key.rpartition("_")[0]
    return stem if stem in metrics and metrics.facts(stem).per == "task" else None


def facts_of_records(keys: Any) -> dict[str, dict[str, Any]]:
    """The described facts of every catalog entry among record ``keys`` (what a run's summary carries)."""
    names = {catalog_name(k) for k in keys}
    return {n: metrics.facts(n).describe() for n in sorted(names - {None})}


def scheduled(when: str) -> list[tuple[str, Callable, MetricFacts]]:
    """The metrics the tracker computes at ``when``: (name, function, facts)."""
    out = []
    for name in metrics.names():
        entry = metrics.entry(name)
        if entry.obj is not None and entry.facts.when == when:
            out.append((name, entry.obj, entry.facts))
    return out


def compute(fn: Callable, facts: MetricFacts, source: Any) -> Any:
    """``fn`` called with its declared inputs read from ``source`` (a tracker view)."""
    return fn(**{param: getattr(source, field_name) for param, field_name in facts.inputs.items()})


def record_name(name: str, facts: MetricFacts) -> str:
    """How ``name`` appears in records: ``name/<layer>`` for per-layer metrics."""
    return {"layer": f"{name}/<layer>", "weight_layer": f"{name}/<layer>", "task": f"{name}_<j>"}.get(facts.per, name)


def when_text(facts: MetricFacts) -> str:
    """When ``facts``' metric is recorded, in words (with its cadence parameter)."""
    if facts.when in ("task_start", "step", "log", "eval", "intervention"):
        return WHEN[facts.when]
    return f"task end, every `metrics.{facts.every}` tasks" if facts.every else WHEN[facts.when]


def markdown_table() -> str:
    """The README's metric table, from the catalog."""
    rows = ["| name | definition | unit | when |", "|---|---|---|---|"]
    for name in metrics.names():
        facts = metrics.facts(name)
        cell = definition(name).replace("|", "\\|")
        rows.append(f"| `{record_name(name, facts)}` | {cell} | {facts.unit} | {when_text(facts)} |")
    return "\n".join(rows)


def shown(kind: str, extra: dict[str, MetricFacts] | None = None) -> dict[str, MetricFacts]:
    """Metrics with ``kind`` set ("plot", "panel" or "column"): the catalog's
    and ``extra`` ones (facts read from runs' summaries), in name order."""
    facts = {n: metrics.facts(n) for n in metrics.names()}
    facts.update(extra or {})
    return {n: f for n, f in sorted(facts.items()) if getattr(f, kind)}


def facts_from(described: dict[str, Any]) -> MetricFacts:
    """MetricFacts from their ``describe()`` form (a run's summary.json)."""
    return MetricFacts(**described)
