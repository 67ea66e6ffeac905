"""One driver per sweep: refuse while the holder lives, take over a stale lock."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from orchestrator.lock import DriverLock, SweepLocked


def test_second_driver_is_refused_with_host_and_pid(tmp_path):
    with DriverLock(tmp_path, "s"):
        with pytest.raises(SweepLocked, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
            DriverLock(tmp_path, "s").acquire()
    assert not (tmp_path / "s" / "driver.lock").exists()
    with DriverLock(tmp_path, "s"):  # released: can be taken again
        pass


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(p.stdout)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "driver.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead,
                                                      "heartbeat": time.time()}))
    with DriverLock(tmp_path, "s"):
        assert json.loads((tmp_path / "s" / "driver.lock").read_text())["pid"] == os.getpid()


def test_lock_from_another_host_is_stale_only_without_heartbeat(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "driver.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time()}))
    with pytest.raises(SweepLocked, match="host elsewhere"):
        DriverLock(tmp_path, "s").acquire()
    (tmp_path / "s" / "driver.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 999}))
    with DriverLock(tmp_path, "s", stale_s=120):
        pass


def test_heartbeat_keeps_a_long_run_fresh(tmp_path):
    lock = DriverLock(tmp_path, "s", heartbeat_s=0.05)
    lock.acquire()
    try:
        first = json.loads((tmp_path / "s" / "driver.lock").read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads((tmp_path / "s" / "driver.lock").read_text())["heartbeat"] > first
    finally:
        lock.release()
