"""House rules of the code itself: the import graph is a DAG, the orchestrator never imports torch,
every document a comment cites is in the repository and every section it cites exists."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "workers")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _import_graph() -> dict[str, set[str]]:
    """Every import statement at any depth (function-level imports count too), resolved to project modules."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                r = resolve(t)
                if r and r != mod and not mod.startswith(r + "."):  # a package's own face is not an edge
                    graph[mod].add(r)
    return graph


def test_the_import_graph_has_no_cycle():
    graph = _import_graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: a two-module cycle in a scratch package is found."""
    pkg = tmp_path / "workers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from workers import b\n")
    (pkg / "b.py").write_text("from workers.a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("workers",))
    graph = _import_graph()
    assert graph["workers.a"] == {"workers.b"} and graph["workers.b"] == {"workers.a"}


def test_importing_the_orchestrator_never_imports_torch():
    code = (
        "import importlib, pkgutil, sys, orchestrator\n"
        "for m in pkgutil.walk_packages(orchestrator.__path__, 'orchestrator.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'torchvision')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout


CITE = re.compile(r"(docs/[\w./-]+\.md)(?:\s*§\s*([\d.]*\d))?")
DOC = re.compile(r"\b([\w-]+\.md)\b")


def _tracked_sources() -> list[Path]:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.split()
    keep = (".py", ".yaml", ".toml", ".cfg", ".md", "Makefile", "Dockerfile")
    return [REPO / f for f in files if f.endswith(keep) and (REPO / f).is_file()]


def _sections(doc: Path) -> set[str]:
    """Section numbers of a Markdown document: `## 4.` / `### 4.11 cad_prune` -> {"4", "4.11"}."""
    out = set()
    for line in doc.read_text().splitlines():
        m = re.match(r"#+\s+(\d+(?:\.\d+)*)\.?\s", line)
        if m:
            out.add(m.group(1))
    return out


def test_every_cited_document_and_section_exists():
    missing = []
    for f in _tracked_sources():
        text = f.read_text(errors="replace")
        for name in DOC.findall(text):
            if not list(REPO.rglob(name)) and name not in missing:
                missing.append(f"{f.relative_to(REPO)} cites {name}, which is not in the repository")
        for doc, section in CITE.findall(text):
            path = REPO / doc
            if not path.is_file():
                missing.append(f"{f.relative_to(REPO)} cites {doc}, which does not exist")
            elif section and section not in _sections(path):
                missing.append(f"{f.relative_to(REPO)} cites {doc} §{section}, which has no such section")
    assert not missing, "\n".join(sorted(set(missing)))
