"""cifar10 / cifar100 from tiny folders written here in torchvision's on-disk format (issue #13, item 3)."""

from __future__ import annotations

import numpy as np
import pytest
from datafiles import dump, make_cifar10, make_cifar100

from orchestrator.grid import expand
from orchestrator.spec import SpecError, parse_spec
from workers.data import DataError, cifar, load_splits


def test_cifar10_round_trips_from_torchvision_batches(tmp_path):
    w = make_cifar10(tmp_path)
    s = cifar.load_cifar10(str(tmp_path), minival_per_class=4)
    assert s.class_names == tuple(w["names"]) and s.image_shape == (3, 32, 32) and s.train_x.dtype == np.uint8
    assert len(s.train_y) == 10 * 11 and np.bincount(s.minival_y).tolist() == [4] * 10
    assert np.array_equal(s.test_x.reshape(-1, 3072), w["test_x"]) and s.test_y.tolist() == w["test_y"]
    # train and minival are exactly the official train batches, in file order, with nothing lost or repeated
    tr, mv = cifar.hold_out(np.asarray(w["train_y"]), 10, 4)
    assert sorted(np.concatenate([tr, mv]).tolist()) == list(range(150))
    assert np.array_equal(s.train_x.reshape(-1, 3072), w["train_x"][tr])
    assert np.array_equal(s.minival_x.reshape(-1, 3072), w["train_x"][mv])
    # the planes are channels: class k's red plane sits at 20 k + noise below 8
    k = s.train_y[0]
    assert 20 * k <= s.train_x[0, 0].min() and s.train_x[0, 0].max() < 20 * k + 8
    # the data folder itself is accepted as root; the split is fixed
    again = cifar.load_cifar10(str(tmp_path / "cifar-10-batches-py"), minival_per_class=4)
    assert np.array_equal(again.minival_y, s.minival_y) and np.array_equal(again.train_x, s.train_x)


def test_cifar100_reads_the_fine_labels(tmp_path):
    w = make_cifar100(tmp_path)
    s = cifar.load_cifar100(str(tmp_path), minival_per_class=2)
    assert len(s.class_names) == 100 and s.class_names[7] == "class007"
    assert np.bincount(s.train_y).tolist() == [10] * 100 and np.bincount(s.minival_y).tolist() == [2] * 100
    assert np.array_equal(s.test_y, w["ty"]) and np.array_equal(s.test_x.reshape(-1, 3072), w["tx"])
    d = cifar.describe_cifar100(str(tmp_path), minival_per_class=2)
    assert d["num_train"] == 1000 and d["train_class_sizes"] == [10] * 100 and d["image_shape"] == [3, 32, 32]


def test_a_missing_folder_says_what_to_put_where_and_nothing_is_downloaded(tmp_path):
    with pytest.raises(DataError) as info:
        cifar.load_cifar10(str(tmp_path))
    msg = str(info.value)
    assert msg.startswith(f"dataset.root: '{tmp_path}' has no cifar-10-batches-py/ folder")
    assert "data_batch_1" in msg and f"torchvision.datasets.CIFAR10('{tmp_path}', download=True)" in msg
    assert "cifar-10-python.tar.gz" in msg and not any(tmp_path.iterdir())
    make_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(DataError, match=r"cifar-100-python lacks test of CIFAR-100; ddsweep never downloads"):
        cifar.load_cifar100(str(tmp_path))
    # the same message reaches the user through the sweep file, with its YAML path
    with pytest.raises(SpecError) as info:
        parse_spec(SWEEP.format(name="cifar100", root=tmp_path))
    assert any(p.startswith("dataset.root:") and "lacks test" in p for p in info.value.problems)
    with pytest.raises(SpecError) as info:
        parse_spec(SWEEP.format(name="cifar10", root=tmp_path).replace(f"root: {tmp_path}, ", ""))
    assert any(
        "dataset.root: is required for cifar10: the folder that holds torchvision's cifar-10" in p
        for p in info.value.problems
    )


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    make_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    dump(tmp_path / "cifar-10-batches-py" / "test_batch", {"data": Evil(), "labels": []})
    with pytest.raises(DataError, match=r"refusing to build (posix|os|nt)\.system"):
        cifar.load_cifar10(str(tmp_path))
    assert not (tmp_path / "pwned").exists()


SWEEP = """
name: c
dataset: {{name: {name}, root: {root}, minival_per_class: 3}}
student: {{arch: convnet, depth: 2, width: 8}}
budget: {{epochs: 2}}
grid: {{selector: [random], regime: [hl], ipc: [2], seed: [0]}}
train: {{batch_size: 16}}
"""


def test_a_cifar_trial_trains_on_the_generated_folder(tmp_path):
    from workers.trial import TrialContext, run_trial

    make_cifar10(tmp_path / "data")
    spec = parse_spec(SWEEP.format(name="cifar10", root=tmp_path / "data"))
    (trial,) = expand(spec)
    assert load_splits(trial.dataset).num_classes == 10
    with pytest.raises(SpecError) as info:
        parse_spec(SWEEP.format(name="cifar10", root=tmp_path / "data").replace("ipc: [2]", "ipc: [13]"))
    assert any(
        p.startswith("grid.ipc[0]: 13 is more than the smallest class has (12 train images")
        for p in info.value.problems
    )
    out = run_trial(trial, TrialContext(artifacts_root=tmp_path / "artifacts", num_threads=1))
    assert out["images_seen"] == 2 * 20 and out["dataset"] == "cifar10" and 0.0 <= out["top1"] <= 1.0
