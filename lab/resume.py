"""What a resume may change, and how it changes it.

A run resumes with the config it started with (its checkpoint carries it).
Keys that never change what a run computes may differ silently, when
``config.yaml`` was edited or a relaunch's command differs; the number of
tasks may grow; a few keys may change on purpose with
``lab resume DIR key=value``, which applies them (a new learning rate reaches
the optimizer's parameter groups) and records the change in metrics.jsonl and
the summary. Everything else decides what the checkpoint holds (the seed, the
stream, the network, the activation, which interventions run) and is refused.
"""
from __future__ import annotations

from typing import Any, Iterable

from omegaconf import DictConfig

from plasticity_lab.lab.rundir import differences
from plasticity_lab.registry import ConfigError

SILENT = ("out_dir", "progress", "wandb.", "train.threads")
"""Keys that change no number of the run: may differ without a word."""

EXTEND = ("stream.num_tasks",)
"""Keys that may only grow (to at least the tasks trained so far)."""

ON_REQUEST = ("agent.optimizer.", "interventions.", "metrics.", "train.eval_every", "train.eval_window",
              "train.log_every", "train.checkpoint", "train.fast", "train.deferred_updates", "train.cuda_graphs",
              "train.compiled_step", "device", "data.root")
"""Keys ``lab resume DIR key=value`` may change on purpose (applied and recorded)."""

FIXED = ("agent.optimizer.name", "metrics.enabled")
"""Keys under ON_REQUEST prefixes that still decide what the checkpoint holds."""


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def check(old: dict[str, Any], new: dict[str, Any], requested: Iterable[str] = (), tasks_done: int = 0,
          how: str = "lab resume") -> dict[str, tuple[Any, Any]]:
    """The changes from ``old`` to ``new`` that a resume applies: ``{key: (old, new)}``
    (silent ones left out). ConfigError naming the first change a resume may not make."""
    requested = set(requested)
    if set(old.get("interventions") or {}) != set(new.get("interventions") or {}):
        raise ConfigError("interventions", sorted(new.get("interventions") or {}),
                          f"{sorted(old.get('interventions') or {})} as the run started (the checkpoint holds their "
                          "state); start a new run for another set")
    applied = {}
    for key, (before, after) in differences(old, new).items():
        if _under(key, SILENT):
            continue
        if _under(key, EXTEND):
            if not isinstance(after, int) or after < max(tasks_done, 1):
                raise ConfigError(key, after, f"at least {tasks_done} (the tasks already trained)")
        elif not (_under(key, ON_REQUEST) and not _under(key, FIXED)):
            raise ConfigError(key, after, f"{before!r} as the run started: {key} decides what its checkpoint holds, "
                              "so it cannot change on resume (start a new run for another value)")
        elif key not in requested and how == "lab resume":
            raise ConfigError(key, after, f"{before!r} as the run started, or a change asked for on purpose: "
                              f"lab resume DIR {key}={after}")
        elif key not in requested:
            raise ConfigError(key, after, f"{before!r} as the run in out_dir started: choose another out_dir for a new "
                              f"run, or change it on purpose with lab resume DIR {key}={after}")
        applied[key] = (before, after)
    return applied


def with_overrides(saved: DictConfig, overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """``saved`` with ``key=value`` overrides merged in (known keys only); also
    the dotted keys they set (what the user asked to change on purpose)."""
    from plasticity_lab.lab.config import override_saved

    return override_saved(saved, overrides, "the run's config.yaml"), [o.partition("=")[0] for o in overrides]
