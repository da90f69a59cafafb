"""A ready W&B workspace for plasticity runs, built with W&B's own
``wandb-workspaces`` API.

:func:`spec` derives the workspace from the metric catalog
(metrics/catalog.py: each metric's ``panel``): online accuracy per task,
dead units, effective rank, weight magnitude, forgetting and the plasticity
probes, each averaged per method (runs grouped by activation, interventions
and optimizer, mean ± standard error over seeds). A metric measured at task
starts is plotted against the task; the others against the global step (a
task-end record and the next task's start record share a step, so the
``task`` field of that W&B row is the new task's: right for a task-start
measurement, one off for a task-end one). ``lab dashboard --dry-run``
prints it; without ``--dry-run`` it is saved to the project (needs a login and
network).
"""
from __future__ import annotations

import re
from typing import Any

from plasticity_lab.metrics.catalog import MetricFacts, shown

GROUP_BY = ["experiment", "activation.name", "interventions", "agent.optimizer.name"]
SECTION_ORDER = ("Plasticity", "Representation", "Forgetting")


def spec(extra: dict[str, MetricFacts] | None = None, logged: set[str] | None = None) -> dict[str, Any]:
    """The workspace: one section per ``panel`` named in the metric catalog
    (and in ``extra``, facts read from runs), one line plot per metric. A
    per-layer metric's plot names the layers the runs logged (``logged``: their
    record keys, e.g. conv1..fc2 for a conv net), or without runs matches
    every layer by regex (``^name/``)."""
    sections: dict[str, list[dict[str, Any]]] = {}
    for name, facts in shown("panel", extra).items():
        if facts.per == "global":
            series: dict[str, Any] = {"y": [name]}
        elif logged:
            series = {"y": sorted(k for k in logged if k.startswith(name + "/"))}
        else:
            series = {"metric_regex": f"^{re.escape(name)}/"}
        x = "task" if facts.when == "task_start" else "Step"
        sections.setdefault(facts.panel, []).append({"title": facts.title, "x": x, **series})
    order = sorted(sections, key=lambda n: (SECTION_ORDER.index(n) if n in SECTION_ORDER else len(SECTION_ORDER), n))
    return {"name": "plasticity-lab", "group_by": GROUP_BY,
            "sections": [{"name": n, "panels": sections[n]} for n in order]}


def build_workspace(project: str, entity: str, layout: dict[str, Any]) -> Any:
    """The ``wandb_workspaces`` Workspace object for ``spec`` (nothing is sent)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = [
        ws.Section(name=s["name"], is_open=True, panels=[
            wr.LinePlot(title=p["title"], x=p["x"], y=list(p.get("y", [])), metric_regex=p.get("metric_regex"),
                        groupby_aggfunc="mean", groupby_rangefunc="stderr")
            for p in s["panels"]])
        for s in layout["sections"]
    ]
    return ws.Workspace(entity=entity, project=project, name=layout["name"], sections=sections,
                        runset_settings=ws.RunsetSettings(groupby=[ws.Config(k) for k in layout["group_by"]]))


def save_workspace(project: str, entity: str, layout: dict[str, Any]) -> str:
    """Save the workspace to W&B; returns its URL."""
    workspace = build_workspace(project, entity, layout).save()
    return getattr(workspace, "url", f"https://wandb.ai/{entity}/{project}")
