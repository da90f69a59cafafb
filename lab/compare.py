"""Load finished runs, group them by method (everything in the config but the
seed) and summarise each group as mean ± standard error over seeds."""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from plasticity_lab.lab.rundir import is_finished, status
from plasticity_lab.metrics.catalog import MetricFacts, facts_from, shown
from plasticity_lab.registry import ConfigError

IGNORED = ("seed", "out_dir", "wandb", "progress", "metrics", "plugins", "device", "train.threads",
           "train.log_every", "train.checkpoint")


@dataclass
class Run:
    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]


@dataclass
class Group:
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(r.summary["seed"] for r in self.runs)

    def values(self, key: str) -> np.ndarray:
        return np.array([r.summary[key] for r in self.runs if r.summary.get(key) is not None], dtype=float)

    def series(self, key: str) -> np.ndarray:
        """(runs, tasks) array of a per-task series (online accuracy), truncated to the shortest run."""
        rows = [r.summary[key] for r in self.runs]
        n = min(len(r) for r in rows)
        return np.array([r[:n] for r in rows], dtype=float)

    def diagnostic(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        """(tasks, (runs, tasks) values) of a tracker series averaged over layers (``stem/<layer>``)."""
        per_run = []
        for r in self.runs:
            diag = r.summary.get("diagnostics", {})
            keys = [k for k in diag if k.startswith(stem + "/")] or ([stem] if stem in diag else [])
            if not keys:
                return np.array([]), np.empty((0, 0))
            tasks = [t for t, _ in diag[keys[0]]]
            per_run.append((tasks, np.mean([[v for _, v in diag[k]] for k in keys], axis=0)))
        n = min(len(t) for t, _ in per_run)
        return np.array(per_run[0][0][:n]), np.array([v[:n] for _, v in per_run])


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    if isinstance(d, dict) and not d and prefix:
        out[prefix] = "none"
    return out


def _short(key: str) -> str:
    """``activation.name`` -> ``activation``, ``agent.optimizer.lr`` -> ``optimizer.lr``."""
    key = key.removeprefix("agent.")
    return key.removesuffix(".name")


def load_runs(dirs: list[Path]) -> list[Run]:
    """Every finished run at or under ``dirs`` (a run directory holds
    metrics.jsonl; it has finished when it holds finished.json). An unfinished
    run among others is left out with one line on stderr saying where it
    stopped; a directory with no finished run is a ConfigError saying what is missing."""
    runs = []
    for d in map(Path, dirs):
        found = sorted({p.parent for p in d.rglob("metrics.jsonl")})
        if not found:
            raise ConfigError("run_dir", str(d), "a run directory (or a folder of them): this one holds no metrics.jsonl"
                              + ("" if d.exists() else " (it does not exist)"))
        finished = [p for p in found if is_finished(p) and (p / "summary.json").is_file()]
        for p in sorted(set(found) - set(finished)):
            if len(found) > 1:
                print(f"lab: left out {p}: {status(p)} (lab resume it to finish it)", file=sys.stderr)
        if not finished:
            raise ConfigError("run_dir", str(d), f"a finished run; {'its runs are' if len(found) > 1 else 'it is'} "
                              f"{status(found[0])}: lab resume {found[0] if len(found) == 1 else d} to finish")
        for p in finished:
            config = yaml.safe_load((p / "config.yaml").read_text()) if (p / "config.yaml").exists() else {}
            runs.append(Run(p, json.loads((p / "summary.json").read_text()), config))
    return runs


def _method_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config that identifies a method: ``interventions`` as the
    list of names, and each plug-in's parameters under its own name."""
    flat = {k: v for k, v in _flat(config).items() if not k.startswith(IGNORED) and not k.startswith("interventions")}
    chosen = config.get("interventions") or {}
    flat["interventions"] = "+".join(chosen) or "none"
    for name, params in chosen.items():
        flat.update(_flat(params or {}, f"interventions.{name}"))
    return flat


def _owner(key: str, flat: dict[str, Any]) -> Any:
    """What a parameter belongs to: the activation's or strategy's name, or the intervention."""
    for parent in ("activation", "agent.strategy"):
        if key.startswith(parent + ".") and not key.endswith(".name"):
            return flat.get(parent + ".name")
    return key.split(".")[1] if key.startswith("interventions.") else None


def group_runs(runs: list[Run]) -> list[Group]:
    """Group by the config keys that differ between runs, the seed excepted.

    A plug-in's parameter shows in a label only where it differs between runs
    of the same plug-in (``activation.z_k`` when two Hard ASH runs differ in it,
    not merely because ReLU has no ``z_k``)."""
    flats = [_method_keys(r.config) for r in runs]
    keys = sorted({k for f in flats for k in f})

    def varies(k: str) -> bool:
        by_owner: dict[str, set[str]] = {}
        for f in flats:
            if k in f:
                by_owner.setdefault(json.dumps(_owner(k, f), default=str), set()).add(json.dumps(f[k], default=str))
        if _owner(k, flats[0]) is None and not k.startswith(("activation.", "agent.strategy.", "interventions.")):
            return len({json.dumps(f.get(k), default=str) for f in flats}) > 1
        return any(len(v) > 1 for v in by_owner.values())

    varying = [k for k in keys if varies(k)]
    groups: dict[str, Group] = {}
    for run, f in zip(runs, flats):
        label = ", ".join(f"{_short(k)}={f[k]}" for k in varying if f.get(k) is not None) or run.summary["experiment"]
        groups.setdefault(label, Group(label)).runs.append(run)
    return list(groups.values())


def declared_metrics(runs: list[Run]) -> dict[str, MetricFacts]:
    """The metric facts the runs' summaries carry (a plug-in's metrics too,
    without importing its code), over the catalog's own."""
    out: dict[str, MetricFacts] = {}
    for run in runs:
        for name, described in run.summary.get("metric_facts", {}).items():
            out[name] = facts_from(described)
    return out


def final_value(run: Run, name: str) -> float:
    """The run's last measurement of metric ``name`` (mean over its layers), NaN if never measured."""
    final = run.summary.get("final_metrics", {})
    values = [v for key, v in final.items() if key == name or key.startswith(name + "/")]
    return float(np.mean(values)) if values else math.nan


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt n; 0 for a single run)."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0


def table(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """One row per group: the run-level scores, then one column per metric the
    catalog (or the runs' summaries) marks with a ``column``."""
    columns = shown("column", declared_metrics([r for g in groups for r in g.runs]))
    head = ["method", "seeds", "avg accuracy", "online acc (first 10%)", "online acc (last 10%)",
            "online loss (first 10%)", "online loss (last 10%)", "forgetting", "BWT",
            *(f.column for f in columns.values())]
    rows = []
    for g in groups:
        acc, loss = g.series("online_accuracy"), g.series("online_loss")
        k = max(1, acc.shape[1] // 10)

        def fmt(values: np.ndarray) -> str:
            m, se = mean_se(values)
            return "-" if math.isnan(m) else f"{m:.3f} ± {se:.3f}"

        rows.append([g.label, str(len(g.runs)), fmt(g.values("avg_accuracy")), fmt(acc[:, :k].mean(1)),
                     fmt(acc[:, -k:].mean(1)), fmt(loss[:, :k].mean(1)), fmt(loss[:, -k:].mean(1)),
                     fmt(g.values("forgetting")), fmt(g.values("bwt")),
                     *(fmt(np.array([final_value(r, name) for r in g.runs])) for name in columns)])
    return head, rows


def render(head: list[str], rows: list[list[str]], fmt: str = "markdown") -> str:
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([head, *rows])
        return buf.getvalue()
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
