"""Adapter store: named, versioned adapters (PEFT's files, safetensors only, and a metadata JSON).

`AdapterStore` is the interface the worker (commit) and the engine (resolve, read) use; `LocalAdapterStore`
keeps `adapters/<name>/v<N>/` folders (the default); app/stores/registry.py keeps the registry in the database
and the weights in shared storage. Versions are written into a staging folder and renamed into place,
so a crash never leaves half an adapter, and two workers finishing the same name at once get different
versions.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from app.errors import NotFound, ValidationFailed
from app.suggest import hint

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # no "/" and no leading ".": never a path outside the store
REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@v[1-9][0-9]{0,8})?$"  # name, or name@vN
NAME_RE = re.compile(NAME_PATTERN)
VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})$")
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
METADATA = "peftserve.json"
LAST_VERSION = ".last_version"
RESERVED = {"loaded"}  # GET /adapters/loaded


def validate_name(name: str, field: str = "adapter") -> str:
    if isinstance(name, str) and name in RESERVED:
        raise ValidationFailed(f"{name!r} is a reserved name", field=field)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValidationFailed(
            "adapter names are 1-64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit",
            field=field,
        )
    return name


def parse_ref(ref: str, field: str = "adapter") -> tuple[str, int | None]:
    """`name` (newest version) or `name@vN` (pinned)."""
    name, sep, version = ref.partition("@")
    validate_name(name, field)
    if not sep:
        return name, None
    m = VERSION_RE.fullmatch(version)
    if not m:
        raise ValidationFailed(f"bad version {version!r}: use name@v<N>, e.g. {name}@v1", field=field)
    return name, int(m.group(1))


@dataclass(frozen=True)
class AdapterVersion:
    name: str
    version: int
    path: Path
    meta: dict[str, Any]
    alias: str | None = None  # the name it is served by when not `name@vN` (an epoch checkpoint's model id)
    size: int | None = None  # known without reading the folder (a registry row; the folder may not be fetched)

    @property
    def ref(self) -> str:
        return self.alias or f"{self.name}@v{self.version}"

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def size_bytes(self) -> int:
        if self.size is not None:
            return self.size
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class AdapterStore(ABC):
    """Versions only ever grow (a pinned `name@vN` never comes to mean another model after a delete), and a
    commit is idempotent per job id (a job retried after saving gets its first version back)."""

    @abstractmethod
    def staging_dir(self) -> Path:
        """An empty local folder for a trainer to write an adapter into, before `commit`."""

    @abstractmethod
    def discard(self, staging: Path) -> None:
        """Remove a staging folder that will not be committed."""

    @abstractmethod
    def commit(self, staging: Path, name: str, meta: dict[str, Any]) -> AdapterVersion:
        """Publish a fully written staging folder as the next version of `name`."""

    @abstractmethod
    def resolve(self, ref: str, field: str = "adapter") -> AdapterVersion:
        """`name` (the newest version) or `name@vN`; NotFound naming `field` otherwise."""

    @abstractmethod
    def versions(self, name: str, field: str = "name") -> list[AdapterVersion]:
        """Every version of `name`, oldest first."""

    @abstractmethod
    def names(self) -> list[str]:
        """Every adapter name with at least one version."""

    @abstractmethod
    def delete(self, ref: str, field: str = "name") -> list[AdapterVersion]:
        """Delete one version (`name@vN`) or every version (`name`); returns what was deleted."""


class LocalAdapterStore(AdapterStore):
    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._staging = root / ".staging"

    def staging_dir(self) -> Path:
        path = self._staging / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    @contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        """Serialise commits and deletes of one name across threads and processes (an flock per name)."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        with (folder / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def commit(self, staging: Path, name: str, meta: dict[str, Any]) -> AdapterVersion:
        """Move a fully written staging folder into place as the next version of `name`.

        Idempotent per job: a version already saved for `meta["job_id"]` is returned instead of a second one.

        Version numbers only ever grow (the last one issued is kept in `.last_version`), so a pinned
        `name@vN` never comes to mean another model after a delete.
        """
        validate_name(name)
        if not (staging / WEIGHTS).exists() or not (staging / CONFIG).exists():
            raise ValueError(f"{staging} lacks {WEIGHTS} or {CONFIG}")
        (staging / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub
        meta = {
            **meta,
            "name": name,
            "sha256": sha256_file(staging / WEIGHTS),
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        with self._locked(name) as folder:
            if meta.get("job_id"):  # a job retried after saving (worker killed before recording it): once only
                for v in self._versions(name):
                    done = self._load(name, v)
                    if done.meta.get("job_id") == meta["job_id"]:
                        self.discard(staging)
                        return done
            counter = folder / LAST_VERSION
            last = int(counter.read_text()) if counter.exists() else 0
            version = max(last, *self._versions(name), 0) + 1
            meta["version"] = version
            (staging / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
            target = folder / f"v{version}"
            os.rename(staging, target)
            tmp = folder / f".{LAST_VERSION}.tmp"
            tmp.write_text(str(version))
            os.replace(tmp, counter)
        return AdapterVersion(name, version, target, meta)

    def _versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        out = []
        for p in folder.iterdir():
            m = VERSION_RE.fullmatch(p.name)
            if m and (p / METADATA).exists():
                out.append(int(m.group(1)))
        return sorted(out)

    def _load(self, name: str, version: int) -> AdapterVersion:
        path = self.root / name / f"v{version}"
        try:
            meta = json.loads((path / METADATA).read_text())
        except FileNotFoundError:  # deleted meanwhile
            raise NotFound(f"no adapter {name}@v{version}", field="adapter") from None
        return AdapterVersion(name, version, path, meta)

    def resolve(self, ref: str, field: str = "adapter") -> AdapterVersion:
        name, version = parse_ref(ref, field)
        versions = self._versions(name)
        if not versions:
            raise NotFound(f"no adapter {name!r}" + hint(name, self.names(), "adapters"), field=field)
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise NotFound(
                f"adapter {name!r} has no version v{version}; it has " + ", ".join(f"v{v}" for v in versions),
                field=field,
            )
        return self._load(name, version)

    def versions(self, name: str, field: str = "name") -> list[AdapterVersion]:
        validate_name(name, field)
        found = [self._load(name, v) for v in self._versions(name)]
        if not found:
            raise NotFound(f"no adapter {name!r}", field=field)
        return found

    def names(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name) and self._versions(p.name)
        )

    def delete(self, ref: str, field: str = "name") -> list[AdapterVersion]:
        """Delete one version (`name@vN`) or every version (`name`). Renamed away first, then removed."""
        name, version = parse_ref(ref, field)
        if not self._versions(name):
            raise NotFound(f"no adapter {name!r}", field=field)
        with self._locked(name):  # the name's folder stays: it holds the version counter
            doomed = [self.resolve(ref, field)] if version is not None else self.versions(name, field)
            trash = self._staging / f"deleted-{uuid.uuid4().hex}"
            trash.mkdir(parents=True)
            for v in doomed:
                os.rename(v.path, trash / f"v{v.version}")
        shutil.rmtree(trash, ignore_errors=True)
        return doomed
