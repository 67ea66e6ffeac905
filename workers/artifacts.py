"""Content-addressed cache of shared stages: `<root>/<kind>/<digest>/` with a manifest and checksums.

A build writes into a hidden temporary folder beside the final one, records the sha256 of every
file in `manifest.json`, then renames the folder into place. Two builders racing end with one
copy: the loser's rename fails and it discards its own. Readers check the manifest's checksums.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from workers.config import ArtifactKey

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ArtifactStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._verified: set[ArtifactKey] = set()  # checksummed once per process

    def path(self, key: ArtifactKey) -> Path:
        return self.root / key.kind / key.digest

    def manifest(self, key: ArtifactKey) -> dict[str, Any] | None:
        try:
            return json.loads((self.path(key) / MANIFEST).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def exists(self, key: ArtifactKey) -> bool:
        return self.manifest(key) is not None

    def verify(self, key: ArtifactKey) -> bool:
        """True when every file listed in the manifest is present with its recorded checksum."""
        m = self.manifest(key)
        if m is None:
            return False
        folder = self.path(key)
        for name, digest in m["files"].items():
            f = folder / name
            if not f.is_file() or sha256_file(f) != digest:
                return False
        return True

    def build(self, key: ArtifactKey, fn: Callable[[Path], dict[str, Any] | None]) -> Path:
        """Run fn(tmp_dir) to write the artifact's files, then publish atomically. Returns the final path."""
        final = self.path(key)
        if self.exists(key):
            if key in self._verified or self.verify(key):
                self._verified.add(key)
                return final
            log.warning("artifact %s at %s fails its manifest checksums (truncated or corrupted); rebuilding",
                        key, final)
            self._quarantine(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key.digest}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            t0 = time.time()
            extra = fn(tmp) or {}
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {"kind": key.kind, "digest": key.digest, "config": key.cfg, "files": files,
                        "built_by": socket.gethostname(), "built_at": time.time(),
                        "build_seconds": time.time() - t0, **extra}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.exists(key):  # a stale, manifest-less folder: replace it
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
                else:
                    log.info("artifact %s was built concurrently; keeping the first copy", key)
            fsync_dir(final.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._verified.add(key)
        return final

    def _quarantine(self, folder: Path) -> None:
        aside = folder.parent / f".{folder.name}.corrupt-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(folder, aside)  # atomic: readers never see a half-deleted artifact
        except FileNotFoundError:
            return  # another worker moved it first
        shutil.rmtree(aside, ignore_errors=True)
