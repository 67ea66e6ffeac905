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
# Templates whose paths a user edits first (ImageNet-1K with torchvision's weights: no tree or weights file here)
TEMPLATES = {"imagenet"}
SWEEPS = sorted(p for p in (REPO / "sweeps").glob("*.yaml") if p.stem not in TEMPLATES)
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
