"""Every sweep file in sweeps/ validates and its header states its own size (issue #13, item 4).

Sweeps of data sets that live outside the repository name a placeholder root (/data/...); here it is
replaced by a folder of that format written by the test, with as many images per class as the sweep's
largest IPC needs, so validation (IPC limits, teacher rules, CAD advice) runs in full.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from datafiles import make_root

from orchestrator.grid import expand
from orchestrator.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]
# ImageNet-1K sweeps name a tree and torchvision's weights a user points them at: tested apart, on a stand-in tree
IMAGENET = sorted((REPO / "sweeps").glob("imagenet*.yaml"))
SWEEPS = sorted(p for p in (REPO / "sweeps").glob("*.yaml") if p not in IMAGENET)
ROOT = re.compile(r"(dataset: \{name: (\w+), root: )(/data/[^,}\s]+)")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict:
    made: dict[str, Path] = {}

    def root(name: str, per_class: int) -> Path:
        if name not in made:
            made[name] = tmp_path_factory.mktemp(name)
            make_root(name, made[name], per_class=per_class)
        return made[name]

    return root


def header(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.startswith("#"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_file_validates_and_its_header_counts_its_trials(path, roots):
    text = path.read_text()
    m = ROOT.search(text)
    if m:
        ipcs = [int(v) for v in re.search(r"ipc: \[([\d, ]+)\]", text).group(1).split(",")]
        text = text.replace(m.group(0), f"{m.group(1)}{roots(m.group(2), max(ipcs) + 11)}")
    spec = parse_spec(text, source=path.name)
    trials = expand(spec)
    stated = re.search(r"(\d[\d,]*) trials", header(text))
    assert stated, f"{path.name}: the header comment gives no trial count"
    assert int(stated.group(1).replace(",", "")) == len(trials), f"{path.name}: the header says {stated.group(0)}"
    assert f"ddsweep run sweeps/{path.name}" in header(text)


@pytest.fixture(scope="module")
def imagenet_stand_in(tmp_path_factory) -> tuple[Path, Path]:
    """1000 WNID-named classes with as many train files as the sweeps' largest IPC needs and one val file each:
    hard links to one small JPEG per class (nothing is decoded before a run), and a weights file to hash."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    per_class = max(
        max(map(int, re.search(r"ipc: \[([\d, ]+)\]", p.read_text()).group(1).split(","))) for p in IMAGENET
    )
    for c in range(1000):
        wnid = f"n{c:08d}"
        src = root / f"{wnid}.JPEG"
        Image.new("RGB", (40, 30), (c % 256, 90, 30)).save(src)
        for split, n in (("train", per_class + 11), ("val", 1)):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                (root / split / wnid / f"{wnid}_{i}.JPEG").hardlink_to(src)
    weights = root / "resnet18.pth"
    weights.write_bytes(b"stand-in weights: hashed by validation, never loaded before a run")
    return root, weights


@pytest.mark.slow
@pytest.mark.parametrize("path", IMAGENET, ids=[p.stem for p in IMAGENET])
def test_every_imagenet_sweep_validates_plans_and_counts_its_trials(path, imagenet_stand_in, tmp_path, capsys):
    from orchestrator import cli

    root, weights = imagenet_stand_in
    text = path.read_text()
    assert "root: /data/imagenet\n" in text and "/data/weights/resnet18-f37072fd.pth" in text
    text = re.sub(r"  val_labels: .*\n", "", text.replace("root: /data/imagenet\n", f"root: {root}\n"))
    text = text.replace("/data/weights/resnet18-f37072fd.pth", str(weights))
    text = re.sub(r"storage: \S+", f"storage: {tmp_path}", text)
    trials = expand(parse_spec(text, source=path.name))
    stated = re.search(r"(\d[\d,]*) trials", header(text))
    assert stated and int(stated.group(1).replace(",", "")) == len(trials), f"{path.name}: {stated}"
    assert f"ddsweep run sweeps/{path.name}" in header(text)
    edited = tmp_path / path.name
    edited.write_text(text)
    assert cli.main(["plan", str(edited), "--estimate", "--images-per-second", "3000"]) == 0
    assert "GPU-hours" in capsys.readouterr().out
