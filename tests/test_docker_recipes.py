"""The cluster recipes in docker/ agree with pyproject.toml and with the repository.

Each check returns the problems it finds. test_recipes_agree runs every check on the real files;
test_drift_is_caught changes one file (in memory) the way it could drift and expects the check
that guards it to complain, so a check that silently stopped looking would be noticed.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
VERSION = r"\d+\.\d+\.\d+"


@dataclass
class Recipes:
    pyproject: dict
    dockerfile: str
    cluster: dict
    rayjob: dict
    readme: str
    root: Path

    @classmethod
    def read(cls, root: Path = REPO) -> Recipes:
        docker = root / "docker"
        return cls(
            pyproject=tomllib.loads((root / "pyproject.toml").read_text()),
            dockerfile=(docker / "Dockerfile").read_text(),
            cluster=yaml.safe_load((docker / "cluster.yaml").read_text()),
            rayjob=yaml.safe_load((docker / "rayjob.yaml").read_text()),
            readme=(docker / "README.md").read_text(),
            root=root,
        )


# ---- reading the files ---------------------------------------------------------------------


def requirement(pyproject: dict, name: str) -> Requirement:
    for dep in pyproject["project"]["dependencies"]:
        if (req := Requirement(dep)).name == name:
            return req
    raise KeyError(f"pyproject.toml has no {name} dependency")


def ray_pin(pyproject: dict) -> str:
    (spec,) = requirement(pyproject, "ray").specifier  # exactly one specifier: ray[tune]==X
    assert spec.operator == "==", f"ray is not pinned with == in pyproject.toml: {spec}"
    return spec.version


def entrypoint(rayjob: dict) -> list[str]:
    return shlex.split(rayjob["spec"]["entrypoint"])


def arg_after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def rayjob_env(rayjob: dict) -> dict:
    return yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]


def rayjob_pods(rayjob: dict) -> Iterator[tuple[str, dict]]:
    spec = rayjob["spec"]["rayClusterSpec"]
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def readme_submits(readme: str) -> list[list[str]]:
    """argv of every complete `ray job submit` command in the README's code blocks.

    Abridged examples (`ray job submit ... --entrypoint-resources ...`) are skipped."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("ray job submit"):
                argv = shlex.split(line, comments=True)
                if "..." not in argv:
                    commands.append(argv)
    return commands


def after_dashdash(argv: list[str]) -> list[str]:
    return argv[argv.index("--") + 1 :]


def under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def is_spot(node_type: dict) -> bool:
    market = node_type.get("node_config", {}).get("InstanceMarketOptions", {})
    return str(market.get("MarketType", "")).lower() == "spot"


# ---- the checks ----------------------------------------------------------------------------


def check_ray_version(r: Recipes) -> list[str]:
    """Every Ray version named in Dockerfile, rayjob.yaml and README.md is pyproject's pin."""
    pin, problems = ray_pin(r.pyproject), []
    base = re.search(rf"^ARG BASE_IMAGE=rayproject/ray:({VERSION})-", r.dockerfile, flags=re.M)
    if not base:
        problems.append("Dockerfile: no `ARG BASE_IMAGE=rayproject/ray:<version>-...`")
    found = {
        "Dockerfile": re.findall(rf"rayproject/ray:({VERSION})", r.dockerfile),
        "rayjob.yaml rayVersion": [str(r.rayjob["spec"]["rayClusterSpec"]["rayVersion"])],
        "README.md": re.findall(rf"rayproject/ray:({VERSION})|ray\[[\w,]+\]==({VERSION})|\bRay ({VERSION})", r.readme),
    }
    found["README.md"] = [next(v for v in groups if v) for groups in found["README.md"]]
    for where, versions in found.items():
        if not versions:
            problems.append(f"{where}: names no Ray version")
        problems += [f"{where}: Ray {v}, pyproject pins {pin}" for v in versions if v != pin]
    return problems


def check_console_script(r: Recipes) -> list[str]:
    """The commands the recipes run are console scripts of pyproject, and their targets exist."""
    scripts, problems = r.pyproject["project"]["scripts"], []
    commands = {
        "rayjob.yaml entrypoint": entrypoint(r.rayjob)[0],
        "Dockerfile CMD": json.loads(re.search(r"^CMD (\[.*\])", r.dockerfile, flags=re.M)[1])[0],
    }
    commands |= {f"README.md submit #{i}": after_dashdash(argv)[0] for i, argv in enumerate(readme_submits(r.readme))}
    for where, command in commands.items():
        if command not in scripts:
            problems.append(f"{where}: `{command}` is not a console script in pyproject ({sorted(scripts)})")
    for name, target in scripts.items():
        module = target.split(":")[0].replace(".", "/")
        if not ((r.root / f"{module}.py").exists() or (r.root / module / "__init__.py").exists()):
            problems.append(f"pyproject script {name} -> {target}: no such module")
    return problems


def check_sweep_files(r: Recipes) -> list[str]:
    """Sweep files named by rayjob.yaml and README.md exist in the repository."""
    named = {
        "rayjob.yaml entrypoint": [arg_after(entrypoint(r.rayjob), "run")],
        "README.md": re.findall(r"sweeps/[\w./-]+\.ya?ml", r.readme),
    }
    named["README.md"] += [arg_after(after_dashdash(argv), "run") for argv in readme_submits(r.readme)]
    problems = [f"{where}: no README submit command and no sweep named" for where, files in named.items() if not files]
    return problems + [
        f"{where}: {f} does not exist" for where, files in named.items() for f in files if not (r.root / f).is_file()
    ]


def stop_env_problems(where: str, env: dict) -> list[str]:
    problems = []
    if env.get("RAY_JOB_STOP_SIGNAL") != "SIGINT":
        problems.append(
            f"{where}: RAY_JOB_STOP_SIGNAL={env.get('RAY_JOB_STOP_SIGNAL')!r}, want SIGINT (docs/ray.md §2)"
        )
    wait = env.get("RAY_JOB_STOP_WAIT_TIME_S")
    if not isinstance(wait, str):  # runtime_env env_vars must be strings
        problems.append(f"{where}: RAY_JOB_STOP_WAIT_TIME_S={wait!r} is not a string")
    elif not re.fullmatch(r"\d+(\.\d+)?", wait) or float(wait) < 120:
        problems.append(f"{where}: RAY_JOB_STOP_WAIT_TIME_S={wait!r}, want >= 120 (docs/ray.md §2)")
    return problems


def check_stop_signal(r: Recipes) -> list[str]:
    """Jobs are stopped with SIGINT and a wait of at least 120 s."""
    problems = stop_env_problems("rayjob.yaml runtimeEnvYAML", rayjob_env(r.rayjob))
    submits = readme_submits(r.readme)
    if not submits:
        problems.append("README.md: no complete `ray job submit` command")
    for i, argv in enumerate(submits):
        env = json.loads(arg_after(argv, "--runtime-env-json")).get("env_vars", {})
        problems += stop_env_problems(f"README.md submit #{i}", env)
    return problems


def check_torch_pin(r: Recipes) -> list[str]:
    """The torch/torchvision the Dockerfile installs are admitted by pyproject, before the project."""
    problems = []
    project = re.search(r"pip install[^\n]*\s\.(?=\s|$)", r.dockerfile, flags=re.M)
    if not project:
        problems.append("Dockerfile: no `pip install ... .` of the project")
    for name in ("torch", "torchvision"):
        pin = re.search(rf"(?<![\w.-]){name}==([\w.+]+)", r.dockerfile)
        if not pin:
            problems.append(f"Dockerfile: {name} is not installed with an exact pin")
            continue
        spec = requirement(r.pyproject, name).specifier
        if not spec.contains(Version(pin[1]), prereleases=True):
            problems.append(f"Dockerfile: {name}=={pin[1]} is outside pyproject's {name}{spec}")
        if project and pin.start() > project.start():
            problems.append(f"Dockerfile: {name} is installed after the project, not pinned before it")
    return problems


def check_dockerfile_shape(r: Recipes) -> list[str]:
    """FROM the BASE_IMAGE arg, a Python the project admits, user `ray`, CMD `ddsweep --help`."""
    problems, text = [], r.dockerfile
    if not re.search(r"^FROM \$\{?BASE_IMAGE\}?\s*$", text, flags=re.M):
        problems.append("Dockerfile: not `FROM ${BASE_IMAGE}`")
    requires = SpecifierSet(r.pyproject["project"]["requires-python"])
    for minor in re.findall(rf"rayproject/ray:{VERSION}-py3(\d+)", text):
        if Version(f"3.{minor}") not in requires:
            problems.append(f"Dockerfile: base image Python 3.{minor} is outside requires-python {requires}")
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    if users[-1:] != ["ray"]:
        problems.append(f"Dockerfile: runs as {users[-1:] or 'the base default'}, want USER ray")
    cmd = re.search(r"^CMD (\[.*\])", text, flags=re.M)
    if not cmd or json.loads(cmd[1])[1:] != ["--help"]:
        problems.append('Dockerfile: CMD is not `["ddsweep", "--help"]`')
    return problems


def check_cluster_nodes(r: Recipes) -> list[str]:
    """cluster.yaml: an on-demand head with CPU 0 (and any resource README reserves), spot workers."""
    c, problems = r.cluster, []
    types = c["available_node_types"]
    head = types[c["head_node_type"]]
    if head.get("resources", {}).get("CPU") != 0:
        problems.append(f"cluster.yaml: head resources {head.get('resources')}, want CPU: 0 (no trials on the head)")
    if is_spot(head):
        problems.append("cluster.yaml: the head is on spot; it must be on-demand (kuberay#2153)")
    spot = [n for n, t in types.items() if n != c["head_node_type"] and is_spot(t) and t.get("max_workers", 0) > 0]
    if not spot:
        problems.append("cluster.yaml: no worker type on spot (InstanceMarketOptions: {MarketType: spot})")
    for reserved in re.findall(r"--entrypoint-resources\s+'(\{[^']*\})'", r.readme):
        missing = set(json.loads(reserved)) - set(head.get("resources", {}))
        if missing:
            problems.append(f"README.md reserves {sorted(missing)} for the driver; cluster.yaml's head lacks it")
    return problems


def check_images(r: Recipes) -> list[str]:
    """cluster.yaml and every rayjob.yaml pod run one image, tagged <project>:<version> like README builds."""
    name, version = r.pyproject["project"]["name"], r.pyproject["project"]["version"]
    images = {"cluster.yaml docker.image": r.cluster["docker"]["image"]}
    images |= {
        f"rayjob.yaml {group}/{c['name']}": c["image"]
        for group, pod in rayjob_pods(r.rayjob)
        for c in pod["containers"]
    }
    ours = re.compile(rf"(^|/){re.escape(name)}:{re.escape(version)}$")
    problems = [
        f"{where}: image {image!r} is not <registry/>{name}:{version}"
        for where, image in images.items()
        if not ours.search(image)
    ]
    if len(set(images.values())) > 1:
        problems.append(f"the recipes name different images: {images}")
    for tag in re.findall(r"docker build [^\n]*-t (\S+)", r.readme + r.dockerfile):
        if not tag.startswith(f"{name}:{version}"):
            problems.append(f"docker build -t {tag}: want {name}:{version}")
    return problems


def check_shared_storage(r: Recipes) -> list[str]:
    """--storage lies on the shared mount of every pod/container; the head runs no trials."""
    problems = []
    spec = r.rayjob["spec"]
    storage = arg_after(entrypoint(r.rayjob), "--storage")
    for group, pod in rayjob_pods(r.rayjob):
        mounts = [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])]
        if not any(under(storage, m) for m in mounts):
            problems.append(f"rayjob.yaml {group}: --storage {storage} is on none of its mounts {mounts}")
    if str(spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].get("num-cpus")) != "0":
        problems.append('rayjob.yaml: head rayStartParams num-cpus is not "0"')
    gpu_groups = [
        g
        for g in spec["rayClusterSpec"]["workerGroupSpecs"]
        if any(
            "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in g["template"]["spec"]["containers"]
        )
    ]
    if not gpu_groups:
        problems.append("rayjob.yaml: no worker group with a nvidia.com/gpu limit")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("rayjob.yaml: shutdownAfterJobFinishes is not true")
    binds = [
        opt.split()[1].split(":")[1]
        for opt in r.cluster["docker"].get("run_options", [])
        if re.fullmatch(r"-v \S+:\S+", opt)
    ]
    for i, argv in enumerate(readme_submits(r.readme)):
        path = arg_after(after_dashdash(argv), "--storage")
        if not any(under(path, b) for b in binds):
            problems.append(f"README.md submit #{i}: --storage {path} is not under cluster.yaml's -v binds {binds}")
    return problems


CHECKS = [
    check_ray_version,
    check_console_script,
    check_sweep_files,
    check_stop_signal,
    check_torch_pin,
    check_dockerfile_shape,
    check_cluster_nodes,
    check_images,
    check_shared_storage,
]


@pytest.fixture(scope="module")
def recipes() -> Recipes:
    return Recipes.read()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_recipes_agree(recipes: Recipes, check: Callable[[Recipes], list[str]]) -> None:
    assert check(recipes) == []


# ---- drift: each change must be caught by the check named beside it ------------------------


def _set_dep(name: str, new: str) -> Callable[[Recipes], None]:
    def change(r: Recipes) -> None:
        deps = r.pyproject["project"]["dependencies"]
        deps[:] = [new if Requirement(d).name == name else d for d in deps]

    return change


def _sub(field: str, pattern: str, repl: str, count: int = 0) -> Callable[[Recipes], None]:
    def change(r: Recipes) -> None:
        setattr(r, field, re.sub(pattern, repl, getattr(r, field), count=count, flags=re.M))

    return change


def _job(r: Recipes) -> dict:
    return r.rayjob["spec"]


def _env(key: str, value) -> Callable[[Recipes], None]:
    def change(r: Recipes) -> None:
        env = rayjob_env(r.rayjob)
        env[key] = value
        _job(r)["runtimeEnvYAML"] = yaml.safe_dump({"env_vars": env})

    return change


def _worker(r: Recipes) -> dict:
    return _job(r)["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]


def _entrypoint(command: str) -> Callable[[Recipes], None]:
    return lambda r: _job(r).update(entrypoint=command)


def _head(r: Recipes) -> dict:
    return r.cluster["available_node_types"][r.cluster["head_node_type"]]


def _no_spot(r: Recipes) -> None:
    for node_type in r.cluster["available_node_types"].values():
        node_type["node_config"].pop("InstanceMarketOptions", None)


def _torch_last(r: Recipes) -> None:
    r.dockerfile = re.sub(r"(?<![\w.-])torch==\S+ torchvision==\S+", "", r.dockerfile)
    r.dockerfile += "\nRUN pip install torch==2.14.1 torchvision==0.29.1\n"


Check = Callable[[Recipes], list[str]]
DRIFTS: dict[str, tuple[Check, Callable[[Recipes], None]]] = {
    "pyproject ray pin": (check_ray_version, _set_dep("ray", "ray[tune]==2.61.0")),
    "Dockerfile base tag": (
        check_ray_version,
        _sub("dockerfile", rf"^(ARG BASE_IMAGE=rayproject/ray:){VERSION}", r"\g<1>2.59.0"),
    ),
    "rayjob rayVersion": (check_ray_version, lambda r: _job(r)["rayClusterSpec"].update(rayVersion="2.59.0")),
    "README Ray version": (check_ray_version, _sub("readme", rf"rayproject/ray:{VERSION}", "rayproject/ray:2.59.0", 1)),
    "pyproject script renamed": (
        check_console_script,
        lambda r: r.pyproject["project"].update(scripts={"dds": "orchestrator.cli:main"}),
    ),
    "pyproject script target": (
        check_console_script,
        lambda r: r.pyproject["project"]["scripts"].update(ddsweep="orchestrator.nope:main"),
    ),
    "rayjob entrypoint command": (
        check_console_script,
        _entrypoint("dsweep run sweeps/smoke.yaml --storage /shared/ddsweep"),
    ),
    "README submit command": (check_console_script, _sub("readme", r"-- ddsweep run", "-- python -m ddsweep run")),
    "rayjob sweep file": (check_sweep_files, _entrypoint("ddsweep run sweeps/missing.yaml --storage /shared/ddsweep")),
    "README sweep file": (check_sweep_files, _sub("readme", r"sweeps/smoke\.yaml", "sweeps/paper_digits.yaml")),
    "rayjob SIGTERM": (check_stop_signal, _env("RAY_JOB_STOP_SIGNAL", "SIGTERM")),
    "rayjob 3 s wait": (check_stop_signal, _env("RAY_JOB_STOP_WAIT_TIME_S", "3")),
    "rayjob wait not a string": (check_stop_signal, _env("RAY_JOB_STOP_WAIT_TIME_S", 120)),
    "README SIGTERM": (
        check_stop_signal,
        _sub("readme", r'"RAY_JOB_STOP_SIGNAL": "SIGINT"', '"RAY_JOB_STOP_SIGNAL": "SIGTERM"'),
    ),
    "README 30 s wait": (
        check_stop_signal,
        _sub("readme", r'"RAY_JOB_STOP_WAIT_TIME_S": "120"', '"RAY_JOB_STOP_WAIT_TIME_S": "30"'),
    ),
    "Dockerfile torch": (check_torch_pin, _sub("dockerfile", r"(?<![\w.-])torch==[\w.+]+", "torch==2.15.0")),
    "Dockerfile torchvision": (check_torch_pin, _sub("dockerfile", r"torchvision==[\w.+]+", "torchvision==0.30.0")),
    "pyproject torch range": (check_torch_pin, _set_dep("torch", "torch>=2.1,<=2.13")),
    "torch after project": (check_torch_pin, _torch_last),
    "Dockerfile FROM": (check_dockerfile_shape, _sub("dockerfile", r"^FROM .*$", "FROM rayproject/ray:latest")),
    "Dockerfile python": (check_dockerfile_shape, _sub("dockerfile", r"-py311-", "-py39-")),
    "Dockerfile USER": (check_dockerfile_shape, lambda r: setattr(r, "dockerfile", r.dockerfile + "USER root\n")),
    "Dockerfile CMD": (check_dockerfile_shape, _sub("dockerfile", r"^CMD .*$", 'CMD ["ddsweep", "run"]')),
    "cluster head CPU": (check_cluster_nodes, lambda r: _head(r)["resources"].update(CPU=8)),
    "cluster head spot": (
        check_cluster_nodes,
        lambda r: _head(r)["node_config"].update(InstanceMarketOptions={"MarketType": "spot"}),
    ),
    "cluster workers on-demand": (check_cluster_nodes, _no_spot),
    "cluster head resource": (check_cluster_nodes, lambda r: _head(r)["resources"].pop("head")),
    "project version": (check_images, lambda r: r.pyproject["project"].update(version="0.2.0")),
    "rayjob worker image": (check_images, lambda r: _worker(r)["containers"][0].update(image="ddsweep:0.0.9")),
    "cluster image": (check_images, lambda r: r.cluster["docker"].update(image="rayproject/ray:2.60.0-py311-gpu")),
    "README build tag": (check_images, _sub("readme", r"-t ddsweep:\S+", "-t ddsweep:latest", 1)),
    "rayjob worker mount": (check_shared_storage, lambda r: _worker(r)["containers"][0].pop("volumeMounts")),
    "rayjob storage path": (check_shared_storage, _entrypoint("ddsweep run sweeps/smoke.yaml --storage /tmp/ddsweep")),
    "rayjob head cpus": (
        check_shared_storage,
        lambda r: _job(r)["rayClusterSpec"]["headGroupSpec"].update(rayStartParams={"num-cpus": "4"}),
    ),
    "rayjob no gpu": (check_shared_storage, lambda r: _worker(r)["containers"][0].update(resources={})),
    "cluster bind mount": (check_shared_storage, lambda r: r.cluster["docker"].update(run_options=["--shm-size=16g"])),
}


@pytest.mark.parametrize("name", DRIFTS)
def test_drift_is_caught(recipes: Recipes, name: str) -> None:
    check, change = DRIFTS[name]
    drifted = copy.deepcopy(recipes)
    change(drifted)
    assert drifted != recipes, f"the drift {name!r} no longer changes anything; update it to the files"
    try:
        problems = check(drifted)
    except (KeyError, IndexError, ValueError, TypeError, AssertionError) as err:  # a missing field counts
        problems = [f"{type(err).__name__}: {err}"]
    assert problems, f"{check.__name__} did not notice: {name}"
