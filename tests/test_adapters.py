import json

import pytest

from app.errors import NotFound, ValidationFailed
from app.stores.adapters import LocalAdapterStore, parse_ref


def write(store: LocalAdapterStore, name: str, labels=("a", "b")):
    staging = store.staging_dir()
    (staging / "adapter_config.json").write_text("{}")
    (staging / "adapter_model.safetensors").write_bytes(b"weights-" + name.encode())
    return store.commit(staging, name, {"base_model": "tiny-bert", "labels": list(labels)})


def test_versions_pin_and_latest(tmp_path):
    store = LocalAdapterStore(tmp_path)
    v1, v2 = write(store, "sent"), write(store, "sent")
    assert (v1.ref, v2.ref) == ("sent@v1", "sent@v2")
    assert store.resolve("sent").ref == "sent@v2"
    assert store.resolve("sent@v1").ref == "sent@v1"
    meta = json.loads((tmp_path / "sent" / "v1" / "peftserve.json").read_text())
    assert meta["sha256"] and meta["labels"] == ["a", "b"] and meta["version"] == 1
    with pytest.raises(NotFound):
        store.resolve("sent@v3")
    with pytest.raises(NotFound):
        store.resolve("other")


def test_delete_one_version_then_all(tmp_path):
    store = LocalAdapterStore(tmp_path)
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


def test_concurrent_commits_get_distinct_versions(tmp_path):
    import threading

    store = LocalAdapterStore(tmp_path)
    refs = []
    threads = [threading.Thread(target=lambda: refs.append(write(store, "c").ref)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(refs, key=lambda r: int(r.split("@v")[1])) == [f"c@v{i}" for i in range(1, 9)]


def test_half_written_adapter_is_never_visible(tmp_path):
    store = LocalAdapterStore(tmp_path)
    staging = store.staging_dir()
    (staging / "adapter_model.safetensors").write_bytes(b"partial")  # crash before commit
    assert store.names() == []
    with pytest.raises(ValueError):
        store.commit(staging, "x", {"base_model": "b", "labels": []})  # no config: refused
    assert store.names() == []


@pytest.mark.parametrize(
    "bad", ["../x", "a/b", "a b", "", ".hidden", "x" * 65, "caf\u00e9", "a..b", "x@v0", "x@1", "loaded"]
)
def test_bad_names_are_refused(tmp_path, bad):
    with pytest.raises(ValidationFailed):
        parse_ref(bad)
