"""Sweeps off this machine: Hydra's submitit launcher with submitit's real
local executor (there is no SLURM here; each job is its own process, started,
signalled and requeued by submitit as on a cluster), ``lab status``, the SLURM
preset's sbatch script, and a study through Hydra's Optuna sweeper."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plasticity_lab.lab.cli import main
from test_stops import offline_env, records, summary, wait_for
from wandb_records import config as wandb_config
from wandb_records import run_record

QUIET = ["wandb.enabled=false", "progress=off"]
LOCAL = "hydra/launcher=submitit_local"


def lab(*args, cwd, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "plasticity_lab.lab", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_a_2x2_sweep_of_submitit_jobs_lands_in_one_wandb_group_and_compare_and_plot_read_it(tmp_path, capsys):
    done = lab("run", "--multirun", LOCAL, "activation=relu,tanh", "seed=0,1", "progress=off", "agent.hidden=[16]",
               "stream.num_tasks=2", "stream.examples_per_task=256", "hydra.sweep.dir=grid", cwd=tmp_path,
               env=offline_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "4 job(s) under grid: 4 finished, 0 failed" in done.stdout
    grid = tmp_path / "grid"
    # each job ran as a submitit job of its own: its folder holds submitit's result and the job's own output
    logs = sorted((grid / ".submitit").glob("*/*_0_log.out"))
    assert len(logs) == 4 and all("finished; average accuracy" in log.read_text() for log in logs)
    for activation in ("relu", "tanh"):
        for seed in (0, 1):
            job = grid / f"activation={activation},seed={seed}"
            run = run_record(job)
            assert run.run_group == "grid" and sorted(run.tags) == [f"activation={activation}", f"seed={seed}"]
            assert wandb_config(job)["activation"]["name"] == activation
    capsys.readouterr()
    assert main(["compare", str(grid)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| activation=")]
    assert [r.split(" | ")[:3] for r in rows] == [["| activation=relu", "2", "finished"],
                                                 ["| activation=tanh", "2", "finished"]]
    assert main(["plot", str(grid), "--out", str(tmp_path / "figures")]) == 0
    assert list((tmp_path / "figures").glob("*.png"))


GATE = '''
import os, time
from dataclasses import dataclass
from pathlib import Path

from plasticity_lab.agents.interventions import Intervention, interventions


@interventions.register("gate")
@dataclass
class Gate(Intervention):
    """Test-only: at the start of task 2 a run says so ($GATE_DIR/held.<pid>) and waits until
    $GATE_DIR/open exists, so the test acts while the run is surely running; it changes no number."""

    def on_task_start(self, agent, task):
        gate = Path(os.environ["GATE_DIR"])
        if task.id == 1 and not (gate / "open").exists():
            (gate / f"held.{os.getpid()}").write_text("")
            while not (gate / "open").exists():
                time.sleep(0.01)

    def reads_weights_between_steps(self):
        return False
'''

# Three jobs at batch 1, run at once by submitit: one is stopped by SIGTERM (not requeued: a stopped run), one
# is preempted with submitit's own signal (USR2, as submitit's LocalJob._interrupt sends it), requeued and
# finishes, one diverges in its first task. The gate holds the jobs at the start of task 2 while the test
# looks and signals.
PREEMPTED = [*QUIET, "agent.hidden=[16]", "stream.num_tasks=3", "stream.examples_per_task=600", "train.batch_size=1",
             "train.log_every=50", "metrics.probe_every=0", "metrics.hessian_every=0", "plugins=[gate]",
             "interventions=[cbp,gate]", "interventions.cbp.replacement_rate=0.01",
             "interventions.cbp.maturity_threshold=50", "interventions.cbp.accumulate=false"]


@pytest.fixture
def gate_plugin():
    """The gate plug-in, forgotten by this process after the test (its reference run imports it here)."""
    yield GATE
    from plasticity_lab.agents.interventions import interventions

    if "gate" in interventions.names():
        interventions.unregister("gate")
    sys.modules.pop("gate", None)


def status_lines(sweep: Path, capsys) -> dict[str, str]:
    """``lab status SWEEP`` (in this process): each job's line, by its folder."""
    capsys.readouterr()
    assert main(["status", str(sweep)]) == 0
    out = capsys.readouterr().out
    return {**dict(line.strip().split(": ", 1) for line in out.splitlines() if line.startswith("  ")), "": out}


def test_a_preempted_job_is_requeued_and_ends_as_uninterrupted_and_status_tells_every_job(tmp_path, capsys,
                                                                                          monkeypatch, gate_plugin):
    (tmp_path / "gate.py").write_text(gate_plugin)
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv("GATE_DIR", str(gate))
    monkeypatch.chdir(tmp_path)
    sweep = subprocess.Popen([sys.executable, "-m", "plasticity_lab.lab", "run", "--multirun", LOCAL, *PREEMPTED,
                              "agent.optimizer.lr=0.02,0.03,1e30", "hydra.sweep.dir=sweep"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = tmp_path / "sweep"
    stopped, preempted = root / "agent.optimizer.lr=0.02", root / "agent.optimizer.lr=0.03"

    def held(job: Path) -> int | None:
        """The pid of the job's process once it waits at the gate (its .lock names it)."""
        lock = job / ".lock"
        pid = lock.read_text().strip() if lock.is_file() else ""
        return int(pid) if pid and (gate / f"held.{pid}").exists() else None

    wait_for(lambda: held(stopped) and held(preempted), sweep, "both jobs reached the gate")
    shown = status_lines(root, capsys)
    assert shown["agent.optimizer.lr=0.02"].startswith("running"), shown[""]  # held at the gate: surely running
    os.kill(held(stopped), signal.SIGTERM)
    os.kill(held(preempted), signal.SIGUSR2)
    (gate / "open").write_text("")
    out, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 3, err  # the sweep's status: its first failure's (the divergence)

    shown = status_lines(root, capsys)
    assert shown["agent.optimizer.lr=0.03"] == "finished"
    assert shown["agent.optimizer.lr=0.02"] == "stopped at task 2/3 (inside it)"
    # Hydra writes the value 1e30 as 1e+30
    assert shown["agent.optimizer.lr=1e+30"].startswith("failed (exit 3): the training loss became nan")
    assert f"3 job(s) under {root}: 1 finished, 1 failed, 1 stopped (lab resume {root}" in shown[""]

    # the preempted job: checkpointed where it was, handed the signal to submitit, was requeued and resumed
    (log,) = [p for p in (root / ".submitit").glob("*/*_0_log.err") if "SIGUSR2" in p.read_text()]
    text = log.read_text()
    assert "lab: stopped (SIGUSR2) at task 2/3" in text and "SIGUSR2 handed on to the launcher" in text
    assert "resuming" in text and "at task 2/3 (inside it)" in text
    assert main(["run", *PREEMPTED, "agent.optimizer.lr=0.03", "out_dir=whole"]) == 0  # uninterrupted, the gate open
    # the same arithmetic in the same order on one thread each (train.threads=auto at batch 1): exactly equal
    assert summary(preempted) == summary(tmp_path / "whole")
    assert records(preempted / "metrics.jsonl") == records(tmp_path / "whole" / "metrics.jsonl")


def test_the_slurm_preset_renders_an_sbatch_array_with_its_values(tmp_path):
    shown = lab("run", "--multirun", "--cfg", "sbatch", "hydra/launcher=slurm", "seed=0,1,2", "activation=relu,tanh",
                "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1", "hydra.launcher.timeout_min=600",
                "+hydra.launcher.additional_parameters.mail-type=END", "hydra.launcher.setup=[module load cuda]",
                "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    script = shown.stdout
    assert script.startswith("#!/bin/bash")
    for line in ("#SBATCH --array=0-5%6", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=600",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16GB", "#SBATCH --job-name=plasticity-lab",
                 "#SBATCH --mail-type=END", "#SBATCH --signal=USR2@120", "module load cuda"):
        assert line in script.splitlines(), (line, script)
    assert script.rstrip().endswith(f"-m submitit.core._submit {tmp_path / 'sweep'}/.submitit/%j")
    assert not (tmp_path / "sweep").exists()  # nothing submitted, nothing written
    other = lab("run", "--multirun", "seed=0,1", "--cfg", "sbatch", cwd=tmp_path)
    assert other.returncode == 2 and "a SLURM launcher (hydra/launcher=slurm)" in other.stderr


def test_an_optuna_study_of_four_trials_returns_each_job_s_objective(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    done = lab("run", "--multirun", "experiment=tune_cbp", *QUIET, "hydra.sweeper.n_trials=4", "stream.num_tasks=3",
               "stream.examples_per_task=300", "agent.hidden=[16]",
               # ranges where the few steps here do replace units, so that trials differ
               "interventions.cbp.maturity_threshold=int(interval(1,20))",
               "interventions.cbp.replacement_rate=interval(0.01,0.5)", "hydra.sweep.dir=study", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    study = tmp_path / "study"
    jobs = sorted(p for p in study.iterdir() if (p / "summary.json").is_file())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]  # a tuner's trials are named by number
    scores = {}
    for job in jobs:
        s = json.loads((job / "summary.json").read_text())
        scores[job.name] = s["online_accuracy"][-1]  # 3 tasks: the final tenth is the last task
        cbp = yaml.safe_load((job / "config.yaml").read_text())["interventions"]["cbp"]
        assert 1 <= cbp["maturity_threshold"] <= 20 and 0.01 <= cbp["replacement_rate"] <= 0.5
    best = yaml.safe_load((study / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(scores.values())
    status = lab("status", "study", cwd=tmp_path)
    assert "4 job(s) under study: 4 finished, 0 failed" in status.stdout
    assert f"best trial: {best['best_value']} with interventions.cbp." in status.stdout
    # the study lived in its process: a relaunch would sample new trials, so a resume is refused in one line
    again = lab("resume", "study", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "resume its trials one by one" in again.stderr


def test_a_sweep_of_numbered_jobs_resumes(tmp_path, capsys, monkeypatch):
    """Nothing swept: the job folder is the job number (``${hydra.job.num}`` in the saved overrides)."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--multirun", *QUIET, "agent.hidden=[8]", "stream.num_tasks=1", "stream.examples_per_task=64",
                 "hydra.sweep.dir=one"]) == 0
    assert (tmp_path / "one" / "0" / "finished.json").is_file()
    capsys.readouterr()
    assert main(["resume", "one"]) == 0
    out = capsys.readouterr().out
    assert "finished; left as it is" in out and "1 job(s) under one: 1 finished" in out
