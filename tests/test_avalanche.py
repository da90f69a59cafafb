"""Avalanche both ways, with real Avalanche objects."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import readme_snippet

pytest.importorskip("avalanche")

AVA = ["wandb.enabled=false", "progress=off", "experiment=split_mnist", "agent.hidden=[64]", "metrics.probe_every=0",
       "metrics.hessian_every=0", "stream.examples_per_task=400"]


def test_lab_stream_as_avalanche_benchmark():
    from plasticity_lab.lab.avalanche_bridge.benchmark import to_avalanche
    from plasticity_lab.streams import stream_builders

    stream = stream_builders.get("split_mnist")(scenario="task").build(0)
    bm = to_avalanche(stream)
    assert len(bm.train_stream) == 5 and len(bm.test_stream) == 5
    exp = bm.train_stream[2]
    task = stream.task(2)
    assert len(exp.dataset) == task.num_train
    x, y, t = exp.dataset[0]
    assert torch.equal(x, task.x_train[0]) and int(y) == int(task.y_train[0]) and t == 2
    assert sorted(exp.dataset.targets.uniques) == [4, 5]
    assert set(exp.dataset.targets_task_labels.uniques) == {2}
    class_il = to_avalanche(stream_builders.get("permuted_mnist")(num_tasks=1000).build(0), num_tasks=3)
    assert len(class_il.train_stream) == 3 and set(class_il.train_stream[1].dataset.targets_task_labels.uniques) == {0}


@pytest.mark.parametrize("strategy", ["ewc", "si", "lwf", "replay", "agem", "gdumb"])
def test_avalanche_strategies_run_as_lab_agents(strategy, tiny_run, tmp_path):
    s = tiny_run("agent=avalanche", f"agent.strategy={strategy}", "stream.num_tasks=2", base=AVA, out=strategy)
    out = tmp_path / strategy
    assert s["tasks_trained"] == 2 and len(s["acc_matrix"]) == 2 and s["acc_matrix"][1][0] is not None
    assert json.loads((out / "summary.json").read_text())["avg_accuracy"] == s["avg_accuracy"]
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("units/dead_frac/h1" in r for r in records) and any("train/online_acc" in r for r in records)
    assert 0.0 <= s["online_accuracy"][0] <= 1.0 and s["online_accuracy"][0] > 0.5


def test_bad_strategy_parameter_is_named(tiny_run):
    from plasticity_lab.registry import ConfigError

    with pytest.raises(ConfigError, match="agent.strategy"):
        tiny_run("agent=avalanche", "agent.strategy=ewc", "+agent.strategy.lambda_ewc=3", base=AVA)
    with pytest.raises(ConfigError, match="agent.strategy"):
        tiny_run("agent=avalanche", "agent.strategy=icarl_x", base=AVA)


def test_native_and_avalanche_naive_agree(tiny_run):
    """Same net, init, stream and SGD: native lab agent vs Avalanche's Naive.
    They draw minibatches in different orders, so the accuracy matrices agree
    within a tolerance (0.06 per entry), not exactly."""
    args = ["agent.optimizer.lr=0.05", "stream.examples_per_task=null", "agent.hidden=[100]"]
    native = tiny_run(*args, base=AVA, out="native")
    naive = tiny_run("agent=avalanche", "agent.strategy=naive", *args, base=AVA, out="naive")
    for row_a, row_b in zip(native["acc_matrix"], naive["acc_matrix"]):
        for a, b in zip(row_a, row_b):
            assert (a is None) == (b is None)
            if a is not None:
                assert abs(a - b) <= 0.06, (native["acc_matrix"], naive["acc_matrix"])
    assert abs(native["online_accuracy"][0] - naive["online_accuracy"][0]) < 0.03


def test_readme_avalanche_script_runs_with_cbp_and_dead_units(tmp_path):
    script = readme_snippet("## Use with Avalanche")
    (tmp_path / "ava.py").write_text(script)
    p = subprocess.run([sys.executable, "ava.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    dead = p.stdout.split("dead units in h1 at each task start:")[1].splitlines()[0]
    assert len(json.loads(dead)) == 5
    final = float(p.stdout.split("final accuracy:")[1])
    assert 0.15 < final < 1.0


def test_intervention_plugin_replaces_units_inside_avalanche():
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    from plasticity_lab.agents import MLP
    from plasticity_lab.lab.avalanche_bridge.benchmark import to_avalanche
    from plasticity_lab.lab.avalanche_bridge.plugins import intervention_plugin
    from plasticity_lab.streams import stream_builders

    torch.manual_seed(0)
    bm = to_avalanche(stream_builders.get("split_mnist")(examples_per_task=300).build(0), num_tasks=2)
    model = MLP(784, [32], 10)
    plugin = intervention_plugin("cbp", replacement_rate=0.05, maturity_threshold=5)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=16,
                     plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))
    for exp in bm.train_stream:
        strategy.train(exp)
    cbp = plugin.objects[0]
    assert sum(r.get("cbp/replaced/h1", 0) for r in plugin.records) >= 10
    assert int(cbp.layers[0].age.max()) <= 2 * 300 // 16 + 1
