"""A sweep on a SLURM cluster: the sbatch script Hydra's submitit launcher
would submit, shown before anything is submitted (``lab run --multirun
hydra/launcher=slurm ... --cfg sbatch``).

The launcher itself (hydra_submitit_launcher, ``BaseSubmititLauncher.launch``)
builds its submitit executor inline and submits at once, so nothing in it
renders a script without calling sbatch. :func:`sbatch_script` hands the
``hydra.launcher`` keys to submitit's own SLURM executor as ``launch`` does
(``submitit_folder`` and ``max_num_timeout`` to its constructor, the rest to
``update_parameters``, which maps and checks them) and asks it for the text
of the array submission (``map_count`` = the number of jobs, as
``SlurmExecutor._internal_process_submissions`` sets it).
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from plasticity_lab.registry import ConfigError

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def sbatch_script(launcher: DictConfig, jobs: int) -> str:
    """The sbatch script of a sweep of ``jobs`` jobs under the resolved
    ``hydra.launcher`` config ``launcher`` (a SLURM one: ``hydra/launcher=slurm``)."""
    from submitit.slurm.slurm import SlurmExecutor

    class Preview(SlurmExecutor):
        """submitit's SLURM executor on a machine without srun (it refuses to
        start there); only its script text is asked for."""

        @classmethod
        def affinity(cls) -> int:
            return 1

    params: dict[str, Any] = OmegaConf.to_container(launcher, resolve=True)  # type: ignore[assignment]
    if params.pop("_target_", None) != SLURM_LAUNCHER:
        raise ConfigError("hydra/launcher", str(launcher.get("_target_")), "a SLURM launcher (hydra/launcher=slurm) "
                          "for --cfg sbatch")
    executor = Preview(params.pop("submitit_folder"), max_num_timeout=params.pop("max_num_timeout"))
    # Hydra's generic keys (timeout_min, mem_gb, ...) in SLURM's words, as submitit's AutoExecutor maps them
    try:
        executor.update_parameters(**executor._convert_parameters(params))
    except ValueError as err:  # submitit names the keys it does not know, then lists every valid one
        raise ConfigError("hydra.launcher", str(err).splitlines()[0], "the keys of configs/hydra/launcher/slurm.yaml "
                          "and Hydra's SlurmQueueConf (sbatch options not among them go in additional_parameters)") from None
    executor.parameters["map_count"] = jobs
    return executor._make_submission_file_text(executor._submitit_command_str, "preview")
