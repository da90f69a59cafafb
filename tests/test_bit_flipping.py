"""Slowly-changing regression: the LTU target by hand, the flips, and a real run."""
import json

import numpy as np
import pytest
import torch

from plasticity_lab.registry import ConfigError
from plasticity_lab.streams.bit_flipping import BitFlipping, LTUTarget


def test_ltu_target_by_hand():
    """m = 3 inputs, 2 LTUs, beta = 0.7: S_j = (m - sum_i V_ji + b_j)/2, tau_j = beta (m+1) - S_j."""
    V = torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    S = torch.tensor([(3 - 1 + 1) / 2, (3 + 1 - 1) / 2], dtype=torch.float64)  # 1.5, 1.5
    tau = 0.7 * 4 - S  # 1.3, 1.3
    t = LTUTarget(V, b, torch.tensor([1.0, -1.0], dtype=torch.float64), 1.0, tau)
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    # pre-activations V x + b: [3, -1], [2, 0], [1, -3] -> LTUs [1,0], [1,0], [0,0]
    assert t(x).tolist() == [2.0, 2.0, 1.0]
    sampled = LTUTarget.sample(np.random.default_rng(0), 20, 100, 0.7)
    assert set(sampled.V.unique().tolist()) == {-1.0, 1.0} and set(sampled.b.unique().tolist()) <= {-1.0, 1.0}
    assert torch.allclose(sampled.tau, 0.7 * 21 - (20 - sampled.V.sum(1) + sampled.b) / 2)


def test_slow_bits_flip_one_at_a_time_and_fresh_bits_are_fresh():
    s = BitFlipping(num_tasks=6, flip_every=500).build(seed=3)
    tasks = [s.task(k) for k in range(6)]
    for t in tasks:
        assert torch.all(t.x_train[:, :15] == t.x_train[0, :15])  # held for the whole period
        fresh = t.x_train[:, 15:]
        assert 0.4 < float(fresh.mean()) < 0.6 and len(torch.unique(fresh, dim=0)) == 32  # every 5-bit pattern occurs
        assert set(torch.unique(t.x_train).tolist()) <= {0.0, 1.0}
    for a, b in zip(tasks, tasks[1:]):
        assert int((a.x_train[0, :15] != b.x_train[0, :15]).sum()) == 1
    again = BitFlipping(num_tasks=6, flip_every=500).build(seed=3).task(4)  # task 4 built alone
    assert torch.equal(again.x_train, tasks[4].x_train) and torch.equal(again.y_train, tasks[4].y_train)
    assert not torch.equal(BitFlipping(num_tasks=6, flip_every=500).build(seed=4).task(0).y_train, tasks[0].y_train)
    new = BitFlipping(num_tasks=3, flip_every=50, variant="new_pattern").build(seed=3)
    assert sum(int((new.task(0).x_train[0, :15] != new.task(k).x_train[0, :15]).sum()) for k in (1, 2)) > 2


def test_bad_parameters_are_named():
    with pytest.raises(ConfigError, match="stream.variant.*flip_one"):
        BitFlipping(variant="flip_two")
    with pytest.raises(ConfigError, match="stream.slow_bits"):
        BitFlipping(slow_bits=21)


def test_regression_run_records_online_squared_error(tiny_run, tmp_path):
    base = ["wandb.enabled=false", "progress=off", "experiment=bit_flipping", "stream.num_tasks=3",
            "stream.flip_every=400", "train.log_every=100"]
    s = tiny_run(base=base)
    assert s["target"] == "value" and s["fused_path"] and s["tasks_trained"] == 3
    assert len(s["online_loss"]) == 3 and all(v > 0 for v in s["online_loss"])
    assert all(v is None for row in s["acc_matrix"] for v in row)  # no accuracy for a regression stream
    assert (tmp_path / "run/plots/online_error.png").stat().st_size > 0
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert any("units/dead_frac/h1" in r for r in records)
    # the per-task loss is the mean of the per-window losses the run logged
    windows = [r["train/loss"] for r in records if "train/loss" in r and r["task"] == 0]
    assert s["online_loss"][0] == pytest.approx(np.mean(windows), rel=1e-5)
    slow = tiny_run("train.fast=false", base=base, out="slow")
    assert slow["online_loss"] == pytest.approx(s["online_loss"], rel=1e-4)


def test_regression_stream_needs_the_mse_loss(tiny_run):
    with pytest.raises(ConfigError, match="agent.loss.*mse"):
        tiny_run("agent.loss=cross_entropy", base=["wandb.enabled=false", "progress=off", "experiment=bit_flipping",
                                                   "stream.num_tasks=1", "stream.flip_every=10"])
