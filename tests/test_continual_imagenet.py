"""`lab data imagenet32` on a fixture in the published file format, the
continual-ImageNet stream over its output, and the paper's conv net trained
end to end with continual backprop on conv channels."""
import json
import pickle

import numpy as np
import pytest
import torch

from plasticity_lab.lab.cli import main
from plasticity_lab.registry import DataError
from plasticity_lab.streams.imagenet32 import convert

CLASSES, PER_BATCH = 4, 60


def write_fixture(root, classes=CLASSES, batches=10, rng=None):
    """train_data_batch_1..N and val_data: pickled dicts of uint8 (N, 3072) rows (R, G, B planes) and 1-based labels."""
    rng = rng or np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    images = {}
    for i in range(1, batches + 1):
        labels = np.tile(np.arange(1, classes + 1), PER_BATCH // classes)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        d = {"data": data, "labels": labels.tolist(), "mean": data.mean(0)}
        (root / f"train_data_batch_{i}").write_bytes(pickle.dumps(d))
        images[i] = d
    val = {"data": rng.integers(0, 256, size=(2 * classes, 3072), dtype=np.uint8),
           "labels": list(np.repeat(np.arange(1, classes + 1), 2))}
    np.savez(root / "val_data.npz", **val)  # the .npz release of the same format
    return images


def test_convert_writes_per_class_arrays_in_file_order(tmp_path):
    images = write_fixture(tmp_path / "src")
    assert main(["data", "imagenet32", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                 "--num-classes", str(CLASSES)]) == 0
    meta = json.loads((tmp_path / "out/meta.json").read_text())
    assert meta["counts"]["train"] == [10 * PER_BATCH // CLASSES] * CLASSES and meta["counts"]["val"] == [2] * CLASSES
    cls2 = np.load(tmp_path / "out/train/2.npy")  # label 3 in the files
    assert cls2.shape == (150, 3, 32, 32) and cls2.dtype == np.uint8
    # image 0 of class 2 is row 2 of batch 1; its green plane is bytes 1024..2047, row-major 32x32
    row = images[1]["data"][2]
    assert np.array_equal(cls2[0, 1], row[1024:2048].reshape(32, 32))
    assert np.array_equal(cls2[15], images[2]["data"][2].reshape(3, 32, 32))  # batch 2 follows batch 1


@pytest.mark.parametrize("damage, message", [
    (lambda src: (src / "train_data_batch_7").unlink(), "lacks train_data_batch_7.*partial input refused"),
    (lambda src: (src / "train_data_batch_3").write_bytes((src / "train_data_batch_3").read_bytes()[:5000]),
     "train_data_batch_3 is not a readable ImageNet32 batch.*truncated"),
    (lambda src: (src / "train_data_batch_2").write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.float32),
                                                                       "labels": [1, 2, 3, 4]})),
     "train_data_batch_2: 'data' is float32 .*expected uint8"),
    (lambda src: (src / "train_data_batch_2").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8),
                                                                       "labels": [1, 9]})),
     r"labels span 1..9, expected 1..4"),
    (lambda src: (src / "train_data_batch_5").write_bytes(pickle.dumps([1, 2])), "expected a dict with 'data' and 'labels'"),
], ids=["missing_file", "truncated", "wrong_dtype", "bad_label", "not_a_dict"])
def test_convert_refuses_bad_input(tmp_path, damage, message, capsys):
    write_fixture(tmp_path / "src")
    damage(tmp_path / "src")
    with pytest.raises(DataError, match=message):
        convert(tmp_path / "src", tmp_path / "out", num_classes=CLASSES, progress=lambda _: None)
    assert main(["data", "imagenet32", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "o2"),
                 "--num-classes", str(CLASSES)]) == 2
    assert "lab: error:" in capsys.readouterr().err


def test_convert_refuses_a_missing_class(tmp_path):
    write_fixture(tmp_path / "src", classes=CLASSES - 1)
    with pytest.raises(DataError, match="no images of class.*4 among 4"):
        convert(tmp_path / "src", tmp_path / "out", num_classes=CLASSES, progress=lambda _: None)


@pytest.fixture
def imagenet_dir(tmp_path):
    write_fixture(tmp_path / "src", classes=6)
    convert(tmp_path / "src", tmp_path / "data", num_classes=6, progress=lambda _: None)
    return tmp_path / "data"


def test_stream_pairs_classes_from_the_seed(imagenet_dir):
    from plasticity_lab.streams.continual_imagenet import ContinualImageNet

    s = ContinualImageNet(num_tasks=5, train_per_class=60, test_per_class=40).build(0, str(imagenet_dir))
    pairs = [s.task(k).origin["imagenet_classes"] for k in range(5)]
    assert sorted(c for p in pairs[:3] for c in p) == list(range(6)) and pairs[3] == pairs[0]  # the order repeats
    t = s.task(1)
    assert t.x_train.shape == (120, 3, 32, 32) and t.x_test.shape == (80, 3, 32, 32)
    a = np.load(imagenet_dir / f"train/{pairs[1][0]}.npy")
    assert torch.equal(t.x_train[0], torch.from_numpy(a[0]).float() / 255)  # first train image of the pair's class
    assert torch.equal(t.x_test[0], torch.from_numpy(a[60]).float() / 255)  # test images follow the train images
    assert t.y_train.tolist() == [0] * 60 + [1] * 60
    with pytest.raises(DataError, match="fewer than train_per_class.*lower stream.train_per_class"):
        ContinualImageNet().build(0, str(imagenet_dir))  # 600 + 100 per class: more than the fixture has


def test_stream_says_how_to_prepare_missing_data(tmp_path):
    from plasticity_lab.streams.continual_imagenet import ContinualImageNet

    with pytest.raises(DataError, match="lab data imagenet32 --src"):
        ContinualImageNet().build(0, str(tmp_path))
    with pytest.raises(DataError, match="needs data.root"):
        ContinualImageNet().build(0, None)


def test_conv_net_trains_continual_imagenet_with_cbp_on_channels(imagenet_dir, tiny_run, tmp_path):
    """The reduced preset on the fixture: conv net, new heads, CBP replacing conv filters and fc units."""
    s = tiny_run(base=["wandb.enabled=false", "progress=off", "experiment=continual_imagenet", f"data.root={imagenet_dir}",
                       "stream.num_tasks=3", "stream.train_per_class=60", "stream.test_per_class=40", "train.epochs=2",
                       "interventions=[cbp]", "interventions.cbp.replacement_rate=0.05",
                       "interventions.cbp.maturity_threshold=2", "metrics.probe_every=3"])
    assert s["tasks_trained"] == 3 and not s["fused_path"]
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    keys = set().union(*records)
    for name in ("conv1", "conv2", "conv3", "fc1", "fc2"):
        assert f"units/dead_frac/{name}" in keys and f"rank/effective/{name}" in keys and f"cbp/replaced/{name}" in keys
    assert "weights/mean_abs/out" in keys and "plasticity/probe_remaining" in keys
    assert s["acc_matrix"][-1][-1] is not None
