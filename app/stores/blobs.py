"""Blobs: the keys under one root of a filesystem, a local folder or an object store (`s3://bucket/prefix`, any
fsspec URL), behind one small interface that the dataset, checkpoint, epoch-checkpoint and adapter stores use.

Every write publishes atomically: the bytes go to a temporary key first, then one move (a rename on a local
disk, a server-side copy on S3) makes them visible, so a reader sees the old value or the new one, never
half of one. S3 is configured by the standard `AWS_*` variables (`AWS_ENDPOINT_URL` for MinIO or another
S3-compatible server). Listing (`children`) is for sweeps, never for a request path.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from app.errors import StoreUnavailable

F = TypeVar("F", bound=Callable[..., Any])


def _answers(method: F) -> F:
    """An object store that is away or refuses us (connection, credentials, a missing bucket) is a 503 in the
    error envelope, not a traceback; a missing key stays FileNotFoundError, a bad key ValueError, and a local
    disk's errors stay what they are."""

    @functools.wraps(method)
    def call(self: Blobs, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (FileNotFoundError, ValueError):
            raise
        except Exception as e:
            if self.local:
                raise
            raise StoreUnavailable(f"the storage at {self.url} did not answer: {type(e).__name__}: {e}"[:500]) from e

    return call  # type: ignore[return-value]


class Blobs:
    def __init__(self, url: str | Path, **options: Any):
        """`options`: the filesystem's own (fsspec storage options), for a caller that needs one."""
        url = str(url)
        if "://" not in url:
            url = str(Path(url).expanduser().resolve())
        # No listing cache: other hosts write here too, and a stale listing would hide their keys.
        self.fs, root = fsspec.core.url_to_fs(url, use_listings_cache=False, **options)
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def child(self, prefix: str) -> Blobs:
        """The keys under `prefix`, as a Blobs of their own (same filesystem, same client)."""
        sub = object.__new__(Blobs)
        sub.fs, sub.root, sub.url = self.fs, self._full(prefix), f"{self.url}/{prefix.strip('/')}"
        return sub

    def local_path(self, key: str = "") -> Path | None:
        """The file or folder a key is, on a local backend; None on an object store."""
        return Path(self._full(key)) if self.local else None

    # ---- one key -------------------------------------------------------------------------------------
    @_answers
    def put(self, key: str, data: bytes, fresh: bool = False) -> None:
        """Write `data` under `key`, atomically (a temporary key, then a move). `fresh`: a key nobody reads until
        something else names it (a new upload's own prefix, published by a database row): written directly."""
        path = self._full(key)
        if self.local:
            _write_local(Path(path), data)
            return
        if fresh:
            self.fs.pipe_file(path, data)
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        self.fs.pipe_file(tmp, data)
        try:
            self.fs.mv(tmp, path)
        finally:
            self._rm_quietly(tmp)

    @_answers
    def get(self, key: str) -> bytes | None:
        """The bytes under `key`, or None if there is no such key."""
        try:
            return self.fs.cat_file(self._full(key))
        except (FileNotFoundError, IsADirectoryError):
            return None

    @_answers
    def exists(self, key: str) -> bool:
        return self.fs.isfile(self._full(key))

    @_answers
    def delete(self, key: str = "") -> None:
        """Remove a key, or every key under a prefix; nothing there is not an error."""
        self._rm_quietly(self._full(key), recursive=True)

    # ---- folders -------------------------------------------------------------------------------------
    def put_folder(self, folder: Path, prefix: str, fresh: bool = False) -> None:
        """Every file of a local folder (not its subfolders) under `prefix/` (`fresh`: as in `put`)."""
        for path in sorted(folder.iterdir()):
            if path.is_file():
                self.put(f"{prefix}/{path.name}", path.read_bytes(), fresh=fresh)

    def get_folder(self, prefix: str, names: list[str], folder: Path) -> None:
        """The named keys under `prefix/` into a local folder (FileNotFoundError if one is missing)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            data = self.get(f"{prefix}/{name}")
            if data is None:
                raise FileNotFoundError(f"{self.url}/{prefix}/{name}")
            (folder / name).write_bytes(data)

    @_answers
    def children(self, prefix: str = "") -> list[str]:
        """The names directly under a prefix (for sweeps: an object store's listing is slow and paged)."""
        try:
            entries = self.fs.ls(self._full(prefix), detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    # ---- helpers -------------------------------------------------------------------------------------
    def _full(self, key: str) -> str:
        key = key.strip("/")
        if ".." in key.split("/"):
            raise ValueError(f"not a key: {key!r}")
        return f"{self.root}/{key}" if key else self.root

    def _rm_quietly(self, path: str, recursive: bool = False) -> None:
        try:
            self.fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass


def _write_local(path: Path, data: bytes) -> None:
    """A temporary file beside the target, fsynced and renamed over it; the rename fsynced too (a power cut
    leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")  # unique per writer: threads and processes
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
