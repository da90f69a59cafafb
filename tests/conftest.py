"""Shared fixtures: small, real runs composed through the same config path as `lab run`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("WANDB_SILENT", "true")

FASHION = Path("/usr/share/datasets/fashion-mnist")

TINY = ["wandb.enabled=false", "progress=off", "agent.hidden=[32]", "stream.num_tasks=3",
        "stream.examples_per_task=256", "train.log_every=8"]


def latest(overrides: list[str]) -> list[str]:
    """``overrides`` with a key given again keeping its last value (tests add to a base list;
    ``lab run`` itself refuses a key given twice)."""
    by_key = {o.partition("=")[0]: o for o in overrides}
    return list(by_key.values())


@pytest.fixture
def compose():
    from plasticity_lab.lab.config import compose_config

    return lambda overrides: compose_config(latest(overrides))


@pytest.fixture
def tiny_run(tmp_path):
    """Run ``lab run`` in-process with small defaults plus ``overrides``."""
    from plasticity_lab.lab.config import compose_config
    from plasticity_lab.lab.loop import run

    def go(*overrides: str, out: str = "run", base=TINY):
        cfg = compose_config(latest([*base, *overrides]))
        (summary,) = run(cfg, tmp_path / out)
        return summary

    return go


@pytest.fixture
def register_for_test():
    """``add(registry, name, obj, **facts)`` registers ``obj`` for this test only (unregistered after it)."""
    added = []

    def add(registry, name: str, obj, **facts):
        registry.register(name, **facts)(obj)
        added.append((registry, name))
        return obj

    yield add
    for registry, name in added:
        registry.unregister(name)


def run_state(run_dir: Path) -> dict:
    """What the last checkpoint holds for the run in ``run_dir`` (a seed's lives in its group's checkpoint)."""
    import torch

    if (run_dir / "checkpoints" / "last.pt").is_file():
        return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["runs"][0]
    group = torch.load(run_dir.parent / "checkpoints" / "last.pt", weights_only=True)
    return group["runs"][group["config"]["seeds"].index(int(run_dir.name.removeprefix("seed_")))]


def run_weights(run_dir: Path) -> dict:
    """The model weights of the run in ``run_dir`` at its last checkpoint."""
    return run_state(run_dir)["agent"]["model"]


def readme_snippet(heading: str) -> str:
    """The first ```python block after ``heading`` in the README (tests run exactly what it shows)."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    after = text[text.index(heading):]
    start = after.index("```python\n") + len("```python\n")
    return after[start:after.index("```", start)]
