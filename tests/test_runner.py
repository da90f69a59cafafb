"""The runner end to end at small sizes: outputs, determinism, evaluation, NaN handling."""
import json

import pytest
import torch

from plasticity_lab.lab.runner import NonFiniteLoss


def test_outputs_and_summary(tiny_run, tmp_path):
    s = tiny_run()
    out = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "plots/online_accuracy.png",
                 "plots/acc_matrix.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("experiment", "seed", "tasks_trained", "online_accuracy", "acc_matrix", "avg_accuracy", "bwt",
                "forgetting", "wall_time_s", "examples_per_s"):
        assert key in summary, key
    assert summary["tasks_trained"] == 3 and len(summary["online_accuracy"]) == 3
    R = summary["acc_matrix"]
    assert [len(r) for r in R] == [3, 3, 3] and R[0][1] is None and R[2][0] is not None
    assert summary["avg_accuracy"] == pytest.approx(sum(R[2]) / 3)
    assert summary["bwt"] == pytest.approx(((R[2][0] - R[0][0]) + (R[2][1] - R[1][1])) / 2)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in r and "task" in r for r in records)
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and steps[-1] == 3 * 256 // 16
    ends = [r for r in records if "train/task_online_acc" in r]
    assert [r["train/task_online_acc"] for r in ends] == pytest.approx(summary["online_accuracy"])
    assert ends[-1]["eval/acc/task_0"] == pytest.approx(R[2][0])
    assert any("train/loss" in r and "train/online_acc" in r for r in records)
    assert s["examples"] == 3 * 256


def test_online_accuracy_is_the_mean_of_pre_update_predictions(tiny_run, tmp_path):
    s = tiny_run("train.log_every=1")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    per_step = [r["train/online_acc"] for r in records if "train/online_acc" in r and r["task"] == 0]
    assert len(per_step) == 16
    assert s["online_accuracy"][0] == pytest.approx(sum(per_step) / 16)


def test_same_seed_same_numbers_other_seed_other_numbers(tiny_run):
    a, b, c = tiny_run(out="a"), tiny_run(out="b"), tiny_run("seed=1", out="c")
    for key in ("online_accuracy", "acc_matrix", "online_loss"):
        assert a[key] == b[key]
    assert a["online_loss"] != c["online_loss"]


def test_split_mnist_task_incremental_learns_and_class_incremental_forgets(tiny_run):
    base = ["wandb.enabled=false", "progress=off", "experiment=split_mnist", "agent.hidden=[64]"]
    task_il = tiny_run("stream.scenario=task", "agent.optimizer.lr=0.05", out="t", base=base)
    class_il = tiny_run("stream.scenario=class", "agent.optimizer.lr=0.05", out="c", base=base)
    assert task_il["avg_accuracy"] > 0.9
    # class-incremental with plain SGD: the well-known collapse onto the last pair
    assert class_il["avg_accuracy"] < 0.5 and class_il["forgetting"] > 0.5
    assert class_il["acc_matrix"][4][4] > 0.9


def test_eval_window_and_cadence(tiny_run):
    s = tiny_run("stream.num_tasks=5", "train.eval_window=2", "train.eval_every=2")
    R = s["acc_matrix"]
    assert all(v is None for v in R[0])  # task 0: not an eval point
    assert R[1][0] is not None and R[1][1] is not None
    assert R[3][1] is None and R[3][2] is not None and R[3][3] is not None
    assert R[4][3] is not None and R[4][2] is None  # the last task is always evaluated


def test_nan_loss_stops_with_message_and_the_advice_is_followable(tiny_run, compose, tmp_path, register_for_test):
    from dataclasses import dataclass

    from plasticity_lab.agents.interventions import Intervention, interventions
    from plasticity_lab.lab.loop import run

    @dataclass
    class Poison(Intervention):
        """Test-only: makes the weights infinite when task ``at`` starts."""

        at: int = 2

        def on_task_start(self, agent, task):
            if task.id == self.at:
                with torch.no_grad():
                    agent.model.layers[0].weight.fill_(float("inf"))

    register_for_test(interventions, "poison_for_test", Poison)
    with pytest.raises(NonFiniteLoss, match=r"task 2\).*last checkpoint.*lab resume \S+run agent.optimizer.lr=0.01$"):
        tiny_run("interventions=[poison_for_test]", "stream.num_tasks=4")
    out = tmp_path / "run"
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["next_task"] == 2 and ckpt["position"] is None
    assert all(torch.isfinite(v).all() for v in ckpt["runs"][0]["agent"]["model"].values())
    assert len(ckpt["runs"][0]["results"]["online_accuracy"]) == 2
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # nothing half-written
    # the advice, followed (the poison moved out of the way on purpose too): the run finishes with lr 0.01
    from plasticity_lab.lab.resume import with_overrides
    from omegaconf import OmegaConf

    cfg, keys = with_overrides(OmegaConf.load(out / "config.yaml"), ["agent.optimizer.lr=0.01",
                                                                     "interventions.poison_for_test.at=99"])
    (summary,) = run(cfg, out, resume=True, requested=keys)
    assert summary["tasks_trained"] == 4
    assert summary["resumes"] == [{"at_task": 2, "step": 32, "changes": {"agent.optimizer.lr": [0.1, 0.01],
                                                                         "interventions.poison_for_test.at": [2, 99]}}]
    final = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert final["runs"][0]["agent"]["optimizer"]["param_groups"][0]["lr"] == 0.01  # it reached the optimizer
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["resume/agent.optimizer.lr"] for r in records if "resume/agent.optimizer.lr" in r] == [0.01]


def test_runs_started_together_get_their_own_directories(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from plasticity_lab.lab.group import claim_dir

    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: claim_dir(tmp_path / "runs" / "20261125-120000"), range(8)))
    assert len(set(dirs)) == 8 and all(d.is_dir() for d in dirs)
