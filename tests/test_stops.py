"""Runs that stop and resume: signals, kills at chosen moments, relaunches,
edits, foreign files. Real subprocesses, real signals, real files; every
resumed run is compared with the same run uninterrupted."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import latest
from wandb_records import history

VOLATILE = {"wall_time_s", "examples_per_s", "plots", "out_dir", "wandb_sync", "resumes", "provenance"}  # provenance: when and by which processes, not what
QUIET = ["wandb.enabled=false", "progress=off"]

KILLER = '''
import os, signal
from dataclasses import dataclass

from plasticity_lab.agents.interventions import Intervention, interventions

CALLS = {"start": 0, "end": 0, "step": 0}


def _maybe(moment):
    CALLS[moment] += 1
    if os.environ.get("KILL_AT") == f"{moment}:{CALLS[moment]}":
        os.kill(os.getpid(), signal.SIGKILL)


@interventions.register("kill_at")
@dataclass
class KillAt(Intervention):
    """Test-only: SIGKILLs its own process at the n-th call of a moment, as $KILL_AT says ("end:5")."""

    def on_task_start(self, agent, task):
        _maybe("start")

    def on_task_end(self, agent, task):
        _maybe("end")

    def after_step(self, agent, info):
        _maybe("step")

    def reads_weights_between_steps(self):
        return False
'''


def lab(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "plasticity_lab.lab", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)


def lines(path: Path) -> list[dict]:
    """The complete records written so far (a line cut by a kill has no newline)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines()[: text.count("\n")]]


def records(path: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock figures (they differ between any two runs)."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in lines(path)]


def summary(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in VOLATILE}


def offline_env(tmp_path: Path) -> dict:
    env = {**os.environ, "HOME": str(tmp_path), "NETRC": str(tmp_path / "no-netrc"), "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    return env


def wait_for(predicate, process, what: str):
    """Poll until ``predicate()`` holds (a logged event), failing if the process ends first
    (between two looks, wait on the process itself: its end is an event too)."""
    while not predicate():
        try:
            process.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"the run ended before {what}")


# --- signals ------------------------------------------------------------------------------------------------

SINGLE = [*QUIET, "agent.hidden=[64]", "stream.num_tasks=3", "stream.examples_per_task=1000", "train.batch_size=1",
          "train.log_every=100", "interventions=[cbp]", "interventions.cbp.replacement_rate=0.01",
          "interventions.cbp.maturity_threshold=50", "interventions.cbp.accumulate=false", "metrics.probe_every=2"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("whole")
    done = lab("run", *SINGLE, "out_dir=whole", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd / "whole"


# SIGINT sets the same flag (test_a_second_ctrl_c_stops_at_once); SIGUSR2 goes through submitit in test_cluster.py
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_mid_task_checkpoints_there_and_the_resume_ends_as_uninterrupted(sig, uninterrupted, tmp_path):
    victim = subprocess.Popen([sys.executable, "-m", "plasticity_lab.lab", "run", *SINGLE, "out_dir=cut"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "cut" / "metrics.jsonl"
    # the event: a training record of task 2 (of its 1,000 steps, every 100): the run is inside task 2
    wait_for(lambda: any(r["task"] == 2 and "train/loss" in r for r in lines(log)), victim, "task 2")
    victim.send_signal(sig)
    _, err = victim.communicate(timeout=300)
    assert victim.returncode == 75, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"lab: stopped ({sig.name}) at task 3/3, step ") and last.endswith("resume with: lab resume cut")
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["next_task"] == 2 and ckpt["position"]["batch"] > 0  # checkpointed inside task 2, where it stopped
    assert not (tmp_path / "cut" / "finished.json").exists()

    resumed = lab("resume", "cut", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming cut at task 3/3 (inside it)" in resumed.stderr
    assert summary(tmp_path / "cut") == summary(uninterrupted)  # the same process arithmetic: exactly equal
    assert records(tmp_path / "cut" / "metrics.jsonl") == records(uninterrupted / "metrics.jsonl")
    assert (tmp_path / "cut" / "finished.json").is_file()


def test_a_second_ctrl_c_stops_at_once():
    from plasticity_lab.lab.stop import StopRequest

    stop = StopRequest().install()
    try:
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        stop.restore()


@pytest.fixture
def signaller(register_for_test):
    """A test intervention that sends its own process SIGUSR1 once, after step ``at``."""
    from dataclasses import dataclass

    from plasticity_lab.agents.interventions import Intervention, interventions

    fired = []

    @dataclass
    class SignalAt(Intervention):
        at: int = 0
        steps: int = 0

        def after_step(self, agent, info):
            self.steps += 1
            if self.steps == self.at and not fired:
                fired.append(self.steps)
                os.kill(os.getpid(), signal.SIGUSR1)

        def reads_weights_between_steps(self):
            return False  # it only counts: updates may stay deferred

    register_for_test(interventions, "signal_at_for_test", SignalAt)
    return fired


def test_a_stop_with_deferred_updates_pending_resumes_to_the_same_weights(signaller, compose, tmp_path, monkeypatch):
    """At batch 1 with deferred updates the checkpoint keeps the stored weights and
    the pending corrections apart, so the resumed run computes exactly what it would have."""
    from conftest import run_weights
    from plasticity_lab.lab.loop import run
    from plasticity_lab.lab.stop import Stopped

    monkeypatch.setattr("plasticity_lab.agents.pending.MIN_WEIGHTS", 0)
    base = [*QUIET, "agent.hidden=[32,16]", "stream.num_tasks=3", "stream.examples_per_task=200", "train.batch_size=1",
            "interventions=[signal_at_for_test]", "metrics.probe_every=0", "metrics.hessian_every=0"]
    (whole,) = run(compose([*base, "interventions.signal_at_for_test.at=0"]), tmp_path / "whole")
    with pytest.raises(Stopped, match=r"stopped \(SIGUSR1\) at task 2/3"):
        run(compose([*base, "interventions.signal_at_for_test.at=250"]), tmp_path / "cut")
    assert signaller == [250]
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    # asked at task 2's 50th step (deferred updates flush at each task's end, then every 16 steps): 2 pending
    assert ckpt["next_task"] == 1 and ckpt["position"]["batch"] == 50
    assert ckpt["runs"][0]["agent"]["pending"]["count"] == 2
    (cut,) = run(compose([*base, "interventions.signal_at_for_test.at=250"]), tmp_path / "cut", resume=True)
    assert whole["deferred_updates"] == cut["deferred_updates"] == 16
    for k, v in run_weights(tmp_path / "whole").items():
        assert torch.equal(v, run_weights(tmp_path / "cut")[k]), k
    assert cut["online_loss"] == whole["online_loss"]


# --- kills at chosen moments, a group of seeds, W&B ------------------------------------------------------------

GROUP = [*QUIET, "plugins=[killer]", "interventions=[kill_at,cbp]", "interventions.cbp.replacement_rate=0.02",
         "interventions.cbp.maturity_threshold=5", "seeds=[0,1,2]", "stream.num_tasks=4", "stream.examples_per_task=160",
         "agent.hidden=[32]", "train.log_every=4", "metrics.probe_every=2", "metrics.hessian_every=0"]
KILLS = [
    "end:2",    # task 1: seed 0 ended, seed 1 ending; no checkpoint yet (the restart starts over)
    "end:4",    # task 2, seed 0 ending; task 1's checkpoint written
    "start:2",  # between seed 0's and seed 1's start of task 2
    "end:6",    # task 3 ended for seeds 0 and 1, not 2; its checkpoint not yet written
    "step:40",  # inside task 4 (3 seeds a step: the 14th step), seed 0's hook
    "start:1",  # at once, at the resumed task's start
]


def kill_and_resume(tmp_path: Path, args: list[str], points: list[str], env: dict | None = None) -> None:
    """``lab run`` killed at ``points[0]``, then resumed and killed at each next point, then resumed to the end."""
    env = env or dict(os.environ)
    killed = lab("run", *args, "out_dir=cut", cwd=tmp_path, env={**env, "KILL_AT": points[0]})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    for point in points[1:]:
        killed = lab("resume", "cut", "--trust-plugins", cwd=tmp_path, env={**env, "KILL_AT": point})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
    done = lab("resume", "cut", "--trust-plugins", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow  # ~1 min of subprocesses; the default suite resumes stopped groups in-process (test_seeds, test_vmapped)
def test_a_group_killed_at_many_moments_resumes_as_a_group_to_the_uninterrupted_end(tmp_path):
    """Six SIGKILLs of a 3-seed group (between seeds' task ends and starts,
    before and after checkpoints, mid-task), each resumed: every seed ends as
    in the uninterrupted group."""
    (tmp_path / "killer.py").write_text(KILLER)
    whole = lab("run", *GROUP, "out_dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    kill_and_resume(tmp_path, GROUP, KILLS)
    for s in (0, 1, 2):
        cut, ref = tmp_path / f"cut/seed_{s}", tmp_path / f"whole/seed_{s}"
        assert summary(cut) == summary(ref), s
        assert records(cut / "metrics.jsonl") == records(ref / "metrics.jsonl"), s
    assert (tmp_path / "cut" / "finished.json").is_file()


def test_the_wandb_run_holds_every_record_once_after_three_kills(tmp_path):
    """W&B offline: each killed process leaves a segment that may miss what it
    had not flushed; the finished run's W&B files hold metrics.jsonl, every
    record exactly once, under one run id."""
    (tmp_path / "killer.py").write_text(KILLER)
    args = latest([*QUIET, "wandb.enabled=true", "plugins=[killer]", "interventions=[kill_at]", "stream.num_tasks=4",
                   "stream.examples_per_task=320", "agent.hidden=[16]", "train.log_every=5"])
    # a kill after a task's last step, one mid-task, one at a task's start (each leaves another W&B segment)
    kill_and_resume(tmp_path, args, ["end:1", "step:15", "start:2"], offline_env(tmp_path))
    cut = tmp_path / "cut"
    assert len(list((cut / "wandb").glob("offline-run-*"))) == 1
    # the records of one step share a row (the last one's task field winning, as W&B merges them); the
    # accuracy matrix is logged besides
    logged = [((row["_step"], k), v) for row in history(cut / "wandb") for k, v in row.items()
              if not k.startswith(("_", "eval/acc_matrix"))]
    expected: dict[tuple, object] = {}
    for r in lines(cut / "metrics.jsonl"):
        expected.update({(r["step"], k): v for k, v in r.items() if k != "step"})
    assert sorted(k for k, _ in logged) == sorted(expected)  # each (step, name) exactly once
    assert dict(logged) == pytest.approx(expected)
    sync = json.loads((cut / "summary.json").read_text())["wandb_sync"]  # the hint names that one run
    assert sync == f"wandb sync cut/wandb/{next((cut / 'wandb').glob('offline-run-*')).name}"


# --- the run directory: relaunch, lock, edits, foreign files -------------------------------------------------

TINY = [*QUIET, "agent.hidden=[16]", "stream.num_tasks=3", "stream.examples_per_task=1500", "train.batch_size=1",
        "train.log_every=100", "metrics.probe_every=0", "metrics.hessian_every=0"]


def start_and_kill_in_task(cwd: Path, out: str, task: int = 1) -> None:
    victim = subprocess.Popen([sys.executable, "-m", "plasticity_lab.lab", "run", *TINY, f"out_dir={out}"], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = cwd / out / "metrics.jsonl"
    wait_for(lambda: any(r["task"] == task and "train/loss" in r for r in lines(log)), victim, f"task {task}")
    victim.kill()
    victim.wait()


def test_relaunching_the_same_command_resumes_and_a_finished_or_other_run_is_refused(tmp_path, capsys, monkeypatch):
    from plasticity_lab.lab.cli import main

    reference = lab("run", *TINY, "out_dir=ref", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    start_and_kill_in_task(tmp_path, "cut")
    again = lab("run", *TINY, "out_dir=cut", cwd=tmp_path)  # what a requeued cluster job does
    assert again.returncode == 0 and "resuming cut at task 2/3 (at its start)" in again.stderr
    assert summary(tmp_path / "cut") == summary(tmp_path / "ref")
    assert records(tmp_path / "cut" / "metrics.jsonl") == records(tmp_path / "ref" / "metrics.jsonl")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["run", *TINY, "out_dir=cut"]) == 2
    assert "this one has finished" in capsys.readouterr().err
    start_and_kill_in_task(tmp_path, "other")
    assert main(["run", *TINY, "seed=5", "out_dir=other"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed=5" in err and "0 as the run" in err  # names the first key that differs
    assert main(["run", *latest([*TINY, "progress=lines"]), "out_dir=other"]) == 0  # changes no number: resumes


def test_two_processes_never_write_one_run_directory(tmp_path):
    long = latest([*TINY, "stream.num_tasks=1000", "out_dir=run"])  # minutes: still running when the second comes
    first = subprocess.Popen([sys.executable, "-m", "plasticity_lab.lab", "run", *long], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: bool(lines(tmp_path / "run" / "metrics.jsonl")), first, "its first record")
    second = lab("run", *long, cwd=tmp_path)
    first.kill()
    first.wait()
    assert second.returncode == 2 and second.stderr.count("\n") == 1
    assert f"lab process {first.pid} holds its lock" in second.stderr


def test_resume_refuses_edits_it_cannot_honour_and_applies_those_asked_for(tmp_path, capsys, monkeypatch):
    from plasticity_lab.lab.cli import main

    start_and_kill_in_task(tmp_path, "cut")
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "cut" / "config.yaml"
    text = config.read_text()

    def refused(*args: str) -> str:
        capsys.readouterr()
        assert main(["resume", "cut", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    config.write_text(text.replace("lr: 0.1", "lr: 0.05"))
    assert "lab resume DIR agent.optimizer.lr=0.05" in refused()
    config.write_text(text)
    assert "seed decides what its checkpoint holds" in refused("seed=3")
    assert "interventions" in refused("interventions=[l2]")
    config.write_text(text.replace("project: plasticity-lab", "project: renamed"))  # changes no number: silent
    assert main(["resume", "cut", "agent.optimizer.lr=0.05", "stream.num_tasks=4"]) == 0
    s = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert s["tasks_trained"] == 4
    assert s["resumes"][0]["changes"] == {"agent.optimizer.lr": [0.1, 0.05], "stream.num_tasks": [3, 4]}
    assert main(["resume", "cut", "stream.num_tasks=5"]) == 0  # a finished run extends
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["tasks_trained"] == 5
    capsys.readouterr()
    assert main(["resume", "cut"]) == 0 and "already finished" in capsys.readouterr().out


@pytest.fixture(scope="module")
def killed_in_task_2(tmp_path_factory) -> Path:
    """One run SIGKILLed in its task 2, shared by the tests that damage a file of it (each damages its own copy)."""
    root = tmp_path_factory.mktemp("killed")
    start_and_kill_in_task(root, "cut", task=2)
    return root / "cut"


@pytest.mark.parametrize("damage", ["deleted", "truncated", "edited"])
def test_a_damaged_metrics_jsonl_is_refused_not_half_rebuilt(damage, killed_in_task_2, tmp_path):
    shutil.copytree(killed_in_task_2, tmp_path / "cut")
    log = tmp_path / "cut" / "metrics.jsonl"
    text = log.read_text()
    if damage == "deleted":
        log.unlink()
    elif damage == "truncated":
        log.write_text(text[: len(text) // 3])
    else:
        log.write_text(text.replace('"task": 0', '"task": 7', 1))
    refused = lab("resume", "cut", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "metrics.jsonl" in refused.stderr and {"deleted": "is missing", "truncated": "holds",
                                                  "edited": "differs"}[damage] in refused.stderr


@pytest.mark.parametrize("damage", ["empty", "truncated", "code"])
def test_a_corrupt_or_foreign_checkpoint_is_one_line_and_runs_nothing(damage, killed_in_task_2, tmp_path):
    shutil.copytree(killed_in_task_2, tmp_path / "cut")
    ckpt = tmp_path / "cut" / "checkpoints" / "last.pt"
    marker = tmp_path / "pwned"
    if damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    else:
        class Payload:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        torch.save({"format": 3, "boom": Payload()}, ckpt)
    refused = lab("resume", "cut", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "last.pt" in refused.stderr and not marker.exists()


def test_resume_imports_a_run_s_plugins_only_when_trusted(tmp_path, capsys, monkeypatch):
    from plasticity_lab.lab.cli import main

    (tmp_path / "killer.py").write_text(KILLER)
    args = [*TINY, "plugins=[killer]", "interventions=[kill_at]", "out_dir=cut"]
    killed = lab("run", *args, cwd=tmp_path, env={**os.environ, "KILL_AT": "end:2"})
    assert killed.returncode == -signal.SIGKILL
    monkeypatch.chdir(tmp_path)
    assert main(["resume", "cut"]) == 2  # refused before anything is imported
    err = capsys.readouterr().err
    assert "['killer']" in err and "--trust-plugins" in err and "killer" not in sys.modules
    assert lab("resume", "cut", "--trust-plugins", cwd=tmp_path).returncode == 0


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_one(tmp_path, monkeypatch):
    """The disk fills while the new checkpoint is half-written: the old one stays, the partial file goes."""
    import errno

    from plasticity_lab.lab import checkpoint
    from plasticity_lab.registry import DataError

    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, {"next_task": 1})

    def full_disk(obj, f):
        f.write(b"partial checkpoint bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DataError, match="could not write the checkpoint .*last.pt .No space left on device.*is kept"):
        checkpoint.save(folder, {"next_task": 2})
    assert checkpoint.load(folder) == {"next_task": 1} and not (folder / "last.pt.tmp").exists()


def test_a_run_whose_files_cannot_grow_stops_in_one_line(tmp_path):
    """A real write failure (the process may write no file beyond 64 KiB, as a full
    disk would refuse): one line naming the file, exit 2, no partial file left."""
    import resource

    from plasticity_lab.agents import kernels

    kernels.kernel()  # the compiled step's one-off build writes large files: done here, before the limit

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    p = subprocess.run([sys.executable, "-m", "plasticity_lab.lab", "run", *TINY, "out_dir=run"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, preexec_fn=limited)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "could not write" in p.stderr and "File too large" in p.stderr
    assert not list((tmp_path / "run").rglob("*.tmp"))


# --- a sweep, and what reads runs -------------------------------------------------------------------------------


def test_lab_resume_of_a_sweep_resumes_its_unfinished_jobs_and_starts_the_rest(tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    sweep = latest([*TINY, "stream.num_tasks=2", "plugins=[killer]", "interventions=[kill_at]", "seed=0,1,2"])
    # the jobs run one after another in this process: the 4th on_task_end is job 1's second task, after the
    # checkpoint of its first; job 2 never begins
    killed = lab("run", "--multirun", *sweep, cwd=tmp_path, env={**os.environ, "KILL_AT": "end:4"})
    assert killed.returncode == -signal.SIGKILL
    (sweep_dir,) = (tmp_path / "runs" / "multirun").iterdir()
    # job folders are named after the swept value
    assert (sweep_dir / "seed=0" / "finished.json").is_file() and not (sweep_dir / "seed=1" / "finished.json").exists()
    assert not (sweep_dir / "seed=2").exists()
    compare = lab("compare", str(sweep_dir), cwd=tmp_path)
    assert compare.returncode == 0 and "| seed=1 | - | stopped at task 2/2 |" in compare.stdout, compare.stdout
    resumed = lab("resume", str(sweep_dir), "--trust-plugins", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert all((sweep_dir / f"seed={j}" / "finished.json").is_file() for j in range(3))
    assert "3 job(s)" in resumed.stdout and "3 finished, 0 failed" in resumed.stdout
    assert "finished; left as it is" in resumed.stdout


def test_plot_and_compare_say_what_is_missing_in_one_line(tmp_path, capsys, monkeypatch):
    from plasticity_lab.lab.cli import main

    start_and_kill_in_task(tmp_path, "cut")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    for args in (["plot", "cut"], ["compare", "cut"], ["compare", "empty"], ["plot", "nowhere"]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1, (args, err)
        if args == ["compare", "cut"]:
            assert "stopped at task 2/3" in err and "lab resume cut" in err


def test_a_run_killed_while_finishing_resumes_into_a_complete_finish(tiny_run, tmp_path, monkeypatch, capsys):
    """Summary and plots written, the finished marker not yet: the directory holds an
    unfinished run, and its resume finishes it (nothing trained again)."""
    import plasticity_lab.lab.runner as runner
    from plasticity_lab.lab.cli import main

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "mark_finished", killed)
    with pytest.raises(Exception):
        tiny_run(out="cut")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert (tmp_path / "cut" / "summary.json").is_file() and not (tmp_path / "cut" / "finished.json").exists()
    assert main(["compare", "cut"]) == 2 and "stopped while finishing (all 3 tasks trained)" in capsys.readouterr().err
    steps = len(lines(tmp_path / "cut" / "metrics.jsonl"))
    assert main(["resume", "cut"]) == 0
    assert (tmp_path / "cut" / "finished.json").is_file()
    assert len(lines(tmp_path / "cut" / "metrics.jsonl")) == steps  # no task trained again
    assert main(["compare", "cut"]) == 0
