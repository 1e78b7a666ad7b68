"""The adapter store for more than one host: the registry (names, versions, metadata, sha256) in the database,
the weights in shared storage (PEFTSERVE_STORAGE_URL: an object store, or a shared folder), and on each host
a cache of the weights it serves, checked against their sha256 when fetched.

A commit uploads the weights under a fresh key, then inserts the version's row: the row is the commit point,
so every replica sees a new version at once and a half-uploaded adapter is never visible. A delete marks the
rows first (every replica 404s at once), then removes the weights and this host's cached copies. Requests
read rows and fetch known keys; the storage is never listed on a request path.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from app.errors import AdapterUnloadable, NotFound
from app.jobs.store import JobStore
from app.jobs.tables import AdapterRow
from app.stores.adapters import (
    CONFIG,
    METADATA,
    WEIGHTS,
    AdapterStore,
    AdapterVersion,
    parse_ref,
    sha256_file,
    validate_name,
)
from app.stores.blobs import Blobs
from app.suggest import hint

log = logging.getLogger(__name__)
FILES = [CONFIG, WEIGHTS]


class WeightCache:
    """Local copies of adapter folders kept in shared storage, one folder per version, fetched on first use."""

    def __init__(self, root: Path):
        self.root = root

    def fetch(self, blobs: Blobs, key: str, folder: Path, meta: dict[str, Any]) -> Path:
        """`folder` holding the weights under `key` and their metadata: fetched into a temporary folder,
        checked against `meta["sha256"]`, then renamed into place (a reader never sees half a copy)."""
        if (folder / METADATA).exists():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".fetch-{uuid.uuid4().hex}"
        try:
            blobs.get_folder(key, FILES, tmp)
            if sha256_file(tmp / WEIGHTS) != meta["sha256"]:
                raise AdapterUnloadable(f"adapter {folder.name}: the stored weights do not match their sha256")
            (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
            try:
                os.rename(tmp, folder)
            except OSError:  # another thread or process fetched it first
                if not (folder / METADATA).exists():
                    raise
        except FileNotFoundError:
            raise NotFound(f"adapter {folder.name}: its weights are missing from the storage", "adapter") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def drop(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)


class RegistryAdapterStore(AdapterStore):
    def __init__(self, store: JobStore, blobs: Blobs, cache_dir: Path, scratch_dir: Path):
        self.store, self.blobs = store, blobs
        self.cache = WeightCache(cache_dir)
        self.scratch = scratch_dir

    def staging_dir(self) -> Path:
        path = self.scratch / "staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def commit(self, staging: Path, name: str, meta: dict[str, Any]) -> AdapterVersion:
        """Upload a fully written staging folder, then insert its row as the next version of `name`.

        Idempotent per job (a job retried after saving gets its first version back, and its upload is dropped).
        """
        validate_name(name)
        if not (staging / WEIGHTS).exists() or not (staging / CONFIG).exists():
            raise ValueError(f"{staging} lacks {WEIGHTS} or {CONFIG}")
        (staging / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub
        sha = sha256_file(staging / WEIGHTS)
        key = f"{name}/{uuid.uuid4().hex}"
        self.blobs.put_folder(staging, key, fresh=True)  # unseen until its row names it
        fields = {
            "key": key,
            "sha256": sha,
            "size_bytes": sum(f.stat().st_size for f in staging.iterdir() if f.is_file()),
            "meta": {**meta, "name": name, "sha256": sha},
            "job_id": meta.get("job_id"),
        }
        try:
            row, made = self.store.add_adapter_version(name, fields)
        except BaseException:
            self.blobs.delete(key)
            raise
        if not made:
            self.blobs.delete(key)
            return self.resolve(f"{row.name}@v{row.version}")
        version = self._version(row)
        (staging / METADATA).write_text(json.dumps(version.meta, indent=2, sort_keys=True))
        version.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, version.path)  # this host serves what it just trained without fetching it
        except OSError:
            pass  # already fetched: the staging folder is discarded by the caller
        return version

    def resolve(self, ref: str, field: str = "adapter") -> AdapterVersion:
        name, version = parse_ref(ref, field)
        rows = self.store.adapter_versions(name)
        if not rows:
            raise NotFound(f"no adapter {name!r}" + hint(name, self.names(), "adapters"), field=field)
        row = rows[-1] if version is None else next((r for r in rows if r.version == version), None)
        if row is None:
            raise NotFound(
                f"adapter {name!r} has no version v{version}; it has " + ", ".join(f"v{r.version}" for r in rows),
                field=field,
            )
        found = self._version(row)
        self.cache.fetch(self.blobs, row.key, found.path, found.meta)
        return found

    def versions(self, name: str, field: str = "name") -> list[AdapterVersion]:
        """Every version's metadata, from the registry alone (no weights are fetched)."""
        validate_name(name, field)
        found = [self._version(r) for r in self.store.adapter_versions(name)]
        if not found:
            raise NotFound(f"no adapter {name!r}", field=field)
        return found

    def names(self) -> list[str]:
        return self.store.adapter_names()

    def delete(self, ref: str, field: str = "name") -> list[AdapterVersion]:
        name, version = parse_ref(ref, field)
        live = self.store.adapter_versions(name)
        if not live:
            raise NotFound(f"no adapter {name!r}", field=field)
        if version is not None and version not in [r.version for r in live]:
            self.resolve(ref, field)  # NotFound naming the versions there are
        rows = self.store.delete_adapter_versions(name, version)
        for row in rows:  # no replica resolves them now: their weights can go
            self.blobs.delete(row.key)
            self.cache.drop(self._version(row).path)
        return [self._version(r) for r in rows]

    def prune_cache(self) -> int:
        """Remove this host's cached copies of versions deleted elsewhere (another replica deleted them: their
        rows are gone, their files still here). Returns how many folders went."""
        live = {self._version(r).path for r in self.store.live_adapter_versions()}
        gone = [p for p in self.cache.root.glob("*/v*") if p.is_dir() and p not in live]
        for path in gone:
            self.cache.drop(path)
        return len(gone)

    def _version(self, row: AdapterRow) -> AdapterVersion:
        meta = {**row.meta, "version": row.version, "created_at": row.created_at.isoformat()}
        folder = self.cache.root / row.name / f"v{row.version}-{row.sha256[:12]}"
        return AdapterVersion(row.name, row.version, folder, meta, size=row.size_bytes)
