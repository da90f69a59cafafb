"""Checkpoints at task boundaries: a run killed with SIGKILL mid-task resumes to the same result."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

ARGS = ["wandb.enabled=false", "progress=off", "agent.hidden=[64]", "stream.num_tasks=5",
        "stream.examples_per_task=3000", "train.batch_size=1", "train.log_every=100"]
VOLATILE = {"wall_time_s", "examples_per_s", "plots", "out_dir", "wandb_sync"}


def _lines(path):
    """The complete lines written so far (a line being written has no newline yet)."""
    if not path.exists():
        return []
    text = path.read_text()
    return text.splitlines()[: text.count("\n")]


def lab(*args, cwd):
    return subprocess.run([sys.executable, "-m", "plasticity_lab.lab", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_sigkill_mid_task_then_resume_matches_uninterrupted(tmp_path):
    full = lab("run", *ARGS, "out_dir=full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    victim = subprocess.Popen([sys.executable, "-m", "plasticity_lab.lab", "run", *ARGS, "out_dir=killed"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "killed" / "metrics.jsonl"
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    # the event: a training record of task 2 (written every 100 of its 3,000 steps), so the
    # process is inside task 2, past the checkpoint of task 1
    while victim.poll() is None and not any(json.loads(line).get("task") == 2 and "train/loss" in line
                                            for line in _lines(log)):
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before the kill"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    state = torch.load(ckpt, weights_only=True)
    assert 2 <= state["next_task"] < 5
    # the killed process had logged past its checkpoint: those records must not survive the resume
    records = [json.loads(line) for line in _lines(log)]
    assert max(r["step"] for r in records) > state["runs"][0]["step"]
    assert not (tmp_path / "killed" / "summary.json").exists()

    resumed = lab("resume", "killed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert {k: v for k, v in a.items() if k not in VOLATILE} == {k: v for k, v in b.items() if k not in VOLATILE}
    ra = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    rb = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if not k.startswith("perf/")} for r in rows]
    assert strip(ra) == strip(rb)
    again = lab("resume", "killed", cwd=tmp_path)
    assert again.returncode == 0 and "already finished" in again.stdout
