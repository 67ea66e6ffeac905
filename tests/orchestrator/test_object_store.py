"""Storage on an S3-compatible object store: a real moto server on loopback, real HTTP, real Ray (slow).

moto's server (PyPI `moto[server]`) speaks the S3 REST protocol; pyarrow's S3FileSystem talks to
it through `endpoint_override`. The sweep writes its rows, failures, checkpoints, lock, Tune state
and shared artifacts there, and nothing under a local folder.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from conftest import BIN, REPO, write_sweep

from orchestrator import results
from orchestrator.results import SweepStore

pytestmark = pytest.mark.slow
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_uri(tmp_path_factory):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    import os

    os.environ.update(CREDS)
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    fs.create_dir("ddsweep-test")
    yield f"s3://ddsweep-test/runs?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    proc.terminate()
    proc.wait(10)


def test_rows_lock_and_failures_on_the_object_store(s3_uri):
    from datetime import datetime, timezone

    from orchestrator.lock import DriverLock, SweepLocked

    row = {"trial_id": "abc", "top1": 0.5, "finished_at": datetime.now(timezone.utc)}
    assert SweepStore(s3_uri, "unit").write_row(row)
    assert not SweepStore(s3_uri, "unit").write_row(dict(row, top1=0.9))  # never replaced
    df = results.load(s3_uri, "unit")
    assert len(df) == 1 and df.loc[0, "top1"] == 0.5 and SweepStore(s3_uri, "unit").done_ids() == {"abc"}
    SweepStore(s3_uri, "unit").record_failure("def", "n", 1, "E: x", "tb")
    assert set(SweepStore(s3_uri, "unit").failures()) == {"def"}
    with DriverLock(s3_uri, "unit"):
        with pytest.raises(SweepLocked):
            DriverLock(s3_uri, "unit").acquire()
    with DriverLock(s3_uri, "unit"):
        pass


def test_artifacts_upload_download_race_and_corruption(s3_uri, tmp_path, monkeypatch):
    from workers.artifacts import ArtifactStore, clear_process_cache
    from workers.config import ArtifactKey
    from workers.storage import Storage, child_uri

    root = child_uri(s3_uri, "artifacts")
    key = ArtifactKey.make("subset", {"x": 1})
    monkeypatch.setenv("DDSWEEP_ARTIFACT_CACHE", str(tmp_path / "cache-a"))
    a = ArtifactStore(root)
    a.build(key, lambda tmp: (tmp / "f.txt").write_text("A") and None)
    monkeypatch.setenv("DDSWEEP_ARTIFACT_CACHE", str(tmp_path / "cache-b"))
    b = ArtifactStore(root)  # another node: empty cache, downloads
    assert b.exists(key) and (b.path(key) / "f.txt").read_text() == "A" and b.verify(key)
    # a second builder of the same key keeps the first copy
    assert (b.build(key, lambda tmp: (tmp / "f.txt").write_text("B") and None) / "f.txt").read_text() == "A"
    # corrupt the remote file: a fresh node detects the checksum mismatch and rebuilds
    st = Storage(root)
    build = a.manifest(key)["build"]
    st.write_atomic(st.path("subset", key.digest, build, "f.txt"), b"tampered")
    monkeypatch.setenv("DDSWEEP_ARTIFACT_CACHE", str(tmp_path / "cache-c"))
    c = ArtifactStore(root)
    assert (c.build(key, lambda tmp: (tmp / "f.txt").write_text("C") and None) / "f.txt").read_text() == "C"
    assert c.verify(key)
    # node a's cache still holds build A (intact on its own terms): a new process there must use build C
    assert json.loads((tmp_path / "cache-a").glob("*/subset/*/manifest.json").__next__().read_text())["build"] == build
    monkeypatch.setenv("DDSWEEP_ARTIFACT_CACHE", str(tmp_path / "cache-a"))
    clear_process_cache()  # a new process on node a
    a2 = ArtifactStore(root)
    assert (a2.path(key) / "f.txt").read_text() == "C" and a2.verify(key)
    # a remote rebuild while a stale local copy exists leaves the new build locally, not the old one
    st.delete(st.path("subset", key.digest, "manifest.json"))
    monkeypatch.setenv("DDSWEEP_ARTIFACT_CACHE", str(tmp_path / "cache-b"))  # b still caches build A
    clear_process_cache()  # a new process on node b
    b2 = ArtifactStore(root)
    assert (b2.build(key, lambda tmp: (tmp / "f.txt").write_text("D") and None) / "f.txt").read_text() == "D"
    assert ArtifactStore(root).verify(key)
    # a damaged local copy of a good remote build is fetched again, not rebuilt
    (b2.path(key) / "f.txt").write_text("x")
    clear_process_cache()

    def must_not_build(tmp):
        raise AssertionError("rebuilt although the remote copy is intact")

    assert (ArtifactStore(root).build(key, must_not_build) / "f.txt").read_text() == "D"


def test_a_sweep_runs_and_resumes_on_the_object_store(s3_uri, tmp_path, cli_env):
    sweep = write_sweep(tmp_path / "s.yaml", name="s3sweep", ipc=(2, 5), seeds=(0,), epochs=10)
    env = dict(cli_env, **CREDS, DDSWEEP_ARTIFACT_CACHE=str(tmp_path / "cache"))
    out = subprocess.run(
        [str(BIN / "ddsweep"), "run", str(sweep), "--storage", s3_uri],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    df = results.load(s3_uri, "s3sweep")
    assert len(df) == 2 and set(df["ipc"]) == {2, 5}
    assert not (tmp_path / "store").exists()  # nothing went to the file's local storage
    again = subprocess.run(
        [str(BIN / "ddsweep"), "run", str(sweep), "--storage", s3_uri],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "nothing to run" in again.stdout
    status = subprocess.run(
        [str(BIN / "ddsweep"), "status", str(sweep), "--storage", s3_uri],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "2 done" in status.stdout
    from workers.storage import Storage

    st = Storage(s3_uri)
    assert st.exists(st.path("s3sweep", "sweep.yaml")) and not st.exists(st.path("s3sweep", "driver.lock"))
