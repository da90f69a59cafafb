"""Metric functions against values computed by hand on tiny tensors; the tracker and probes leave the run alone;
the metric catalog reaches every place a metric is shown."""
import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import readme_snippet
from plasticity_lab.agents import MLP, Agent
from plasticity_lab.lab.cli import main
from plasticity_lab.agents.optimizers import make_optimizer
from plasticity_lab.metrics.curvature import hessian_top_eigenvalue
from plasticity_lab.metrics.gradients import grad_norm, gradient_interference, per_sample_gradients
from plasticity_lab.metrics.probes import fresh_copy, linear_probe, trainability
from plasticity_lab.metrics.rank import approximate_rank, effective_rank, numerical_rank, singular_values, srank, stable_rank
from plasticity_lab.metrics.sparsity import activation_sparsity, derivative_sparsity, parameter_gradient_sparsity
from plasticity_lab.metrics.units import dead_fraction, dormant_fraction, dormant_scores, inactive_fraction
from plasticity_lab.metrics.weights import feature_norm, mean_abs

A = torch.tensor([[0.0, 1.0, 0.0, 2.0],
                  [0.0, 3.0, 0.0, 0.0],
                  [0.0, 2.0, 4.0, 0.0]])


def test_dead_and_dormant_units():
    assert dead_fraction(A) == 0.25  # unit 0 is zero on all three inputs
    # mean |h| per unit: [0, 2, 4/3, 2/3]; layer mean 1 -> scores [0, 2, 4/3, 2/3]
    assert dormant_scores(A).tolist() == pytest.approx([0, 2, 4 / 3, 2 / 3], abs=1e-6)
    assert dormant_fraction(A, tau=0.0) == 0.25 and dormant_fraction(A, tau=0.7) == 0.5
    conv = torch.zeros(10, 2, 3, 3)
    conv[0, 1, 0, 0] = 1.0  # channel 1 active on 1 of 90 input-positions (1.1 %)
    assert inactive_fraction(conv, 0.01) == 0.5 and inactive_fraction(conv, 0.02) == 1.0


def test_sparsity():
    assert activation_sparsity(A) == pytest.approx(7 / 12)
    assert activation_sparsity(A, eps=1.0) == pytest.approx(8 / 12)
    Z = torch.tensor([[-1.0, 2.0], [3.0, -0.5]])
    assert derivative_sparsity(Z, torch.relu) == 0.5  # relu' = 0 for the two negatives
    elephant = lambda z: 1 / (1 + (z / 0.1).abs() ** 4)
    assert derivative_sparsity(torch.tensor([[0.1, 100.0]]), elephant, eps=1e-3) == 0.5
    assert parameter_gradient_sparsity([torch.tensor([0.0, 1.0]), torch.tensor([[0.0, 0.0], [2.0, 0.0]])]) == pytest.approx(4 / 6)


def test_ranks_on_a_diagonal_matrix():
    D = torch.diag(torch.tensor([3.0, 1.0, 0.0]))
    # singular values 3, 1, 0: p = [3/4, 1/4]; erank = exp(-(.75 ln .75 + .25 ln .25))
    assert effective_rank(D) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert srank(D, delta=0.01) == 2 and srank(D, delta=0.3) == 1  # 3/4 >= 0.7
    assert approximate_rank(D, 0.99) == 2 and approximate_rank(D, 0.9) == 1  # 9/10 >= 0.9
    assert stable_rank(D) == pytest.approx(10 / 9)
    assert numerical_rank(D) == 2
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    assert effective_rank(torch.zeros(3, 3)) == 0.0
    assert singular_values(torch.ones(2, 2)).tolist() == pytest.approx([2.0, 0.0], abs=1e-12)


def test_weights_and_features():
    assert mean_abs(torch.tensor([[1.0, -3.0]])) == 2.0
    assert feature_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]])) == 3.0  # (5 + 1) / 2


def test_gradient_norm_and_interference():
    assert grad_norm([torch.tensor([3.0]), torch.tensor([[4.0]])]) == 5.0
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # cosines: (1,2)=0, (1,3)=-1, (2,3)=0, each counted twice over 6 ordered pairs
    assert gradient_interference(G) == pytest.approx(-2 / 6)
    torch.manual_seed(0)
    net = MLP(3, [4], 2)
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    G = per_sample_gradients(net, F.cross_entropy, x, y)
    net.zero_grad()
    F.cross_entropy(net(x[2:3]), y[2:3]).backward()
    assert torch.allclose(G[2], torch.cat([p.grad.flatten() for p in net.parameters()]), atol=1e-6)


def test_hessian_top_eigenvalue_of_a_quadratic():
    # L(w) = 0.5 w^T diag(5, 2) w has Hessian diag(5, 2): lambda_max = 5
    model = torch.nn.Linear(2, 1, bias=False)
    x = torch.tensor([[5 ** 0.5, 0.0], [0.0, 2 ** 0.5]])
    loss = lambda out, y: 0.5 * out.square().sum()
    assert hessian_top_eigenvalue(model, loss, x, None, iterations=50) == pytest.approx(5.0, rel=1e-4)


@pytest.mark.parametrize("opt", ["adam", "upgd"])
def test_probes_train_copies_and_never_touch_the_run(opt):
    """Weights, optimizer state and the global random stream are as before the
    probes (UPGD draws noise in its step: from the probe's own generator)."""
    torch.manual_seed(0)
    net = MLP(10, [32], 3)
    agent = Agent(net, make_optimizer(net.parameters(), opt, 1e-2))
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    agent.observe(x, y)
    weights = copy.deepcopy(net.state_dict())
    opt_state = copy.deepcopy(agent.optimizer.state_dict())
    rng = torch.get_rng_state()
    r = trainability(net, agent.optimizer, x, y, steps=200)
    lin = linear_probe(net, agent.optimizer, x, y, steps=200)
    fresh = fresh_copy(net)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random stream is where it was
    if opt == "adam":
        assert r.loss_after < r.loss_before and r.accuracy > 0.6 and r.loss_drop > 0
        assert 0.3 < lin.accuracy <= 1.0
    assert not torch.equal(fresh.layers[0].weight, net.layers[0].weight)
    for k, v in net.state_dict().items():
        assert torch.equal(v, weights[k]), k
    state = agent.optimizer.state_dict()
    assert state["param_groups"] == opt_state["param_groups"]
    for i, entry in opt_state["state"].items():
        assert entry.keys() == state["state"][i].keys()
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state["state"][i][key])), (i, key)
    assert all(p.requires_grad for p in net.parameters())


def test_default_run_logs_every_documented_name(tiny_run, tmp_path):
    s = tiny_run("metrics.probe_every=1", "metrics.hessian_every=1", "metrics.every_steps=4", "metrics.task_every=1",
                 "stream.num_tasks=2",
                 "agent.hidden=[16,8]")
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*records)
    for layer in ("h1", "h2"):
        for stem in ("units/dead_frac", "units/dormant_frac", "sparsity/act", "sparsity/grad", "rank/effective",
                     "rank/srank", "rank/stable", "weights/mean_abs"):
            assert f"{stem}/{layer}" in keys, f"{stem}/{layer}"
    for name in ("weights/mean_abs/out", "grad/norm", "sparsity/param_grad", "curvature/hessian_top",
                 "plasticity/probe_loss_drop", "plasticity/probe_acc", "plasticity/probe_remaining",
                 "plasticity/linear_probe_acc", "eval/avg_accuracy", "eval/bwt", "eval/forgetting"):
        assert name in keys, name
    starts = [r for r in records if "units/dead_frac/h1" in r]
    assert [r["task"] for r in starts] == [0, 1] and starts[0]["step"] == 0
    assert s["diagnostics"]["rank/effective/h1"][1][0] == 1
    assert s["final_metrics"]["units/dead_frac/h2"] == starts[1]["units/dead_frac/h2"]


def test_tracker_does_not_change_the_run(tiny_run):
    on = tiny_run("metrics.probe_every=1", "metrics.hessian_every=1", "interventions=[shrink_perturb]", out="on")
    off = tiny_run("metrics.enabled=false", "interventions=[shrink_perturb]", out="off")
    assert on["online_loss"] == off["online_loss"] and on["acc_matrix"] == off["acc_matrix"]


@pytest.mark.parametrize("name,params", [("relu", {}), ("leaky_relu", {"negative_slope": 1e-5})])
def test_the_sparsity_threshold_comes_from_the_activation_registration(name, params):
    """relu outputs exact zeros (counted with eps 0); leaky_relu never does, so its
    near-zero outputs are counted with the tracker's eps. About half the outputs
    are at or below 0 for both (pre-activations symmetric about 0)."""
    from plasticity_lab.metrics.tracker import Tracker

    torch.manual_seed(0)
    net = MLP(10, [200], 3, activation=name, activation_params=params)
    agent = Agent(net, make_optimizer(net.parameters(), "sgd", 0.1))
    record = Tracker().representation(agent, torch.randn(500, 10))
    assert 0.4 < record["sparsity/act/h1"] < 0.6


METRIC_PLUGIN = readme_snippet("### Add a metric")


def test_readme_metric_reaches_jsonl_wandb_dashboard_plot_and_compare(tmp_path, monkeypatch, capsys):
    """The README's per-layer metric, one file: recorded per layer in
    metrics.jsonl and W&B, a dashboard panel, a diagnostics panel and a
    compare column (the last three from the run's summary, no plug-in code)."""
    from plasticity_lab.lab.compare import group_runs, load_runs, table
    from plasticity_lab.lab.plots import diagnostics_figure
    from wandb_records import history

    (tmp_path / "my_metrics.py").write_text(METRIC_PLUGIN)
    env = {**os.environ, "HOME": str(tmp_path), "NETRC": str(tmp_path / "no-netrc"), "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    args = ["plugins=[my_metrics]", "progress=off", "agent.hidden=[16,8]", "stream.num_tasks=3",
            "stream.examples_per_task=128", "metrics.task_every=1", "out_dir=run"]
    p = subprocess.run([sys.executable, "-m", "plasticity_lab.lab", "run", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in records if "features/max/h1" in r]
    assert [r["task"] for r in measured] == [0, 1, 2] and all(r["features/max/h2"] > 0 for r in measured)
    logged = [row for row in history(run / "wandb") if "features/max/h1" in row]
    assert [row["features/max/h1"] for row in logged] == pytest.approx([r["features/max/h1"] for r in measured])

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["dashboard", "--project", "p", "--dry-run", str(run)]) == 0
    spec = json.loads(capsys.readouterr().out)
    panel = [p for s in spec["sections"] if s["name"] == "Representation" for p in s["panels"]
             if p["title"] == "largest activation"]
    assert panel and panel[0]["y"] == ["features/max/h1", "features/max/h2"]  # the run's own layers

    groups = group_runs(load_runs([run]))
    head, rows = table(groups)
    column = head.index("largest activation (final)")
    assert rows[0][column].mean == pytest.approx(measured[-1]["features/max/h1"] / 2
                                                              + measured[-1]["features/max/h2"] / 2, abs=1e-3)
    fig = diagnostics_figure(groups)
    titles = [ax.get_title() for ax in fig.axes]
    assert "largest activation (mean over layers)" in titles
    ax = fig.axes[titles.index("largest activation (mean over layers)")]
    assert ax.get_ylabel() == "activation" and len(ax.get_lines()[0].get_xdata()) == 3
    assert main(["plot", str(run)]) == 0 and (run / "plots" / "diagnostics.png").is_file()


def test_the_readme_metric_table_is_the_catalog():
    from plasticity_lab.metrics.catalog import markdown_table

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert markdown_table() in readme


def test_every_tracker_input_is_provided():
    """What the catalog promises a metric (INPUTS) is what the tracker's probes hold."""
    from dataclasses import fields

    from plasticity_lab.metrics.catalog import CADENCES, INPUTS
    from plasticity_lab.metrics.tracker import LayerProbe, StepProbe, TaskEndProbe, Tracker, WeightProbe

    probes = {("task_start", "layer"): LayerProbe, ("task_start", "weight_layer"): WeightProbe,
              ("step", "global"): StepProbe, ("task_end", "global"): TaskEndProbe}
    assert probes.keys() == INPUTS.keys()
    for key, cls in probes.items():
        for name in INPUTS[key]:  # a dataclass field, or a property computed once when first read
            assert name in {f.name for f in fields(cls)} or hasattr(cls, name), (cls, name)
    assert set(CADENCES) <= {f.name for f in fields(Tracker)}


def test_a_metric_declares_inputs_the_tracker_has():
    from plasticity_lab.metrics import metrics

    with pytest.raises(TypeError, match="input 'logits' is not one of"):
        metrics.register("bad/input_for_test", when="task_start", per="layer", inputs={"A": "logits"},
                         title="t", unit="u")(lambda A: 0.0)
    with pytest.raises(TypeError, match="when='sometimes'"):
        metrics.register("bad/when_for_test", when="sometimes", title="t", unit="u")(lambda A: 0.0)
    with pytest.raises(TypeError, match="parameters \\['A'\\] have no input"):
        metrics.register("bad/param_for_test", when="task_start", per="layer", title="t", unit="u")(lambda A: 0.0)
    assert not [n for n in metrics.names() if n.startswith("bad/")]
