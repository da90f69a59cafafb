"""The `lab` command: bad input exits 2 with one line before training; list; multirun; plot."""
import csv
import gzip
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from plasticity_lab.lab.cli import main

QUIET = ["wandb.enabled=false", "progress=off"]


@pytest.mark.parametrize("overrides,names", [
    (["activation=swishh"], ["activation", "swishh", "relu", "tanh"]),
    (["agent.optimizer.lr=-0.1"], ["agent.optimizer.lr", "-0.1", "positive"]),
    (["agent.optimizer.name=adamz"], ["agent.optimizer.name", "adamz", "adam"]),
    (["stream.num_tasks=0"], ["stream.num_tasks", "0", "positive"]),
    (["agent.hidden=[]"], ["agent.hidden", "[]", "non-empty"]),
    (["agent.hiden=[10]"], ["agent.hiden", "agent.hidden"]),
    (["stream.scenario=class"], ["stream.scenario", "num_tasks"]),
    (["experiment=nope"], ["experiment", "nope", "permuted_mnist", "split_mnist"]),
    (["seed=abc"], ["seed", "abc"]),
    (["train.batch_size=0"], ["train.batch_size", "positive"]),
    (["data.root=/nonexistent/mnist"], ["data.root", "/nonexistent/mnist", "IDX"]),
    (["device=cuda:0"] if not __import__("torch").cuda.is_available() else ["device=tpu"], ["device"]),
    (["interventions=[nope]"], ["interventions", "nope"]),
    (["seed=-1"], ["seed=-1", "0..2**63-1"]),
    (["seed=1e20"], ["seed", "1e20"]),
    (["train.threads=-1"], ["train.threads=-1", "positive"]),
    (["agent.hidden=[100000,100000]"], ["agent.hidden", "GiB", "memory free"]),
    (["agent.optimizer.lr=inf"], ["agent.optimizer.lr=inf", "finite"]),
    (["agent.optimizer.lr=1e400"], ["agent.optimizer.lr=inf", "finite"]),
    (["seeds=[]"], ["seeds=[]", "non-empty"]),
    (["seed=1", "seed=2"], ["seed", "given twice"]),
    (["=5"], ["override='=5'", "key=value"]),
    (["seeds=[0,1]", "agent.optimizer.name=lbfgs"], ["seeds=[0, 1]", "LBFGS", "elementwise", "--multirun seed=0,1"]),
    (["out_dir=/proc/version/run"], ["out_dir", "/proc/version/run"]),  # under a file
    (["out_dir=/sys/lab-run"], ["out_dir", "/sys/lab-run", "create and write"]),  # under a folder no one may write
])
def test_bad_input_is_one_clear_line_and_exit_2(overrides, names, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["run", *QUIET, *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("lab: error:"), err
    for n in names:
        assert n in err, (n, err)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*"))  # nothing left behind


def test_a_plugin_that_fails_to_import_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_plugin.py").write_text("from plasticity_lab.agents.interventions import interventions\n\n"
                                               "@interventions.register('not_an_intervention')\n"
                                               "class NotOne:\n    pass\n")
    assert main(["run", *QUIET, "plugins=[broken_plugin]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken_plugin" in err and "broken_plugin.py:3" in err, err
    assert "must be a class deriving from plasticity_lab.agents.interventions.Intervention" in err


def _idx(path, array, kind=0x08):
    import struct

    import numpy as np

    header = bytes([0, 0, kind, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(header + array.astype({0x08: np.uint8, 0x09: np.int8, 0x0D: ">f4"}[kind]).tobytes())


@pytest.mark.parametrize("case,expected", [
    ("empty", "holds no examples"), ("negative labels", "int8 labels"), ("float images", "float32 pixels"),
])
def test_bad_idx_files_are_named(case, expected, tmp_path, capsys, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    n = 0 if case == "empty" else 4
    images, labels = np.zeros((n, 28, 28)), np.arange(n) % 10
    _idx(tmp_path / "train-images-idx3-ubyte", images, 0x0D if case == "float images" else 0x08)
    _idx(tmp_path / "train-labels-idx1-ubyte", -labels if case == "negative labels" else labels,
         0x09 if case == "negative labels" else 0x08)
    _idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)))
    _idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(2))
    assert main(["run", *QUIET, f"data.root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train-" in err and expected in err, err


@pytest.mark.parametrize("args,expected", [
    (["--out", "{file}"], "is a file"),
    (["--num-classes", "0"], "--num-classes=0"),
    (["--train-batches", "0"], "--train-batches=0"),
])
def test_lab_data_refuses_bad_arguments_in_one_line(args, expected, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    args = [a.replace("{file}", str(tmp_path / "a_file")) for a in args]
    base = {"--out": str(tmp_path / "out")}
    base.update(dict(zip(args[::2], args[1::2])))
    flat = [x for kv in base.items() for x in kv]
    assert main(["data", "imagenet32", "--src", str(tmp_path), *flat]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_corrupt_data_file_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    assert main(["run", *QUIET, f"data.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and "corrupt" in err


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "plasticity_lab.lab", "run", *QUIET, "activation=nope"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "activation='nope'" in p.stderr


def test_list_json_shows_registries_with_parameters(capsys):
    assert main(["list", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert {"relu", "tanh", "sigmoid", "leaky_relu"} <= set(table["activations"])
    assert table["activations"]["leaky_relu"] == {"negative_slope": 0.01}
    assert table["streams"]["split_mnist"]["scenario"] == "class"
    assert {"permuted_mnist", "split_mnist"} <= set(table["experiments"])
    assert "sgd" in table["optimizers"] and "adam" in table["optimizers"] and "upgd" in table["optimizers"]
    assert table["interventions"]["cbp"]["util_type"] == "adaptable_contribution"
    assert table["avalanche_strategies"]["ewc"]["ewc_lambda"] == 100.0
    assert table["tracker"]["metrics"]["probe_size"] == 1000 and table["metrics"]["units/dead_frac/<layer>"]["unit"] == "fraction of units"
    assert main(["list"]) == 0
    assert "leaky_relu  (negative_slope=0.01)" in capsys.readouterr().out


def test_run_prints_table_and_multirun_sweeps_seeds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = [*QUIET, "agent.hidden=[16]", "stream.num_tasks=2", "stream.examples_per_task=128"]
    assert main(["run", *tiny, "out_dir=one"]) == 0
    out = capsys.readouterr().out
    assert "online accuracy" in out and "output: one" in out
    assert main(["run", "--multirun", *tiny, "activation=relu,tanh", "seed=0,1"]) == 0
    summaries = sorted(Path("runs/multirun").rglob("summary.json"))
    # job folders are named after the swept values (the fixed overrides left out)
    assert sorted(p.parent.name for p in summaries) == ["activation=relu,seed=0", "activation=relu,seed=1",
                                                         "activation=tanh,seed=0", "activation=tanh,seed=1"]
    runs = [json.loads(p.read_text()) for p in summaries]
    assert sorted((r["activation"], r["seed"]) for r in runs) == [("relu", 0), ("relu", 1), ("tanh", 0), ("tanh", 1)]
    assert len({tuple(r["online_loss"]) for r in runs}) == 4
    # lab plot redraws from a finished run directory
    assert main(["plot", str(summaries[0].parent)]) == 0
    assert (summaries[0].parent / "plots" / "acc_matrix.png").is_file()
    capsys.readouterr()
    # several runs: grouped by method (the seed aside), mean ± s.e. over seeds
    assert main(["compare", "runs/multirun"]) == 0
    table = capsys.readouterr().out.splitlines()
    rows = [l for l in table if l.startswith("| activation=")]
    assert len(rows) == 2 and all("| 2 |" in r for r in rows)
    relu = [r for r in runs if r["activation"] == "relu"]
    mean = sum(r["avg_accuracy"] for r in relu) / 2
    assert f"{mean:.3f} ±" in [r for r in rows if "activation=relu" in r][0]
    assert main(["compare", "runs/multirun", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    relu_row = [r for r in rows if "activation=relu" in r["method"]][0]
    assert float(relu_row["avg accuracy mean"]) == pytest.approx(mean)
    se = abs(relu[0]["avg_accuracy"] - relu[1]["avg_accuracy"]) / 2  # std(ddof=1)/sqrt(2) of two values
    assert float(relu_row["avg accuracy se"]) == pytest.approx(se)
    assert main(["plot", "runs/multirun", "--out", "cmp"]) == 0
    for name in ("online_accuracy.png", "diagnostics.png", "final_accuracy.png", "acc_matrix_0.png", "acc_matrix_1.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 10_000, name


def test_a_sweep_with_a_failed_job_says_so_and_exits_with_its_status(tmp_path, capsys, monkeypatch):
    """A job that diverges neither ends the sweep nor hides: the sweep lists
    it with its error line and exits 3; lab compare lists it with its status;
    a lone run has no "± 0.000"."""
    monkeypatch.chdir(tmp_path)
    tiny = [*QUIET, "stream.num_tasks=2", "stream.examples_per_task=512"]  # 1e9 diverges within 32 steps here
    assert main(["run", "--multirun", *tiny, "agent.optimizer.lr=0.1,1e9"]) == 3
    out = capsys.readouterr().out
    assert "  agent.optimizer.lr=0.1: finished" in out
    assert "  agent.optimizer.lr=1000000000.0: failed (exit 3): the training loss became nan" in out
    assert "2 job(s)" in out and "1 finished, 1 failed" in out
    assert main(["compare", "runs/multirun"]) == 0
    lines = capsys.readouterr().out.splitlines()
    finished = [l for l in lines if "| finished |" in l]
    failed = [l for l in lines if "agent.optimizer.lr=1000000000.0" in l]
    assert len(finished) == 1 and "±" not in finished[0] and "| 1 |" in finished[0]
    assert len(failed) == 1 and "failed (exit 3): the training loss became nan" in failed[0]


def test_compare_shows_a_regression_run_s_squared_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", *QUIET, "experiment=bit_flipping", "stream.num_tasks=2", "stream.flip_every=50",
                 "out_dir=bits"]) == 0
    capsys.readouterr()
    assert main(["compare", "bits", "--format", "csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert "avg accuracy mean" not in row
    summary = json.loads(Path("bits/summary.json").read_text())
    assert float(row["online sq. error (last 10%) mean"]) == pytest.approx(summary["online_loss"][-1])
    assert row["online sq. error (last 10%) se"] == ""  # one run: no spread measured


def test_dashboard_dry_run_prints_a_valid_workspace_spec(capsys):
    assert main(["dashboard", "--project", "plasticity", "--dry-run"]) == 0
    spec = json.loads(capsys.readouterr().out)
    titles = " ".join(p["title"] for s in spec["sections"] for p in s["panels"])
    for what in ("online accuracy", "dead units", "effective rank", "weight magnitude", "forgetting", "plasticity"):
        assert what in titles, what
    assert "activation.name" in spec["group_by"]
    panels = {p["title"]: p for s in spec["sections"] for p in s["panels"]}
    import re
    dead = panels["dead units"]  # per-layer metrics match every layer by name, conv layers too (not h1-h3 only)
    assert all(re.match(dead["metric_regex"], k) for k in ("units/dead_frac/h1", "units/dead_frac/conv1", "units/dead_frac/fc2"))
    assert panels["forgetting (Chaudhry)"]["y"] == ["eval/forgetting"]
    from plasticity_lab.lab.dashboard import build_workspace

    ws = build_workspace("plasticity", "someone", spec)
    assert len(ws.sections) == len(spec["sections"]) and ws.sections[0].panels[0].groupby_rangefunc == "stderr"


def _presets() -> list[str]:
    from plasticity_lab.lab.config import config_dir

    return sorted(p.stem for p in Path(config_dir(), "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", _presets())
def test_every_preset_composes_names_itself_and_says_where_its_values_come_from(name, compose):
    from plasticity_lab.lab.config import config_dir

    if name == "tune_cbp":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose([f"experiment={name}"])
    assert cfg.experiment == name  # runs, W&B groups and tables are named by it
    text = Path(config_dir(), "experiment", f"{name}.yaml").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    # each preset cites a paper (its year) and says which values are the lab's own choice, if any
    assert re.search(r"\b20[0-2]\d\b", header) or "lab choice" in header, header


def test_a_named_activation_variant_carries_its_value_and_a_sweep_gives_it_to_that_activation_only(compose):
    cfg = compose(["experiment=split_mnist_elephant_reduced"])
    assert cfg.activation.name == "elephant" and cfg.activation.a == 0.5
    assert dict(compose(["experiment=split_mnist_elephant_reduced", "activation=relu"]).activation) == {"name": "relu"}
