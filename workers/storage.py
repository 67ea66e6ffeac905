"""A storage root that is a local/NFS folder or an object store URI (`s3://bucket/prefix?...`), via pyarrow.fs.

Object stores have no rename and no hard link, so the few operations the project needs are
spelled out here with the right semantics on each kind:
- `write_atomic`: local: hidden temporary name + fsync + rename; object store: one PUT (all-or-nothing).
- `publish_new`: never replaces an existing object. Local: `os.link` (fails if the name exists, also
  on NFS). Object store: check, then PUT; a race between two writers of the same trial can still
  leave the later one's bytes, which is why loaders de-duplicate by trial_id keeping the earliest.
S3-compatible servers take their endpoint in the URI, e.g.
`s3://bucket/ddsweep?endpoint_override=127.0.0.1:9000&scheme=http` (credentials from the usual AWS
environment variables).
"""

from __future__ import annotations

import os
import uuid
from functools import lru_cache
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(root: str | os.PathLike) -> bool:
    return "://" in str(root)


@lru_cache(maxsize=16)
def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


class Storage:
    """Paths under a root, as strings joined with '/'; `local` tells whether the root is a plain folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        root = str(root)
        self.uri = root
        if is_uri(root):
            self.fs, self.base = _from_uri(root)
            self.local = isinstance(self.fs, pafs.LocalFileSystem)
        else:
            self.fs, self.base, self.local = pafs.LocalFileSystem(), str(Path(root).resolve()), True

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *[str(p).strip("/") for p in parts if str(p)]])

    # ---------------------------------------------------------------- queries
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def list(self, folder: str, suffix: str = "") -> list[str]:
        """Base names of the files directly in `folder` ending with suffix; hidden names skipped."""
        return sorted(self.stat_files(folder, suffix))

    def stat_files(self, folder: str, suffix: str = "") -> dict[str, tuple[int, int]]:
        """{base name: (size, mtime in ns)} of the files directly in `folder` ending with suffix; hidden
        names skipped. One listing call, whatever the number of files."""
        sel = pafs.FileSelector(folder, allow_not_found=True, recursive=False)
        out = {}
        for info in self.fs.get_file_info(sel):
            if (
                info.type == pafs.FileType.File
                and not info.base_name.startswith(".")
                and info.base_name.endswith(suffix)
            ):
                out[info.base_name] = (int(info.size or 0), int(info.mtime_ns or 0))
        return out

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    # ---------------------------------------------------------------- writes
    def write_atomic(self, path: str, data: bytes) -> None:
        if not self.local:
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def publish_new(self, path: str, data: bytes) -> bool:
        """Write `path` only if it does not exist. Returns False when it already did."""
        if not self.local:
            if self.exists(path):
                return False
            self.write_atomic(path, data)
            return True
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        if os.path.exists(path):
            return False
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass

    def delete_dir(self, folder: str) -> None:
        try:
            self.fs.delete_dir(folder)
        except (FileNotFoundError, OSError):
            pass


def child_uri(root: str | os.PathLike, *parts: str) -> str:
    """`root/part/...` for a folder or a URI, keeping a URI's query (`?endpoint_override=...`) at the end."""
    root = str(root)
    base, sep, query = root.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + (sep + query if sep else "")
