"""Class-incremental CIFAR-100 on a fabricated fixture in the python-pickle format,
augmentation on tensors, and torchvision's ResNet-18 trained end to end."""
import pickle

import numpy as np
import pytest
import torch

from plasticity_lab.registry import ConfigError, DataError
from plasticity_lab.streams.cifar100 import MEAN, STD, IncrementalCIFAR100, random_crop_flip


def write_cifar(root, per_class=4, test_per_class=2):
    """``train`` / ``test`` pickles with bytes keys, as cifar-100-python.tar.gz ships them."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(100), n)
        d = {b"data": rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8), b"fine_labels": labels.tolist(),
             b"coarse_labels": (labels // 5).tolist(), b"batch_label": name.encode()}
        (root / name).write_bytes(pickle.dumps(d))
    return root


@pytest.fixture
def cifar_dir(tmp_path):
    return write_cifar(tmp_path / "cifar-100-python").parent  # the tarball's own folder is found too


def test_increments_are_cumulative_and_normalised(cifar_dir):
    s = IncrementalCIFAR100().build(seed=0, data=str(cifar_dir))
    assert s.num_tasks == 20 and s.scenario == "task" and s.augment is not None
    t0, t1 = s.task(0), s.task(1)
    assert len(t0.classes) == 5 and len(t1.classes) == 10 and set(t0.classes) < set(t1.classes)
    assert t0.x_train.shape == (20, 3, 32, 32) and t1.x_train.shape == (40, 3, 32, 32)
    assert set(t1.y_train.tolist()) == set(t1.classes) and t1.x_test.shape[0] == 20
    raw = pickle.loads((cifar_dir / "cifar-100-python/train").read_bytes(), encoding="bytes")
    i = raw[b"fine_labels"].index(int(t0.y_train[0]))
    pixel = raw[b"data"][i][1024 + 3 * 32 + 7] / 255.0  # green channel, row 3, column 7
    assert float(t0.x_train[0, 1, 3, 7]) == pytest.approx((pixel - MEAN[1]) / STD[1], rel=1e-5)
    assert [s.train_size(k) for k in range(3)] == [s.task(k).num_train for k in range(3)] == [20, 40, 60]  # for the ETA
    only_new = IncrementalCIFAR100(cumulative=False).build(0, str(cifar_dir)).task(1)
    assert set(only_new.y_train.tolist()) == set(t1.classes) - set(t0.classes)
    assert IncrementalCIFAR100(train_per_class=2).build(0, str(cifar_dir)).task(0).x_train.shape[0] == 10
    assert IncrementalCIFAR100().build(1, str(cifar_dir)).task(0).classes != t0.classes  # order from the seed


def test_crop_and_flip_give_a_shifted_maybe_mirrored_window():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 8, 8)
    out = random_crop_flip(x, padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    flips = 0
    for n in range(16):
        windows = [(padded[n, :, i:i + 8, j:j + 8], f) for i in range(5) for j in range(5) for f in (0, 1)]
        match = [f for w, f in windows if torch.equal(out[n], w.flip(2) if f else w)]
        assert match, f"image {n} is not a crop of its padded input"
        flips += match[0]
    assert 0 < flips < 16  # both flipped and unflipped images occur


def test_missing_or_corrupt_files_are_named(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-100 'train' file.*cifar-100-python.tar.gz"):
        IncrementalCIFAR100().build(0, str(tmp_path))
    root = write_cifar(tmp_path / "c")
    (root / "test").write_bytes(b"garbage")
    with pytest.raises(DataError, match="test is not a readable CIFAR-100 pickle"):
        IncrementalCIFAR100().build(0, str(root))
    with pytest.raises(ConfigError, match="stream.num_tasks"):
        IncrementalCIFAR100(num_tasks=21)


def test_resnet18_trains_two_increments(cifar_dir, tiny_run, tmp_path):
    s = tiny_run(base=["wandb.enabled=false", "progress=off", "experiment=cifar100_incremental",
                       f"data.root={cifar_dir}", "stream.num_tasks=2", "agent.network=resnet18", "train.epochs=1",
                       "train.batch_size=10", "metrics.probe_size=8", "metrics.probe_every=0", "metrics.hessian_every=0"])
    assert s["tasks_trained"] == 2 and len(s["acc_matrix"][1]) == 2
    assert "units/dead_frac/stage1" in s["final_metrics"] and "weights/mean_abs/out" in s["final_metrics"]
    with pytest.raises(ConfigError, match="agent.network.*resnet18.*unit resets"):
        tiny_run("interventions=[cbp]", base=["wandb.enabled=false", "progress=off", "experiment=cifar100_incremental",
                                              f"data.root={cifar_dir}", "agent.network=resnet18"], out="cbp")


def test_conv_net_reduced_preset_runs(cifar_dir, tiny_run):
    s = tiny_run(base=["wandb.enabled=false", "progress=off", "experiment=cifar100_incremental",
                       f"data.root={cifar_dir}", "stream.num_tasks=2", "train.epochs=2", "interventions=[cbp]",
                       "interventions.cbp.maturity_threshold=1", "interventions.cbp.replacement_rate=0.05"])
    assert s["tasks_trained"] == 2 and s["acc_matrix"][1][1] is not None  # the current task: every class seen so far
