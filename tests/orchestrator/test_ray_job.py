"""`ray job submit` as users run it, on a two-node CLI cluster (slow).

The cluster lives in a loopback-only network namespace made by the test (`ip netns`), because
`ray start` rewrites 127.0.0.1 to the machine's primary address outside one (docs/ray.md §4). Each node
has its own --temp-dir and dashboard-agent port. Everything is torn down by pid, never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import BIN, REPO, write_sweep

from orchestrator import results
from orchestrator.results import SweepStore

pytestmark = pytest.mark.slow
DASH = "http://127.0.0.1:28265"


def _netns_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    name = f"ddsweep-probe-{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


class NsCluster:
    def __init__(self, tmp, home) -> None:
        self.name = f"ddsweep-t{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.tmp, self.home = tmp, home
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.home),
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def run(self, *args, check=True, timeout=180) -> subprocess.CompletedProcess:
        out = subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{args} failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
        return out

    def start(self) -> None:
        ray = str(BIN / "ray")
        self.run(
            ray,
            "start",
            "--head",
            "--port=26379",
            "--num-cpus=1",
            '--resources={"node_a": 1}',
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            "--dashboard-port=28265",
            f"--temp-dir={self.tmp / 'a'}",
            "--disable-usage-stats",
        )
        self.run(
            ray,
            "start",
            "--address=127.0.0.1:26379",
            "--num-cpus=1",
            '--resources={"node_b": 1}',
            f"--temp-dir={self.tmp / 'b'}",
            "--dashboard-agent-listen-port=52366",
            "--disable-usage-stats",
        )

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def teardown(self) -> None:
        for sig, pause in ((signal.SIGTERM, 5), (signal.SIGKILL, 1)):
            pids = self.pids()
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            if pids:
                time.sleep(pause)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture
def ns_cluster(tmp_path, ray_home):
    if not _netns_available():
        pytest.fail("this test needs root and `ip netns` (iproute2) to keep a CLI Ray cluster on loopback")
    short = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # Ray's socket paths must stay under 107 bytes
    c = NsCluster(short, ray_home)
    try:
        c.start()
        yield c
    finally:
        c.teardown()
        shutil.rmtree(short, ignore_errors=True)


def submit(c: NsCluster, sweep, store, job_id: str, *extra: str):
    env_file = c.tmp / f"{job_id}.yaml"
    env_file.write_text(
        json.dumps(
            {
                "working_dir": str(REPO),
                "excludes": [".venv", ".git", "ddsweep-runs", "*.egg-info"],
                "env_vars": {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "60"},
            }
        )
    )
    return c.run(
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        DASH,
        "--submission-id",
        job_id,
        "--runtime-env",
        str(env_file),
        "--no-wait",
        "--",
        "ddsweep",
        "run",
        str(sweep),
        "--storage",
        str(store),
        *extra,
    )


def job_status(c: NsCluster, job_id: str) -> str:
    code = (
        f"from ray.job_submission import JobSubmissionClient as C; print(C({DASH!r}).get_job_status({job_id!r}).value)"
    )
    out = c.run(str(BIN / "python"), "-c", code, check=False)
    return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else "UNKNOWN"


def wait_job(c, job_id, states, timeout) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = job_status(c, job_id)
        if s in states:
            return s
        time.sleep(1)
    raise AssertionError(
        f"job {job_id} not in {states} after {timeout}s: {job_status(c, job_id)}; logs: "
        + c.run(str(BIN / "ray"), "job", "logs", "--address", DASH, job_id, check=False).stdout[-3000:]
    )


def test_job_submit_stop_kill_and_resubmit(tmp_path, ns_cluster):
    c = ns_cluster
    sweep = write_sweep(tmp_path / "s.yaml", name="jobs", ipc=(5, 10), seeds=(0, 1, 2), epochs=400)
    store = tmp_path / "store"

    # 1. submit; stop it with `ray job stop` (SIGINT) once a row exists and trials are mid-run
    submit(c, sweep, store, "ddsweep-jobs-1", "--checkpoint-interval", "0")
    deadline = time.time() + 300
    while time.time() < deadline and not SweepStore(store, "jobs").done_ids():
        time.sleep(0.5)
    assert SweepStore(store, "jobs").done_ids(), "no row within 300 s"
    c.run(str(BIN / "ray"), "job", "stop", "--address", DASH, "ddsweep-jobs-1", check=False, timeout=120)
    assert wait_job(c, "ddsweep-jobs-1", {"STOPPED", "FAILED", "SUCCEEDED"}, 120) != "RUNNING"
    first = {r.trial_id: r.started_at for r in results.load(store, "jobs").itertuples()}

    # 2. resubmit; SIGKILL the driver (the pid named in the sweep's lock) mid-sweep
    submit(c, sweep, store, "ddsweep-jobs-2", "--checkpoint-interval", "0")
    lock = Path(SweepStore(store, "jobs").path()) / "driver.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and list((store / "jobs" / "checkpoints").glob("*/state.pt"))):
        time.sleep(0.3)
    pid = json.loads(lock.read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_job(c, "ddsweep-jobs-2", {"FAILED", "STOPPED", "SUCCEEDED"}, 120)

    # 3. resubmit again: the sweep completes; nothing lost or duplicated; interrupted trials resumed
    submit(c, sweep, store, "ddsweep-jobs-3", "--checkpoint-interval", "0")
    assert wait_job(c, "ddsweep-jobs-3", {"SUCCEEDED", "FAILED"}, 400) == "SUCCEEDED"
    logs = c.run(str(BIN / "ray"), "job", "logs", "--address", DASH, "ddsweep-jobs-3").stdout
    assert "[ddsweep] sweep 'jobs'" in logs and "[ddsweep] done" in logs and "trials have a row" in logs
    df = results.load(store, "jobs")
    assert len(df) == 6 and df["trial_id"].is_unique
    assert len(list(Path(SweepStore(store, "jobs").results_dir).glob("*.parquet"))) == 6
    assert all(df.set_index("trial_id").loc[t, "started_at"] == s for t, s in first.items())
    assert (df["attempt"] >= 2).any() and (df["resumed_from_epoch"] > 0).any(), "no trial resumed from a checkpoint"


@pytest.mark.timeout(1200)
def test_the_readme_command_runs_the_smoke_sweep_as_a_job(tmp_path, ns_cluster):
    """Exactly what README's cluster section tells users: the sweep path is relative to --working-dir."""
    c = ns_cluster
    store = tmp_path / "store"
    # README's line, word for word but for the address and storage; no `excludes`: Ray's working_dir
    # upload skips what .gitignore lists (the 6 GB .venv of a `make demo` checkout among them).
    c.run(
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        DASH,
        "--submission-id",
        "ddsweep-smoke",
        "--no-wait",
        "--working-dir",
        ".",
        "--runtime-env-json",
        '{"env_vars": {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "120"}}',
        "--",
        "ddsweep",
        "run",
        "sweeps/smoke.yaml",
        "--storage",
        str(store),
        "--address",
        "auto",
    )
    assert wait_job(c, "ddsweep-smoke", {"SUCCEEDED", "FAILED", "STOPPED"}, 800) == "SUCCEEDED"
    logs = c.run(str(BIN / "ray"), "job", "logs", "--address", DASH, "ddsweep-smoke").stdout
    assert "[ddsweep] done 144/144" in logs and "finished: 144/144 trials have a row" in logs
    df = results.load(store, "smoke")
    assert len(df) == 144 and df["trial_id"].is_unique and df["top1"].median() > 0.5
    assert df["host"].notna().all() and df["ray_version"].eq("2.60.0").all()
