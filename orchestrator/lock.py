"""One driver per sweep: `<storage>/<sweep>/driver.lock` names the host and pid that run it.

A second `ddsweep run` of a sweep that is running refuses with that host and pid. The lock file is
written once, whole (`Storage.publish_new`: a temporary file linked into place), and never
rewritten; its holder proves it is alive by rewriting its own heartbeat file
`driver.lock.<nonce>.heartbeat` every HEARTBEAT_S from a daemon thread. A lock is stale, and taken
over, when its process is gone (same host: the pid no longer exists) or its heartbeat is older than
STALE_S (any host; e.g. a preempted head node). `ray job stop` and SIGKILL leave the files behind;
both cases are detected as stale, so resubmitting after a crash never needs a manual unlock.

Because the lock itself is never rewritten, a holder that stalls past STALE_S cannot overwrite the
lock of the driver that took over; it notices on its next heartbeat and says so.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from workers.storage import Storage

HEARTBEAT_S = 15.0
STALE_S = 120.0
TAKEOVER_S = 30.0
log = logging.getLogger("ddsweep")


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
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": time.time(),
            "nonce": uuid.uuid4().hex,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost_to: dict | None = None  # the holder that took the lock over while we ran, if any

    def _read(self, path: str) -> dict | None:
        try:
            return json.loads(self.st.read_bytes(path))
        except (FileNotFoundError, OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def holder(self) -> dict | None:
        return self._read(self.path)

    def beat_path(self, h: dict) -> str:
        return f"{self.path}.{h.get('nonce', 'none')}.heartbeat"

    def heartbeat(self, h: dict) -> float:
        """The holder's last sign of life: its heartbeat file, else when it took the lock."""
        beat = self._read(self.beat_path(h)) or {}
        return float(beat.get("heartbeat", h.get("heartbeat", h.get("started_at", 0))))

    def _mine(self, h: dict | None) -> bool:
        return bool(h) and h.get("nonce") == self.me["nonce"]

    def _stale(self, h: dict) -> bool:
        if h.get("host") == self.me["host"] and not _pid_alive(int(h.get("pid", -1))):
            return True
        return time.time() - self.heartbeat(h) > self.stale_s

    def _write_beat(self) -> None:
        self.st.write_atomic(self.beat_path(self.me), json.dumps({"heartbeat": time.time()}).encode())

    def _age(self, path: str | None = None) -> float | None:
        """Seconds since the file (default: the lock) was last modified; None when it is gone."""
        import pyarrow.fs as pafs

        info = self.st.fs.get_file_info(path or self.path)
        if info.type == pafs.FileType.NotFound or info.mtime is None:
            return None
        return time.time() - info.mtime.timestamp()

    def _remove_stale(self, stale: dict | None) -> None:
        """Remove the lock judged stale, and only that one, under a short-lived takeover mutex.

        Contenders that all judged the same lock stale take turns; each re-reads the lock under the
        mutex and deletes it only if it is still the stale one, never a fresh lock another contender
        published meanwhile. A mutex left by a crash expires after TAKEOVER_S."""
        mutex = f"{self.path}.takeover"
        if not self._take_mutex(mutex):
            age = self._age(mutex)
            if age is not None and age > TAKEOVER_S:
                self.st.delete(mutex)
            time.sleep(0.05)
            return
        try:
            current = self.holder()
            if stale is None:  # an unreadable lock: delete it only if it still is, and is old
                age = self._age()
                doomed = current is None and age is not None and age >= self.stale_s
            else:  # the very lock judged stale; a fresh one carries another nonce
                doomed = (current or {}).get("nonce") == stale.get("nonce")
            if doomed:
                self.st.delete(self.path)
                if stale is not None:
                    self.st.delete(self.beat_path(stale))
        finally:
            self.st.delete(mutex)

    def _take_mutex(self, mutex: str) -> bool:
        if not self.st.publish_new(mutex, self.me["nonce"].encode()):
            return False
        if self.st.local:  # os.link: exclusive
            return True
        time.sleep(0.2)  # object stores: check-then-PUT is not exclusive; the last writer wins, so read it back
        try:
            return self.st.read_bytes(mutex) == self.me["nonce"].encode()
        except (FileNotFoundError, OSError):
            return False

    def acquire(self) -> None:
        try:
            self._acquire()
        except BaseException:
            self.st.delete(self.beat_path(self.me))
            raise
        self._thread = threading.Thread(target=self._beat, name="ddsweep-lock-heartbeat", daemon=True)
        self._thread.start()

    def _acquire(self) -> None:
        deadline = time.time() + 30.0
        while time.time() < deadline:
            self._write_beat()  # before the lock exists, so a contender never sees a lock without a heartbeat
            if self.st.publish_new(self.path, json.dumps(self.me).encode()) and self._mine(self.holder()):
                break
            h = self.holder()
            if h is None:
                age = self._age()
                if age is None:  # released meanwhile: try again, never delete what we did not read
                    continue
                h = self.holder()  # maybe a contender published between the two reads
            if h is None:
                if age < self.stale_s:  # present but unreadable: damaged, or written by something else
                    raise SweepLocked(
                        f"{self.path} exists but cannot be read ({age:.0f}s old); another driver may "
                        f"be starting. If none is, delete it or rerun after {self.stale_s:.0f}s"
                    )
                self._remove_stale(None)
                continue
            if self._stale(h):
                self._remove_stale(h)
                continue
            age = time.time() - self.heartbeat(h)
            raise SweepLocked(
                f"this sweep is already being run by pid {h.get('pid')} on host {h.get('host')} (heartbeat {age:.0f}s "
                f"ago). Wait for it, stop it, or, if that process is gone, rerun after {self.stale_s:.0f}s without a "
                f"heartbeat; lock file: {self.path}"
            )
        else:
            raise SweepLocked(f"could not take {self.path}; another driver keeps taking it")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            h = self.holder()
            if not self._mine(h):
                self.lost_to = h
                log.warning(
                    "the lock %s was taken over by pid %s on host %s (this driver was presumed dead); "
                    "rows stay consistent (one per trial), but stop one of the two drivers",
                    self.path,
                    (h or {}).get("pid"),
                    (h or {}).get("host"),
                )
                return
            self._write_beat()  # our own file: never touches another driver's lock

    def release(self) -> None:
        self._stop.set()
        if self._mine(self.holder()):
            self.st.delete(self.path)
        self.st.delete(self.beat_path(self.me))

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
