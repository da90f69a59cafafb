"""A ready W&B workspace for plasticity runs, built with W&B's own
``wandb-workspaces`` API.

``SPEC`` is the single definition: panels of online accuracy per task, dead
units, effective rank, weight magnitude, forgetting and the plasticity probe,
each averaged per method (runs grouped by activation, interventions and
optimizer, mean ± standard error over seeds), against the global step (a
task-end record and the next task's start record share a step, so the
``task`` field of that W&B row is the new task's). ``lab dashboard --dry-run``
prints it; without ``--dry-run`` it is saved to the project (needs a login and
network).
"""
from __future__ import annotations

from typing import Any

GROUP_BY = ["experiment", "activation.name", "interventions", "agent.optimizer.name"]
LAYERS = ("h1", "h2", "h3")

SPEC: dict[str, Any] = {
    "name": "plasticity-lab",
    "group_by": GROUP_BY,
    "sections": [
        {"name": "Plasticity", "panels": [
            {"title": "online accuracy per task", "x": "Step", "y": ["train/task_online_acc"]},
            {"title": "plasticity remaining (probe accuracy / fresh net's)", "x": "Step", "y": ["plasticity/probe_remaining"]},
            {"title": "plasticity probe accuracy", "x": "Step", "y": ["plasticity/probe_acc"]},
        ]},
        {"name": "Representation", "panels": [
            {"title": "dead units", "x": "Step", "y": [f"units/dead_frac/{l}" for l in LAYERS]},
            {"title": "effective rank", "x": "Step", "y": [f"rank/effective/{l}" for l in LAYERS]},
            {"title": "average weight magnitude", "x": "Step", "y": [f"weights/mean_abs/{l}" for l in (*LAYERS, "out")]},
        ]},
        {"name": "Forgetting", "panels": [
            {"title": "forgetting (Chaudhry)", "x": "Step", "y": ["eval/forgetting"]},
            {"title": "average test accuracy on seen tasks", "x": "Step", "y": ["eval/avg_accuracy"]},
            {"title": "backward transfer", "x": "Step", "y": ["eval/bwt"]},
        ]},
    ],
}


def build_workspace(project: str, entity: str, spec: dict[str, Any] = SPEC) -> Any:
    """The ``wandb_workspaces`` Workspace object for ``spec`` (nothing is sent)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = [
        ws.Section(name=s["name"], is_open=True, panels=[
            wr.LinePlot(title=p["title"], x=p["x"], y=list(p["y"]), groupby_aggfunc="mean", groupby_rangefunc="stderr")
            for p in s["panels"]])
        for s in spec["sections"]
    ]
    return ws.Workspace(entity=entity, project=project, name=spec["name"], sections=sections,
                        runset_settings=ws.RunsetSettings(groupby=[ws.Config(k) for k in spec["group_by"]]))


def save_workspace(project: str, entity: str) -> str:
    """Save the workspace to W&B; returns its URL."""
    workspace = build_workspace(project, entity).save()
    return getattr(workspace, "url", f"https://wandb.ai/{entity}/{project}")
