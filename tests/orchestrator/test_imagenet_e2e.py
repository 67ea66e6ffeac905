"""ImageNet's layout end to end through the CLI with a real embedded Ray cluster (slow): 1000 WNID classes, a flat
val/ with Kaggle's label file, the sharded cache built by parallel stage tasks, resnet18 at a small image size under
all three regimes with herding (teacher features) and EL2N (score runs); and `ddsweep check-teacher`."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import REPO
from imagetrees import dataset, make_tree
from test_e2e import run_cli

from orchestrator import results
from workers import models
from workers.artifacts import ArtifactStore, sha256_file
from workers.config import Named, TeacherConfig, TrialConfig

pytestmark = pytest.mark.slow


def test_a_sweep_on_the_1000_class_tree_gives_one_row_per_trial(wnid_tree, tmp_path, cli_env):
    root, labels = wnid_tree
    sweep = tmp_path / "imagenet.yaml"
    sweep.write_text(f"""
name: imagenet1k
storage: {tmp_path / "runs"}
dataset: {{name: imagefolder, root: {root}, val_labels: {labels}, image_size: 8, minival_per_class: 1,
          shard_size: 400}}
teacher: {{arch: resnet18, epochs: 1, batch_size: 125, min_top1_factor: 0.0}}
student: {{arch: resnet18}}
budget: {{steps: 2}}
grid:
  selector: [herding, {{name: el2n, runs: 1, epoch: 1}}]
  regime: [hl, sl, sl_kd]
  ipc: [1]
  seed: [0]
train: {{batch_size: 100, eval_points: 1, sl_kd: {{kd_backend: stored, kd_topk: 10}}}}
resources: {{cpus_per_trial: 1}}
""")
    plan = run_cli(["plan", str(sweep)], cli_env)
    assert plan.returncode == 0, plan.stderr
    assert "stage shard: 9 needed by pending trials, 9 to build" in plan.stdout  # 3 splits x 3 shards of <= 400
    assert "(train 8/8, val 8/8, bilinear): 576.0 kB in 9 shards; to write 576.0 kB (9 shards)" in plan.stdout
    # two subsets (herding, el2n) x 1 epoch x 1000 views x top-10 (fp16 + int16)
    assert "stored SL+KD labels: 2 set(s), 80.0 kB in 2 epoch files; to write 80.0 kB (2 files)" in plan.stdout
    out = run_cli(["run", str(sweep)], cli_env, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    df = results.load(tmp_path / "runs", "imagenet1k")
    assert len(df) == 6 and df["trial_id"].is_unique
    assert set(df["regime"]) == {"hl", "sl", "sl_kd"} and set(df["selector"]) == {"herding", "el2n"}
    assert df["top1"].between(0, 1).all() and (df["student_arch"] == "resnet18").all()
    assert (df["images_seen"] == 2 * 100).all()
    cfg = TrialConfig.from_json(json.loads(df["config_json"].iloc[0]))
    opts = cfg.dataset.opts  # the resolution is explicit in every row's config
    assert (opts["image_size"], opts["train_crop"], opts["train_resize"], opts["val_crop"], opts["val_resize"]) == (
        8,
        8,
        8,
        8,
        8,
    )
    assert opts["interpolation"] == "bilinear" and cfg.trial_id == df["trial_id"].iloc[0]
    kd = df[df["regime"] == "sl_kd"]
    assert (kd["soft_label_bytes"] == 1000 * 10 * 4).all()  # stored top-10 labels replayed from disk
    again = run_cli(["plan", str(sweep)], cli_env)
    assert "done 6, pending 0" in again.stdout
    sl = df[df["regime"] == "sl"]
    assert (sl["soft_label_bytes"] == 1000 * 1000 * 4).all()  # one label per image: n = 1000, C = 1000
    arts = ArtifactStore(tmp_path / "runs" / "artifacts")
    cache = [p for p in (tmp_path / "runs" / "artifacts" / "cache").iterdir()]
    assert len(cache) == 1
    m = json.loads((cache[0] / "manifest.json").read_text())
    assert m["splits"] == {
        "minival": {"rows": 1000, "files": 1000, "shape": [3, 8, 8]},
        "train": {"rows": 1000, "files": 1000, "shape": [3, 8, 8]},
        "val": {"rows": 1000, "files": 1000, "shape": [3, 8, 8]},
    }
    assert arts.root.is_dir()


def test_check_teacher_prints_the_val_top1_of_a_weights_file(tmp_path, cli_env):
    root = make_tree(tmp_path / "data", per_class=6, val=5, size=(40, 30), ext=".JPEG")
    arch = {"depth": 2, "width": 8, "norm": "instance"}
    weights = tmp_path / "teacher.pt"
    torch.save(models.build("convnet", arch, 3, (3, 16, 16), 4).state_dict(), weights)
    sweep = tmp_path / "check.yaml"
    sweep.write_text(f"""
name: check
storage: {tmp_path / "runs"}
dataset: {{name: imagefolder, root: {root}, image_size: 16, val_resize: 20, minival_per_class: 1}}
teacher: {{arch: convnet, depth: 2, width: 8, weights: {weights}}}
student: {{arch: convnet, depth: 2, width: 8}}
budget: {{steps: 1}}
grid: {{selector: [random], regime: [sl], ipc: [1], seed: [0]}}
""")
    out = run_cli(["check-teacher", str(sweep)], cli_env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "resize 20 / centre crop 16, bilinear" in out.stdout and "(15 images" in out.stdout
    top1 = float(re.search(r"val top-1 ([\d.]+)%", out.stdout).group(1))
    from workers.teacher import check_teacher

    teacher = TeacherConfig(Named.make("convnet", arch), weights=str(weights), weights_sha256=sha256_file(weights))
    ds = dataset(root, image_size=16, val_resize=20, minival_per_class=1)
    want = check_teacher(ds.to_json(), teacher.to_json(), ArtifactStore(tmp_path / "runs" / "artifacts"))
    assert top1 == pytest.approx(100 * want["val_top1"], abs=0.005)
    assert not (REPO / "runs").exists()
