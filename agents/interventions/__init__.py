"""Interventions: everything that is not plain backprop.

An intervention is a plain object implementing any of these hooks, named by
the moment the runner calls them (the runner skips hooks an object lacks, so
an unused hook costs nothing per step):

- ``on_run_start(agent)`` — once, before the first task (not on resume)
- ``on_task_start(agent, task) -> dict | None``
- ``before_step(agent, x, y) -> None``
- ``penalty(model) -> Tensor`` — added to the loss before backward
- ``after_step(agent, info: StepInfo) -> dict | None`` — after the optimizer step
- ``on_task_end(agent, task) -> dict | None``

Returned dicts are records (``{"name/with/slashes": value}``) the runner
hands to the sinks. State worth checkpointing goes in ``state_dict`` /
``load_state_dict``. Register one with ``@interventions.register("name")`` on
a dataclass whose fields are its parameters; they are plain objects over
(model, optimizer, features), so your own training loop can call them too.
"""
from plasticity_lab.registry import Registry

interventions = Registry("intervention")

HOOKS = ("on_task_start", "before_step", "penalty", "after_step", "on_task_end")


def run_per_task(intervention: object, per_task: bool) -> None:
    """Keep one of an intervention's two moments: ``on_task_start`` when
    ``per_task``, otherwise ``after_step``; the other becomes None, which the
    runner skips (so the unused one costs nothing per step)."""
    if per_task:
        intervention.after_step = None
    else:
        intervention.on_task_start = None


__all__ = ["interventions", "HOOKS", "run_per_task"]
