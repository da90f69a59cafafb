"""Vectorised seeds: each seed trained among others equals that seed trained alone, up to float reassociation.

A batched product of N seeds' matrices may sum its terms in another order than
the product of one seed (the BLAS picks kernels and thread splits by shape and
thread count), so each step may differ by float32 rounding (~1e-7 relative);
a few hundred SGD steps at these learning rates keep that below ~1e-5 in the
weights. The tolerances below (weights 1e-4, losses 1e-4 relative, accuracies
one prediction in a hundred) are ten times that, and far below what a wrong
seed, stream or hook would change (the seeds differ from each other by ~1e-1).
"""

import pytest
import torch

from seed_records import assert_close_records, records
from conftest import run_state, run_weights
from wandb_records import history
from plasticity_lab.lab.stop import Stopped
from plasticity_lab.registry import ConfigError

BASE = ["wandb.enabled=false", "progress=off", "agent.hidden=[32,16]", "stream.num_tasks=3",
        "stream.examples_per_task=160", "metrics.probe_every=0", "metrics.hessian_every=0", "agent.optimizer.lr=0.05",
        "train.log_every=8"]


def weights(run_dir):
    return run_weights(run_dir)


@pytest.mark.parametrize("extra", [
    ["train.batch_size=1"],
    ["interventions=[cbp]", "interventions.cbp.replacement_rate=0.02", "interventions.cbp.maturity_threshold=20",
     "interventions.cbp.accumulate=false"],
    ["interventions=[shrink_perturb,l2]", "interventions.shrink_perturb.noise_std=1e-3", "activation=tanh"],
    ["experiment=split_mnist", "stream.scenario=task", "agent.hidden=[32]", "stream.num_tasks=3"],
    ["experiment=bit_flipping", "stream.num_tasks=3", "stream.flip_every=200", "agent.hidden=[5]"],
], ids=["backprop_batch1", "cbp_bernoulli", "shrink_perturb_l2_tanh", "split_task_heads", "bit_flipping_mse"])
def test_each_seed_equals_its_run_alone(extra, compose, tmp_path, monkeypatch):
    from plasticity_lab.lab.loop import run

    monkeypatch.setattr("plasticity_lab.agents.pending.MIN_WEIGHTS", 0)  # batch-1 backprop defers its updates here too

    base = [o for o in BASE if not ("experiment=bit_flipping" in extra and o.startswith("stream.examples"))]
    many = run(compose([*base, *extra, "seeds=[0,1,2]"]), tmp_path / "many")
    assert [s["seed"] for s in many] == [0, 1, 2]
    for s, summary in [(0, many[0]), (2, many[2])]:  # the first and the last slice of the stack (suite time: not all three)
        (alone,) = run(compose([*base, *extra, f"seed={s}"]), tmp_path / f"alone{s}")
        seed_dir = tmp_path / "many" / f"seed_{s}"
        for k, v in weights(tmp_path / f"alone{s}").items():
            assert torch.allclose(v, weights(seed_dir)[k], rtol=1e-4, atol=1e-4), (s, k)
        assert summary["online_loss"] == pytest.approx(alone["online_loss"], rel=1e-4)
        assert summary["online_accuracy"] == pytest.approx(alone["online_accuracy"], abs=0.01)
        for row, row_alone in zip(summary["acc_matrix"], alone["acc_matrix"]):
            assert [v is None for v in row] == [v is None for v in row_alone]
            assert [v for v in row if v is not None] == pytest.approx([v for v in row_alone if v is not None], abs=0.01)
        assert summary["deferred_updates"] == alone["deferred_updates"]
        assert summary["deferred_updates"] == 16 or extra != ["train.batch_size=1"]
        assert_close_records(records(seed_dir / "metrics.jsonl"), records(tmp_path / f"alone{s}/metrics.jsonl"))
    assert many[0]["online_loss"] != many[1]["online_loss"]  # and the seeds differ from each other


def test_continual_backprop_of_seeds_in_lock_step_runs_once_per_step_and_equals_each_seed_alone(
        compose, tmp_path, monkeypatch):
    """At batch 1 (the fused step's |W| sums) continual backprop runs once per step for the
    whole group (StackedContinualBackprop), and each seed's weights, records and continual
    backprop state (utilities, ages, the accumulated fraction) equal its run alone: the
    utility arithmetic is elementwise, so only the step's float rounding (module docstring) differs;
    ages and replacement counts are exact."""
    from plasticity_lab.agents.interventions.cbp import StackedContinualBackprop
    from plasticity_lab.lab.loop import run

    calls = []
    stacked_call = StackedContinualBackprop.__call__
    monkeypatch.setattr(StackedContinualBackprop, "__call__",
                        lambda self, info, own: calls.append(len(self.seeds)) or stacked_call(self, info, own))
    cbp = [*BASE, "train.batch_size=1", "interventions=[cbp]", "interventions.cbp.replacement_rate=0.02",
           "interventions.cbp.maturity_threshold=20"]
    many = run(compose([*cbp, "seeds=[0,1]"]), tmp_path / "many")
    assert calls == [2] * (3 * 160)  # every step of the three tasks: once, for both seeds
    for s, summary in zip([0, 1], many):
        (alone,) = run(compose([*cbp, f"seed={s}"]), tmp_path / f"alone{s}")
        seed_dir, alone_dir = tmp_path / "many" / f"seed_{s}", tmp_path / f"alone{s}"
        for k, v in weights(alone_dir).items():
            assert torch.allclose(v, weights(seed_dir)[k], rtol=1e-4, atol=1e-4), (s, k)
        (mine,), (theirs,) = run_state(seed_dir)["interventions"], run_state(alone_dir)["interventions"]
        for layer, layer_alone in zip(mine["layers"], theirs["layers"]):
            assert torch.equal(layer["age"], layer_alone["age"])
            assert layer["accumulated"] == layer_alone["accumulated"]
            assert torch.allclose(layer["util"], layer_alone["util"], rtol=1e-3, atol=1e-6)
            assert torch.allclose(layer["mean_feature"], layer_alone["mean_feature"], rtol=1e-4, atol=1e-6)
        assert summary["online_loss"] == pytest.approx(alone["online_loss"], rel=1e-4)
        replaced = [r for r in records(seed_dir / "metrics.jsonl") if any(k.startswith("cbp/") for k in r)]
        assert replaced and replaced == [r for r in records(alone_dir / "metrics.jsonl") if any(k.startswith("cbp/") for k in r)]
        assert_close_records(records(seed_dir / "metrics.jsonl"), records(alone_dir / "metrics.jsonl"))


def test_seeds_with_stacked_continual_backprop_stopped_inside_a_task_resume_to_the_same_end(compose, tmp_path, monkeypatch):
    """SIGTERM at step 50 of task 2: the checkpoint holds each seed's view of the stacked CBP state,
    the resumed group stacks it again and ends exactly where the uninterrupted group does (the same
    process and group shape both times: the same arithmetic, so equal bit for bit)."""
    import os
    import signal

    import plasticity_lab.lab.loop as loop
    from plasticity_lab.lab.loop import run

    cfg = compose([*BASE, "train.batch_size=1", "interventions=[cbp]", "interventions.cbp.replacement_rate=0.02",
                   "interventions.cbp.maturity_threshold=20", "seeds=[0,1]"])
    run(cfg, tmp_path / "whole")
    steps = []
    real_call = loop.StackStep.__call__

    def call_then_term(self, x, y):
        steps.append(1)
        if len(steps) == 160 + 50:  # task 2, step 50: a real signal, as a cluster's preemption sends
            os.kill(os.getpid(), signal.SIGTERM)
        return real_call(self, x, y)

    monkeypatch.setattr(loop.StackStep, "__call__", call_then_term)
    with pytest.raises(Stopped, match="stopped"):
        run(cfg, tmp_path / "cut")
    assert run_state(tmp_path / "cut/seed_0")["step"] == 210  # stopped inside task 2
    monkeypatch.setattr(loop.StackStep, "__call__", real_call)
    run(cfg, tmp_path / "cut", resume=True)
    for s in (0, 1):
        whole, cut = run_state(tmp_path / f"whole/seed_{s}"), run_state(tmp_path / f"cut/seed_{s}")
        for k, v in whole["agent"]["model"].items():
            assert torch.equal(v, cut["agent"]["model"][k]), (s, k)
        for layer, layer_cut in zip(whole["interventions"][0]["layers"], cut["interventions"][0]["layers"]):
            assert all(torch.equal(layer[k], layer_cut[k]) for k in ("util", "mean_feature", "age", "decay_power"))
            assert layer["accumulated"] == layer_cut["accumulated"]
        assert records(tmp_path / f"cut/seed_{s}/metrics.jsonl") == records(tmp_path / f"whole/seed_{s}/metrics.jsonl")


def test_the_group_checkpoint_holds_each_seed_s_weights_once(compose, tmp_path):
    """Each seed's weights are views of the stacked tensors; the checkpoint copies
    each seed's slice out, so it holds 4 seeds' weights, not 4 x 4."""
    from plasticity_lab.lab.loop import run

    run(compose([*BASE, "seeds=[0,1,2,3]"]), tmp_path / "m")
    for s in range(4):  # each tensor read back owns a storage of its own size, not the stack's
        assert all(v.untyped_storage().nbytes() == v.numel() * 4 for v in weights(tmp_path / f"m/seed_{s}").values())
    assert not (tmp_path / "m/seed_0/checkpoints").exists()  # one checkpoint for the group


def test_interrupted_seeds_resume_to_the_same_end(compose, tmp_path, monkeypatch):
    import plasticity_lab.lab.loop as loop
    from plasticity_lab.lab.loop import run

    cfg = compose([*BASE, "seeds=[3,4]"])
    run(cfg, tmp_path / "whole")
    real_end = loop.end_task

    def end_then_die(ctx, task, *a, **kw):
        if task.id == 2:
            raise KeyboardInterrupt
        return real_end(ctx, task, *a, **kw)

    monkeypatch.setattr(loop, "end_task", end_then_die)
    with pytest.raises(Stopped, match="interrupted at once in task 3/3; the last checkpoint is kept"):
        run(cfg, tmp_path / "cut")
    monkeypatch.setattr(loop, "end_task", real_end)
    run(cfg, tmp_path / "cut", resume=True)
    for s in (3, 4):  # the same process and group shape both times: the same arithmetic, so exactly equal
        for k, v in weights(tmp_path / f"whole/seed_{s}").items():
            assert torch.equal(v, weights(tmp_path / f"cut/seed_{s}")[k])
        assert records(tmp_path / f"cut/seed_{s}/metrics.jsonl") == records(tmp_path / f"whole/seed_{s}/metrics.jsonl")


def test_cli_runs_seeds_into_their_own_directories_and_wandb_runs(tmp_path, monkeypatch, capsys):
    from plasticity_lab.lab.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["run", *[o for o in BASE if not o.startswith("wandb")], "wandb.mode=offline", "seeds=[0,1]",
                 "out_dir=out"])
    assert code == 0
    assert "| " in capsys.readouterr().out  # the table over seeds
    ids = set()
    for s in (0, 1):  # each seed its own W&B run, holding that seed's records
        seed_dir = tmp_path / f"out/seed_{s}"
        assert (seed_dir / "summary.json").is_file()
        (run_dir,) = (seed_dir / "wandb").glob("offline-run-*")
        ids.add(run_dir.name.rsplit("-", 1)[1])
        rows = {r["_step"]: r for r in history(seed_dir / "wandb")}
        for rec in records(seed_dir / "metrics.jsonl"):
            if "train/loss" in rec:
                assert rows[rec["step"]]["train/loss"] == pytest.approx(rec["train/loss"]), (s, rec["step"])
    assert len(ids) == 2
    assert main(["resume", "out"]) == 0  # already finished: nothing to do


def test_unsupported_runs_say_what_to_do_instead(compose, tmp_path):
    from plasticity_lab.lab.loop import run

    with pytest.raises(ConfigError, match="seeds.*UPGD.*--multirun seed=0,1"):
        run(compose([*BASE, "agent.optimizer.name=upgd", "seeds=[0,1]"]), tmp_path / "a")
    with pytest.raises(ConfigError, match="distinct integer seeds"):
        run(compose([*BASE, "seeds=[1,1]"]), tmp_path / "b")
