"""Sharded image arrays on disk: written one image at a time, read by index, verified per image. No torch.

A split of a cached data set (docs/design.md §4, the `shard` and `cache` stages) is a sequence of `.npy`
files of `shard_size` uint8 images (N, C, H, W) each. `ShardedImages` presents them as one array that
supports `len`, `shape`, integer / slice / index-array indexing and batch iteration, reading only the rows
asked for with positioned file reads (no memory map stays resident), so a reader's memory is bounded by
what it asked for, never by the split. Every image read is checked once per process against the CRC-32
recorded at build time; a mismatch asks the owner to rebuild that shard (`on_corrupt`).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from workers.data import DataError


def image_digest(image: np.ndarray) -> int:
    """CRC-32 of an image's bytes (C-contiguous uint8): catches a torn or corrupted image on read at a tenth of
    a cryptographic hash's cost (the shard's files also carry sha256 checksums in its manifest)."""
    return zlib.crc32(np.ascontiguousarray(image).data)


def pixel_sums(image: np.ndarray) -> np.ndarray:
    """(2, C) int64: per channel the sum of a uint8 image's pixel values and of their squares (exact integers:
    a square fits uint16, the sums are int64)."""
    x = image.reshape(image.shape[0], -1).astype(np.uint16)
    return np.stack([x.sum(axis=1, dtype=np.int64), (x * x).sum(axis=1, dtype=np.int64)])


def stats_from_sums(sums: np.ndarray, pixels_per_image: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and unbiased std of x / 255 from per-image integer sums (n, 2, C), exactly in integers
    until the final division: the same numbers for the same images whatever the order or batching."""
    n = int(sums.shape[0])
    m = n * pixels_per_image
    if m < 2:
        raise ValueError("channel statistics need at least two pixels")
    total = sums.sum(axis=0, dtype=np.int64)  # (2, C): fits int64 up to ~10^9 images of 512 px
    mean, std = [], []
    for s, q in zip(total[0].tolist(), total[1].tolist()):
        mean.append(s / m / 255.0)
        std.append(math.sqrt((q * m - s * s) / (m * (m - 1))) / 255.0)
    return np.asarray(mean), np.asarray(std)


class NpyWriter:
    """Writes an .npy file of a known shape row by row: the header first, then each row as it comes, so the
    writer holds one row at a time (never the whole array, nor a memory map of it)."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(int(s) for s in shape), np.dtype(dtype)
        self.rows = 0
        self.f = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_2_0(self.f, header)

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path}: rows {rows.shape} do not fit {self.shape} after {self.rows} rows")
        self.f.write(rows.data)
        self.rows += len(rows)

    def close(self) -> None:
        try:
            if self.rows != self.shape[0]:
                raise ValueError(f"{self.path}: {self.rows} rows written, {self.shape[0]} declared")
            self.f.flush()
            os.fsync(self.f.fileno())
        finally:
            self.f.close()

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.f.close()


def _data_offset(path: Path) -> tuple[int, tuple[int, ...]]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran or dtype != np.uint8:
            raise DataError(f"{path}: not a C-ordered uint8 array (dtype {dtype}); the shard is corrupt")
        return f.tell(), shape


class ShardSet:
    """The physical rows of one split: shard i holds rows [i * shard_size, (i + 1) * shard_size).

    `shard_path(i)` returns the local file of shard i (building or fetching it if needed); `digests` are the
    per-row digests recorded by the build; `on_corrupt(i)` rebuilds shard i (then it is read again)."""

    def __init__(
        self,
        n_rows: int,
        image_shape: tuple[int, int, int],
        shard_size: int,
        shard_path: Callable[[int], Path],
        digests: np.ndarray,
        on_corrupt: Callable[[int], None] | None = None,
        name: str = "split",
    ) -> None:
        self.n_rows, self.image_shape, self.shard_size = int(n_rows), tuple(image_shape), int(shard_size)
        self.shard_path, self.digests, self.on_corrupt, self.name = shard_path, digests, on_corrupt, name
        self.verified = np.zeros(self.n_rows, bool)  # rows checked against their digest by this process
        self._headers: dict[int, tuple[Path, int]] = {}

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.image_shape))

    def _file(self, shard: int) -> tuple[Path, int]:
        if shard not in self._headers:
            path = Path(self.shard_path(shard))
            offset, shape = _data_offset(path)
            want = (min(self.shard_size, self.n_rows - shard * self.shard_size), *self.image_shape)
            if tuple(shape) != want:
                raise DataError(f"{path}: holds {shape}, expected {want}; the shard is corrupt")
            self._headers[shard] = (path, offset)
        return self._headers[shard]

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """out[k] = physical row rows[k], for sorted unique `rows`."""
        shards = rows // self.shard_size
        for shard in np.unique(shards):
            sel = np.flatnonzero(shards == shard)
            self._read_shard(int(shard), rows[sel], out, sel)

    def _read_shard(self, shard: int, rows: np.ndarray, out: np.ndarray, where: np.ndarray, retry: bool = True):
        path, offset = self._file(shard)
        b = self.row_bytes
        local = rows - shard * self.shard_size
        with open(path, "rb", buffering=0) as f:
            k = 0
            while k < len(local):  # runs of consecutive rows are one read each
                j = k + 1
                while j < len(local) and local[j] == local[j - 1] + 1 and where[j] == where[j - 1] + 1:
                    j += 1
                view = memoryview(out[where[k] : where[j - 1] + 1]).cast("B")
                got = os.preadv(f.fileno(), [view], offset + int(local[k]) * b)
                if got != len(view):
                    view[got:] = b"\0" * (len(view) - got)  # a truncated file: the digests catch it
                k = j
        todo = ~self.verified[rows]
        bad = [int(r) for r, w in zip(rows[todo], where[todo]) if image_digest(out[w]) != int(self.digests[r])]
        if not bad:
            self.verified[rows] = True
            return
        if retry and self.on_corrupt is not None:
            self._headers.pop(shard, None)
            self.on_corrupt(shard)
            return self._read_shard(shard, rows, out, where, retry=False)
        raise DataError(
            f"{path}: {len(bad)} image(s) of {self.name} shard {shard} (e.g. row {bad[0]}) do not match the digests "
            "recorded when the cache was built, even after a rebuild; the decoder's output changed (another "
            "Pillow version on this node?) or the files changed. Delete the cache artifact and run again"
        )


class ShardedImages:
    """uint8 images (N, C, H, W) of a split, read on demand from its shards: `rows` maps the array's own
    indices to physical rows of the `ShardSet` (so views and subsets share the files and the checks)."""

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(
        self, shards: ShardSet, rows: np.ndarray | None = None, sums: np.ndarray | None = None, crop: int | None = None
    ) -> None:
        self.shards = shards
        self.rows = np.arange(shards.n_rows, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.sums = sums  # (physical rows, 2, C) int64 pixel sums, for channel statistics
        self.crop = crop  # centre crop side applied on read (None: the stored side)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        c, h, w = self.shards.image_shape
        return (len(self.rows), c, self.crop or h, self.crop or w)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def take(self, index) -> ShardedImages:
        """A lazy view of some rows (nothing is read)."""
        return ShardedImages(self.shards, self.rows[np.asarray(index, dtype=np.int64)], self.sums, self.crop)

    def cropped(self, side: int) -> ShardedImages:
        """A lazy view whose images are the centre side x side crops (torchvision's CenterCrop offsets)."""
        _, h, w = self.shards.image_shape
        if side > min(h, w):
            raise ValueError(f"cannot centre-crop {h}x{w} images to {side}")
        return ShardedImages(self.shards, self.rows, self.sums, None if (side, side) == (h, w) else side)

    def __getitem__(self, index) -> np.ndarray:
        """Read rows into memory: an int gives one image (C, H, W), a slice, an index array or a boolean mask
        gives (k, C, H, W)."""
        if isinstance(index, (int, np.integer)):
            return self[np.asarray([index])][0]
        if isinstance(index, slice):
            index = np.arange(len(self.rows))[index]
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        physical = self.rows[index.astype(np.int64)]
        unique, inverse = np.unique(physical, return_inverse=True)
        out = np.empty((len(unique), *self.shards.image_shape), np.uint8)
        if len(unique):
            self.shards.read(unique, out)
        if self.crop:
            _, h, w = self.shards.image_shape
            top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
            out = np.ascontiguousarray(out[:, :, top : top + self.crop, left : left + self.crop])
        return out if len(unique) == len(physical) and np.all(np.diff(physical) > 0) else out[inverse]

    def batches(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(start, images) of consecutive rows, `size` at a time."""
        for s in range(0, len(self.rows), size):
            yield s, self[slice(s, min(len(self.rows), s + size))]

    def __array__(self, *args, **kwargs):
        raise TypeError(
            f"a sharded split of {len(self)} images is not materialised implicitly; index it (x[idx]) or iterate "
            "x.batches(size)"
        )

    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std of x / 255 over these rows, from the integer pixel sums of the build."""
        if self.sums is None:
            raise ValueError("this split was built without pixel sums")
        c, h, w = self.shards.image_shape
        return stats_from_sums(self.sums[self.rows], h * w)
