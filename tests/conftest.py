"""Shared fixtures: a throw-away HOME for Ray (auth token, ~/.ray), the repo root, tiny sweep files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def ray_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def cli_env(ray_home) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HOME=str(ray_home), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="session")
def wnid_tree(tmp_path_factory) -> tuple[Path, Path]:
    """ImageNet's layout at 1000 classes: train/<wnid>/ x 2 small JPEGs, a flat val/ (one JPEG per class) and
    Kaggle's LOC_val_solution.csv. Returns (root, label file)."""
    from imagetrees import make_tree, wnids

    root = tmp_path_factory.mktemp("wnid1000") / "imagenet"
    make_tree(root, classes=wnids(1000), per_class=2, val=1, size=(20, 16), ext=".JPEG", flat_val="csv")
    return root, root / "LOC_val_solution.csv"


def write_sweep(
    path: Path,
    *,
    name: str = "tiny",
    ipc=(2, 5),
    seeds=(0, 1),
    epochs: int = 20,
    storage: Path | None = None,
    extra: str = "",
) -> Path:
    """A small digits sweep for end-to-end tests (a few seconds per trial on one CPU)."""
    path.write_text(f"""
name: {name}
storage: {storage or path.parent / "store"}
dataset: {{name: digits}}
student: {{arch: convnet, depth: 2, width: 16}}
budget: {{epochs: {epochs}}}
grid:
  selector: [random]
  regime: [hl]
  ipc: [{", ".join(map(str, ipc))}]
  seed: [{", ".join(map(str, seeds))}]
train: {{optimizer: adamw, lr: 0.01, batch_size: 32}}
resources: {{cpus_per_trial: 1}}
{extra}
""")
    return path
