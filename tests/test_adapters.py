"""The adapter store's contract, on every backend: today's folders, and the registry in the database with the
weights in shared storage (a local folder, and a real S3 server on loopback)."""

import json

import pytest

from app.errors import AdapterUnloadable, NotFound, ValidationFailed
from app.jobs.store import JobStore
from app.stores.adapters import METADATA, AdapterStore, LocalAdapterStore, parse_ref
from app.stores.blobs import Blobs
from app.stores.registry import RegistryAdapterStore


def registry(tmp_path, url: str, host: str = "host-a") -> RegistryAdapterStore:
    """A registry store as one host opens it: the shared database and storage, its own cache and scratch."""
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    return RegistryAdapterStore(store, Blobs(url), tmp_path / host / "cache", tmp_path / host / "tmp")


@pytest.fixture(params=["folders", "registry:local", "registry:s3"])
def make_store(request, tmp_path):
    """Opens the store under test; a second call opens it as a second host would (its own cache)."""
    if request.param == "folders":
        return lambda host="host-a": LocalAdapterStore(tmp_path / "adapters")
    url = (
        str(tmp_path / "storage")
        if request.param == "registry:local"
        else request.getfixturevalue("s3").url(tmp_path.name)
    )
    return lambda host="host-a": registry(tmp_path, url, host)


def write(store: AdapterStore, name: str, labels=("a", "b")):
    staging = store.staging_dir()
    (staging / "adapter_config.json").write_text("{}")
    (staging / "adapter_model.safetensors").write_bytes(b"weights-" + name.encode())
    return store.commit(staging, name, {"base_model": "tiny-bert", "labels": list(labels)})


def test_versions_pin_and_latest(make_store):
    store = make_store()
    v1, v2 = write(store, "sent"), write(store, "sent")
    assert (v1.ref, v2.ref) == ("sent@v1", "sent@v2")
    assert store.resolve("sent").ref == "sent@v2"
    assert store.resolve("sent@v1").ref == "sent@v1"
    meta = json.loads((store.resolve("sent@v1").path / METADATA).read_text())
    assert meta["sha256"] and meta["labels"] == ["a", "b"] and meta["version"] == 1
    with pytest.raises(NotFound):
        store.resolve("sent@v3")
    with pytest.raises(NotFound):
        store.resolve("other")


def test_delete_one_version_then_all(make_store):
    store = make_store()
    write(store, "x"), write(store, "x")
    assert [v.ref for v in store.delete("x@v2")] == ["x@v2"]
    assert store.resolve("x").ref == "x@v1"
    assert write(store, "x").ref == "x@v3"  # a deleted version's number is never issued again
    assert [v.ref for v in store.delete("x")] == ["x@v1", "x@v3"]
    assert store.names() == []
    with pytest.raises(NotFound):
        store.resolve("x")
    with pytest.raises(NotFound):
        store.delete("x")
    assert write(store, "x").ref == "x@v4"


def test_concurrent_commits_get_distinct_versions(make_store):
    import threading

    store = make_store()
    refs = []
    threads = [threading.Thread(target=lambda: refs.append(write(store, "c").ref)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(refs, key=lambda r: int(r.split("@v")[1])) == [f"c@v{i}" for i in range(1, 9)]


def test_half_written_adapter_is_never_visible(make_store):
    store = make_store()
    staging = store.staging_dir()
    (staging / "adapter_model.safetensors").write_bytes(b"partial")  # crash before commit
    assert store.names() == []
    with pytest.raises(ValueError):
        store.commit(staging, "x", {"base_model": "b", "labels": []})  # no config: refused
    assert store.names() == []


@pytest.mark.parametrize("bad", ["../x", "a/b", "a b", "", ".hidden", "x" * 65, "caf\u00e9", "x@v0", "x@1", "loaded"])
def test_bad_names_are_refused(tmp_path, bad):
    with pytest.raises(ValidationFailed):
        parse_ref(bad)


def test_a_job_commits_once(make_store):
    store = make_store()
    first = write_for_job(store, "j", "job_abc")
    assert write_for_job(store, "j", "job_abc").ref == first.ref == "j@v1"  # retried after saving: the same one
    assert [v.ref for v in store.versions("j")] == ["j@v1"]


def write_for_job(store: AdapterStore, name: str, job_id: str):
    staging = store.staging_dir()
    (staging / "adapter_config.json").write_text("{}")
    (staging / "adapter_model.safetensors").write_bytes(b"weights")
    try:
        return store.commit(staging, name, {"base_model": "tiny-bert", "labels": ["a"], "job_id": job_id})
    finally:
        store.discard(staging)


def test_a_second_host_sees_each_commit_and_delete_at_once(make_store):
    """Two hosts (their own caches) on one database and one storage: what one commits the other resolves and
    fetches; what one deletes is gone on both."""
    a, b = make_store("host-a"), make_store("host-b")
    v1 = write(a, "shared")
    got = b.resolve("shared")
    assert got.ref == "shared@v1" and got.meta["sha256"] == v1.meta["sha256"]
    assert got.weights.read_bytes() == b"weights-shared"
    assert b.names() == ["shared"] and [v.size_bytes for v in b.versions("shared")] == [v1.size_bytes]
    assert [v.ref for v in b.delete("shared")] == ["shared@v1"]
    for host in (a, b):
        with pytest.raises(NotFound):
            host.resolve("shared")
    if isinstance(a, RegistryAdapterStore):  # a's copy stays in its cache until it prunes (at start-up)
        assert a.prune_cache() == 1 and a.prune_cache() == 0 and not list(a.cache.root.rglob("*.safetensors"))


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_weights_that_do_not_match_their_sha256_are_refused(tmp_path, backend, request):
    url = str(tmp_path / "storage") if backend == "local" else request.getfixturevalue("s3").url(tmp_path.name)
    write(registry(tmp_path, url, "host-a"), "x")
    blobs = Blobs(url)
    (key,) = blobs.children("x")
    blobs.put(f"x/{key}/adapter_model.safetensors", b"tampered")
    with pytest.raises(AdapterUnloadable, match="sha256"):
        registry(tmp_path, url, "host-b").resolve("x")  # a host without a cached copy fetches and checks it
    assert not list((tmp_path / "host-b" / "cache").rglob("adapter_model.safetensors"))  # nothing kept


def test_the_storage_is_not_listed_to_resolve(tmp_path, s3, monkeypatch):
    store = registry(tmp_path, s3.url(tmp_path.name))
    write(store, "quiet")

    def listed(*a, **k):
        raise AssertionError("listed the object store on a request path")

    monkeypatch.setattr(Blobs, "children", listed)
    monkeypatch.setattr(type(store.blobs.fs), "ls", listed)
    second = registry(tmp_path, s3.url(tmp_path.name), "host-b")
    monkeypatch.setattr(type(second.blobs.fs), "ls", listed)
    assert second.resolve("quiet").weights.read_bytes() == b"weights-quiet"
    assert second.names() == ["quiet"] and len(second.versions("quiet")) == 1
