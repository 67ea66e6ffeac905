"""One driver per sweep: `<storage>/<sweep>/driver.lock` names the host and pid that run it.

A second `ddsweep run` of a sweep that is running refuses with that host and pid. The lock is
stale, and taken over, when its process is gone (same host: the pid no longer exists) or its
heartbeat, refreshed every HEARTBEAT_S by a daemon thread, is older than STALE_S (any host; e.g.
a preempted head node). Ray's `ray job stop` and SIGKILL leave the file behind; both cases are
detected as stale, so resubmitting after a crash never needs a manual unlock.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from workers.storage import Storage

HEARTBEAT_S = 15.0
STALE_S = 120.0


class SweepLocked(Exception):
    """Another live driver runs this sweep."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DriverLock:
    """The lock of one sweep under a storage root (folder or object store)."""

    def __init__(self, storage, sweep: str, stale_s: float = STALE_S, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.st = storage if isinstance(storage, Storage) else Storage(storage)
        self.path = self.st.path(sweep, "driver.lock")
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time(),
                   "nonce": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        try:
            return json.loads(self.st.read_bytes(self.path))
        except (FileNotFoundError, OSError, json.JSONDecodeError):
            return None

    def _mine(self, h: dict | None) -> bool:
        return bool(h) and h.get("nonce") == self.me["nonce"]

    def _stale(self, h: dict) -> bool:
        if h.get("host") == self.me["host"] and not _pid_alive(int(h.get("pid", -1))):
            return True
        return time.time() - float(h.get("heartbeat", 0)) > self.stale_s

    def _payload(self) -> bytes:
        return json.dumps({**self.me, "heartbeat": time.time()}).encode()

    def _write_new(self) -> bool:
        if self.st.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._payload())
            return True
        # Object stores: no exclusive create; check-then-put, then read back to see who won a race.
        return self.st.publish_new(self.path, self._payload()) and self._mine(self.holder())

    def _remove_stale(self) -> None:
        if self.st.local:  # rename away first so two contenders cannot both remove a fresh lock
            aside = os.path.join(os.path.dirname(self.path), f".driver.lock.stale-{os.getpid()}")
            try:
                os.rename(self.path, aside)
                os.unlink(aside)
            except FileNotFoundError:
                pass
        else:
            self.st.delete(self.path)

    def acquire(self) -> None:
        for _ in range(3):
            if self._write_new():
                break
            h = self.holder()
            if h is None or self._stale(h):
                self._remove_stale()
                continue
            age = time.time() - float(h.get("heartbeat", 0))
            raise SweepLocked(
                f"this sweep is already being run by pid {h.get('pid')} on host {h.get('host')} (heartbeat {age:.0f}s "
                f"ago). Wait for it, stop it, or, if that process is gone, rerun after {self.stale_s:.0f}s without a "
                f"heartbeat; lock file: {self.path}")
        else:
            raise SweepLocked(f"could not take {self.path}; another driver keeps taking it")
        self._thread = threading.Thread(target=self._beat, name="ddsweep-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self._mine(self.holder()):
                return  # taken over (we were presumed dead): stop touching it
            self.st.write_atomic(self.path, self._payload())

    def release(self) -> None:
        self._stop.set()
        if self._mine(self.holder()):
            self.st.delete(self.path)

    def __enter__(self) -> "DriverLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
