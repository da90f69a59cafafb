"""Load finished runs, group them by method (everything in the config but the
seed) and summarise each group as mean ± standard error over seeds (runs
that failed or have not finished are listed with their status, not dropped)."""
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

from plasticity_lab.lab.rundir import FAILED, is_finished, status
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


def load_runs(dirs: list[Path], left_out: list[tuple[Path, str]] | None = None) -> list[Run]:
    """Every finished run at or under ``dirs`` (a run directory holds
    metrics.jsonl, or only failed.json when it failed before training; it has
    finished when it holds finished.json). The others, among finished ones, go
    to ``left_out`` as (directory, status) when given, else to stderr as one
    line each; a directory with no finished run is a ConfigError saying what is missing."""
    from omegaconf import OmegaConf

    from plasticity_lab.lab.config import with_defaults

    runs = []
    for d in map(Path, dirs):
        found = sorted({p.parent for pattern in ("metrics.jsonl", FAILED) for p in d.rglob(pattern)
                        if not p.parent.name.startswith(".")})
        if not found:
            raise ConfigError("run_dir", str(d), "a run directory (or a folder of them): this one holds no metrics.jsonl"
                              + ("" if d.exists() else " (it does not exist)"))
        finished = [p for p in found if is_finished(p) and (p / "summary.json").is_file()]
        if not finished:
            raise ConfigError("run_dir", str(d), f"a finished run; {'its runs are' if len(found) > 1 else 'it is'} "
                              f"{status(found[0])}: lab resume {found[0] if len(found) == 1 else d} to finish")
        for p in sorted(set(found) - set(finished)):
            if left_out is not None:
                left_out.append((p.relative_to(d) if p != d else p, status(p).split("; ")[0]))
            else:
                print(f"lab: left out {p}: {status(p)} (lab resume it to finish it)", file=sys.stderr)
        for p in finished:
            config = yaml.safe_load((p / "config.yaml").read_text()) if (p / "config.yaml").exists() else {}
            if config:  # keys added to the lab since the run was saved read as their defaults
                config = OmegaConf.to_container(with_defaults(config), resolve=True)
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
        label = ", ".join(f"{_short(k)}={f[k]}" for k in varying if f.get(k) is not None) or describe(run)
        groups.setdefault(label, Group(label)).runs.append(run)
    return list(groups.values())


def describe(run: Run) -> str:
    """What a run is, in a few words: experiment, data, activation, optimizer
    and learning rate, interventions (a title for a run that has no other to
    be told apart from)."""
    s, agent = run.summary, run.config.get("agent", {})
    opt = agent.get("optimizer", {})
    data = str(s.get("data", "")).split(" (")[0]
    parts = [s["experiment"], data, s["activation"],
             f"{opt.get('name', '?')} lr {opt.get('lr', '?')}" if opt else "",
             "+".join(s.get("interventions") or []) or "no intervention"]
    return " · ".join(p for p in parts if p)


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
    """Mean and standard error (sample std / sqrt n; NaN for a single run: no spread is measured)."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan


@dataclass(frozen=True)
class Cell:
    """One summary of a group's runs: mean and standard error over them (``n`` runs)."""

    mean: float
    se: float
    n: int

    def text(self) -> str:
        if math.isnan(self.mean):
            return "-"
        return f"{self.mean:.3f}" if math.isnan(self.se) else f"{self.mean:.3f} ± {self.se:.3f}"


def _cell(values: np.ndarray) -> Cell:
    m, se = mean_se(values)
    return Cell(m, se, int(np.sum(~np.isnan(np.asarray(values, dtype=float)))))


def _tenth(g: Group, key: str, last: bool) -> np.ndarray:
    """Each run's mean of a per-task series over its first (or last) 10 % of tasks."""
    series = g.series(key)
    k = max(1, series.shape[1] // 10)
    return (series[:, -k:] if last else series[:, :k]).mean(1)


SCORES = {
    "class": [("avg accuracy", lambda g: g.values("avg_accuracy")),
              ("pooled accuracy", lambda g: g.values("pooled_accuracy")),
              ("online acc (first 10%)", lambda g: _tenth(g, "online_accuracy", False)),
              ("online acc (last 10%)", lambda g: _tenth(g, "online_accuracy", True)),
              ("forgetting", lambda g: g.values("forgetting")), ("BWT", lambda g: g.values("bwt"))],
    "value": [("online sq. error (first 10%)", lambda g: _tenth(g, "online_loss", False)),
              ("online sq. error (last 10%)", lambda g: _tenth(g, "online_loss", True))],
}
"""The run-level columns, per kind of target (classification, regression)."""


def table(groups: list[Group], left_out: list[tuple[Path, str]] = ()) -> tuple[list[str], list[list[Any]]]:
    """One row per group: its status, the run-level scores of its kind of
    target, then one column per metric the catalog (or the runs' summaries)
    marks with a ``column``; then one row per run ``left_out`` with its status.
    Score cells are :class:`Cell` (mean, s.e., n) for :func:`render`."""
    columns = shown("column", declared_metrics([r for g in groups for r in g.runs]))
    targets = [t for t in SCORES if any(r.summary.get("target", "class") == t for g in groups for r in g.runs)]
    scores = [c for t in targets for c in SCORES[t]]
    head = ["method", "seeds", "status", *(name for name, _ in scores), *(f.column for f in columns.values())]
    rows: list[list[Any]] = []
    for g in groups:
        target = g.runs[0].summary.get("target", "class")
        cells = [_cell(f(g)) if (name, f) in SCORES[target] else Cell(math.nan, math.nan, 0) for name, f in scores]
        rows.append([g.label, str(len(g.runs)), "finished", *cells,
                     *(_cell(np.array([final_value(r, name) for r in g.runs])) for name in columns)])
    for path, why in left_out:
        rows.append([str(path), "-", why, *(Cell(math.nan, math.nan, 0) for _ in head[3:])])
    return head, rows


def render(head: list[str], rows: list[list[Any]], fmt: str = "markdown") -> str:
    """Markdown (``mean ± s.e.``; no ± for a single run) or CSV (numbers only:
    a mean and an s.e. column per score, empty where not measured)."""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        cells = [i for i, v in enumerate(rows[0]) if isinstance(v, Cell)] if rows else []
        writer.writerow([h for i, h in enumerate(head) for h in ([f"{h} mean", f"{h} se"] if i in cells else [h])])
        for r in rows:
            writer.writerow([x for v in r for x in ((_number(v.mean), _number(v.se)) if isinstance(v, Cell) else (v,))])
        return buf.getvalue()
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(v.text() if isinstance(v, Cell) else str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _number(x: float) -> str:
    return "" if math.isnan(x) else repr(x)
