"""Content-addressed cache of shared stages: `<root>/<kind>/<digest>/` with a manifest and checksums.

A build writes into a hidden temporary folder beside the final one, records the sha256 of every
file in `manifest.json`, then renames the folder into place. Two builders racing end with one
copy: the loser's rename fails and it discards its own. Readers check the manifest's checksums.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.config import ArtifactKey
from workers.data import DataError
from workers.storage import Storage

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


_VERIFIED: dict[str, set[ArtifactKey]] = {}  # (root, local cache) -> keys checksummed by this process
_CURRENT: dict[str, set[ArtifactKey]] = {}  # (root, local cache) -> keys whose local copy is the remote build


def clear_process_cache() -> None:
    """Forget which artifacts this process has checksummed: the next use checks them again, as a new
    process would (for a long-lived process that knows files changed underneath it; tests)."""
    for cache in (_VERIFIED, _CURRENT):
        for keys in cache.values():
            keys.clear()


def _build_id(folder: Path) -> str | None:
    try:
        return json.loads((folder / MANIFEST).read_text()).get("build")
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None


class ArtifactStore:
    """Artifacts under a root that is a folder (built in place) or an object-store URI.

    On an object store an artifact is `<kind>/<digest>/manifest.json` plus its files under
    `<kind>/<digest>/<build id>/`; the manifest is published last and only if absent, so racing
    builders never mix files, and the loser deletes its upload. Readers download into a local
    cache (`$DDSWEEP_ARTIFACT_CACHE` or `~/.cache/ddsweep/artifacts`) and check the checksums.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.st = Storage(root)
        if self.st.local:
            self.root = Path(self.st.base)
        else:
            base = Path(os.environ.get("DDSWEEP_ARTIFACT_CACHE", Path.home() / ".cache" / "ddsweep" / "artifacts"))
            self.root = base / hashlib.sha256(self.st.uri.encode()).hexdigest()[:12]
        # Per process, shared by every store on the same root (a trial makes its own store; a reused
        # Ray worker runs many trials): artifacts checksummed, local copies compared with the remote build.
        cache_id = f"{self.st.uri}|{self.root}"  # the local files are what was checked
        self._verified = _VERIFIED.setdefault(cache_id, set())
        self._current = _CURRENT.setdefault(cache_id, set())

    def _local(self, key: ArtifactKey) -> Path:
        return self.root / key.kind / key.digest

    def path(self, key: ArtifactKey) -> Path:
        """The local folder holding the artifact's files (downloaded first from an object store)."""
        folder = self._local(key)
        if not self.st.local and key not in self._current:
            remote = self.manifest(key)
            if remote is not None and _build_id(folder) != remote.get("build"):  # absent, or an older build
                self._download(key, remote)
            self._current.add(key)
        return folder

    def manifest(self, key: ArtifactKey) -> dict[str, Any] | None:
        try:
            if self.st.local:
                return json.loads((self._local(key) / MANIFEST).read_text())
            return json.loads(self.st.read_bytes(self.st.path(key.kind, key.digest, MANIFEST)))
        except (FileNotFoundError, OSError, json.JSONDecodeError):
            return None

    def exists(self, key: ArtifactKey) -> bool:
        return self.manifest(key) is not None

    def missing(self, keys) -> list[ArtifactKey]:
        """The keys not yet published, in order. Locally one listing per kind (a published artifact is a
        folder renamed into place whole); on an object store one manifest lookup per key."""
        if not self.st.local:
            return [k for k in keys if not self.exists(k)]
        listed: dict[str, set[str]] = {}
        out = []
        for k in keys:
            if k.kind not in listed:
                folder = self.root / k.kind
                listed[k.kind] = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
            if k.digest not in listed[k.kind]:
                out.append(k)
        return out

    def check_classes(self, key: ArtifactKey, class_names) -> None:
        """Every artifact records the class list it was built for; using one built for another class order
        is an error (docs/methods.md §3: a wrong class order silently costs 10-40 points)."""
        manifest = self.manifest(key)
        if manifest is None:
            raise FileNotFoundError(f"artifact {key} is not built in {self.st.uri} (workers.stages.build builds it)")
        got = manifest.get("class_names")
        if got != list(class_names):
            raise DataError(f"artifact {key} was built for classes {got}, the data set has {list(class_names)}")

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

    def _download(self, key: ArtifactKey, m: dict[str, Any] | None = None) -> None:
        """Fetch the remote build into the local cache. Never deletes a folder another process may be
        reading from except to replace an older build: the new copy is renamed in, the old one moved aside."""
        m = m or self.manifest(key)
        if m is None:
            return
        final = self._local(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key.digest}.dl-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for name in m["files"]:
                (tmp / name).write_bytes(self.st.read_bytes(self.st.path(key.kind, key.digest, m["build"], name)))
            (tmp / MANIFEST).write_text(json.dumps(m, indent=1, sort_keys=True))
            try:
                os.rename(tmp, final)
            except OSError:  # a copy is there already
                if _build_id(final) == m["build"]:
                    return  # another process downloaded the same build: keep it
                aside = final.parent / f".{key.digest}.old-{uuid.uuid4().hex[:8]}"
                with contextlib.suppress(FileNotFoundError):
                    os.rename(final, aside)
                with contextlib.suppress(OSError):  # yet another process put a copy in meanwhile; readers verify it
                    os.rename(tmp, final)
                shutil.rmtree(aside, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def ready(self, key: ArtifactKey) -> bool:
        """True when the artifact is published and its files match their checksums (checked once per
        process). A corrupted copy is logged and moved aside; on an object store a bad local copy is
        fetched again, and only a bad remote copy makes this False (the caller rebuilds)."""
        if not self.exists(key):
            return False
        if key in self._verified or self.verify(key):
            self._verified.add(key)
            return True
        log.warning(
            "artifact %s at %s fails its manifest checksums (truncated or corrupted); %s",
            key,
            self._local(key),
            "fetching it again" if not self.st.local else "rebuilding",
        )
        self._quarantine(key)
        if not self.st.local and self.exists(key):  # the remote copy was fine: the download is fresh
            self._verified.add(key)
            return True
        return False

    def build(self, key: ArtifactKey, fn: Callable[[Path], dict[str, Any] | None]) -> Path:
        """Run fn(tmp_dir) to write the artifact's files, then publish atomically. Returns the local path."""
        if self.ready(key):
            return self.path(key)
        final = self._local(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key.digest}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            t0 = time.time()
            extra = fn(tmp) or {}
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {
                "kind": key.kind,
                "digest": key.digest,
                "config": key.cfg,
                "files": files,
                "built_by": socket.gethostname(),
                "built_at": time.time(),
                "build_seconds": time.time() - t0,
                "build": uuid.uuid4().hex[:12],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                **extra,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            if not self.st.local:
                self._upload(key, tmp, manifest)
            fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / MANIFEST).exists():  # a stale, manifest-less folder: replace it
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
                else:
                    log.info("artifact %s was built concurrently; keeping the first copy", key)
            fsync_dir(final.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not self.st.local:  # the local copy must be the published build (ours, or a racing builder's)
            remote = self.manifest(key)
            if remote is not None and _build_id(final) != remote.get("build"):
                self._download(key, remote)
        self._current.add(key)
        self._verified.add(key)
        return final

    def _upload(self, key: ArtifactKey, tmp: Path, manifest: dict) -> None:
        for name in manifest["files"]:
            self.st.write_atomic(self.st.path(key.kind, key.digest, manifest["build"], name), (tmp / name).read_bytes())
        mpath = self.st.path(key.kind, key.digest, MANIFEST)
        if not self.st.publish_new(mpath, json.dumps(manifest, indent=1, sort_keys=True).encode()):
            log.info("artifact %s was published concurrently; discarding this build", key)
            self.st.delete_dir(self.st.path(key.kind, key.digest, manifest["build"]))

    def invalidate(self, key: ArtifactKey) -> None:
        """Move a copy that a reader found corrupted aside (locally) or drop it (object store: the local copy,
        and the remote manifest too when the remote copy is bad), so that the next `build` makes a new one."""
        self._verified.discard(key)
        self._quarantine(key)

    def _quarantine(self, key: ArtifactKey) -> None:
        folder = self._local(key)
        self._current.discard(key)
        if not self.st.local:  # drop the local copy; if the remote copy is bad, drop its manifest too
            shutil.rmtree(folder, ignore_errors=True)
            if not self.verify(key):
                shutil.rmtree(folder, ignore_errors=True)
                self.st.delete(self.st.path(key.kind, key.digest, MANIFEST))
                self._current.discard(key)
            return
        aside = folder.parent / f".{folder.name}.corrupt-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(folder, aside)  # atomic: readers never see a half-deleted artifact
        except FileNotFoundError:
            return  # another worker moved it first
        shutil.rmtree(aside, ignore_errors=True)
