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
    (tmp_path / "s" / "driver.lock").write_text(
        json.dumps({"host": socket.gethostname(), "pid": dead, "heartbeat": time.time()})
    )
    with DriverLock(tmp_path, "s"):
        assert json.loads((tmp_path / "s" / "driver.lock").read_text())["pid"] == os.getpid()


def test_lock_from_another_host_is_stale_only_without_heartbeat(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "driver.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time()}))
    with pytest.raises(SweepLocked, match="host elsewhere"):
        DriverLock(tmp_path, "s").acquire()
    (tmp_path / "s" / "driver.lock").write_text(
        json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 999})
    )
    with DriverLock(tmp_path, "s", stale_s=120):
        pass


def test_heartbeat_keeps_a_long_run_fresh_without_rewriting_the_lock(tmp_path):
    lock = DriverLock(tmp_path, "s", heartbeat_s=0.05)
    lock.acquire()
    try:
        text = (tmp_path / "s" / "driver.lock").read_text()
        first = lock.heartbeat(lock.holder())
        time.sleep(0.3)
        assert lock.heartbeat(lock.holder()) > first
        assert (tmp_path / "s" / "driver.lock").read_text() == text  # written once
    finally:
        lock.release()
    assert os.listdir(tmp_path / "s") == []  # lock and heartbeat file gone


def test_an_unreadable_lock_is_held_while_young_and_stale_when_old(tmp_path):
    (tmp_path / "s").mkdir()
    lock_file = tmp_path / "s" / "driver.lock"
    lock_file.write_bytes(b"")  # e.g. a driver that died between create and write under an older version
    with pytest.raises(SweepLocked, match="cannot be read"):
        DriverLock(tmp_path, "s").acquire()
    old = time.time() - 999
    os.utime(lock_file, (old, old))
    with DriverLock(tmp_path, "s", stale_s=120) as lock:
        assert lock.holder()["nonce"] == lock.me["nonce"]


def test_a_stalled_holder_loses_the_lock_and_never_overwrites_the_new_one(tmp_path):
    a = DriverLock(tmp_path, "s", heartbeat_s=0.05)
    a.acquire()
    try:
        b = DriverLock(tmp_path, "s", stale_s=-1.0)  # b judges a's heartbeat too old: a "stalled"
        b.acquire()
        time.sleep(0.4)  # a's heartbeat thread runs several times meanwhile
        assert a.lost_to is not None and a.lost_to["nonce"] == b.me["nonce"]
        assert b.holder()["nonce"] == b.me["nonce"]
        b.release()
    finally:
        a.release()
    assert not (tmp_path / "s" / "driver.lock").exists()


CONTENDER = """
import json, sys, time
from orchestrator.lock import DriverLock, SweepLocked
root, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    pass
try:
    with DriverLock(root, "s") as lock:
        time.sleep(3.0)
        print("HELD" if lock.holder()["nonce"] == lock.me["nonce"] else "LOST")
except SweepLocked:
    print("REFUSED")
"""


@pytest.mark.slow
def test_contenders_for_a_stale_lock_end_with_exactly_one_holder(tmp_path):
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for _attempt in range(3):
        (tmp_path / "s").mkdir(exist_ok=True)
        (tmp_path / "s" / "driver.lock").write_text(
            json.dumps({"host": socket.gethostname(), "pid": int(p.stdout), "nonce": "dead"})
        )
        start = time.time() + 3.0
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CONTENDER, str(tmp_path), str(start)], stdout=subprocess.PIPE, text=True
            )
            for _ in range(6)
        ]
        outs = sorted(pr.communicate(timeout=60)[0].strip() for pr in procs)
        assert outs.count("HELD") == 1 and outs.count("LOST") == 0, outs
        assert not (tmp_path / "s" / "driver.lock").exists()


def test_a_lock_released_and_retaken_between_two_reads_is_never_deleted(tmp_path):
    """Forced timing: b fails to publish (a holds), a releases and c takes the lock before b reads it."""
    a, b, c = (DriverLock(tmp_path, "s") for _ in range(3))
    a.acquire()
    real_holder = b.holder
    calls = []

    def racing_holder():
        if not calls:
            calls.append(1)
            a.release()
            c.acquire()
            return None  # what b saw in the gap: no lock
        return real_holder()

    b.holder = racing_holder
    try:
        with pytest.raises(SweepLocked, match="already being run"):
            b.acquire()
        assert c.holder()["nonce"] == c.me["nonce"]  # c's lock survived
    finally:
        c.release()
    assert not (tmp_path / "s" / "driver.lock").exists() and os.listdir(tmp_path / "s") == []
