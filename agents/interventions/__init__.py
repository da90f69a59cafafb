"""Interventions: everything that is not plain backprop.

An intervention is a class deriving from :class:`Intervention`, registered
by name; its dataclass fields are its parameters. It acts at the run's
moments (agents/hooks.py: ``on_run_start``, ``on_task_start``,
``before_step``, ``penalty``, ``after_step``, ``on_task_end``) by overriding
them, returns records (``{"name/with/slashes": value}``) for the sinks, and
declares what it asks of the fused SGD path by overriding
``as_weight_decay`` (a penalty that is SGD weight decay), ``needs_weight_abs_sums``
(reads each step's |W| row/column sums) or ``reads_weights_between_steps``, and
of vectorised seeds by ``drops_optimizer_state`` (drops a whole tensor's state).
Interventions are plain objects over (model, optimizer, features), so your
own training loop can call them too::

    @interventions.register("mine")
    @dataclass
    class Mine(Intervention):
        every: int = 100
        def after_step(self, agent, info): ...
"""
from plasticity_lab.agents.hooks import RunHooks
from plasticity_lab.registry import Registry


class Intervention(RunHooks):
    """The contract of an intervention: the run's moments and the fused path's
    capabilities of :class:`~plasticity_lab.agents.hooks.RunHooks`, defaults off."""


interventions = Registry("intervention", base=Intervention)

__all__ = ["Intervention", "interventions"]
