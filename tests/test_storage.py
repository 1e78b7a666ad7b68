"""The shared storage (PEFTSERVE_STORAGE_URL) and the stores on it, each test on a local folder and on a real
S3 server on loopback (moto in server mode): keys published whole, datasets, resume checkpoints and epoch
checkpoints. The adapter store's contract on both is in test_adapters.py."""

from __future__ import annotations

import pytest
import torch

from app.jobs.store import JobStore
from app.stores.blobs import Blobs
from app.stores.datasets import DatasetStore
from app.stores.epochs import EpochStore
from app.training.checkpoint import Checkpoints


def test_keys_are_written_whole_read_back_and_removed(storage_url):
    blobs = Blobs(storage_url)
    assert blobs.get("a/one.bin") is None and blobs.children() == []
    blobs.put("a/one.bin", b"1" * 100_000)
    blobs.put("a/one.bin", b"2")  # replaced whole
    blobs.put("b.bin", b"b")
    assert blobs.get("a/one.bin") == b"2" and blobs.exists("a/one.bin") and not blobs.exists("a")
    assert blobs.children() == ["a", "b.bin"] and blobs.children("a") == ["one.bin"]  # no temporary keys left
    assert blobs.child("a").get("one.bin") == b"2"
    blobs.delete("a")
    blobs.delete("a")  # nothing there: no error
    assert blobs.children() == ["b.bin"]
    with pytest.raises(ValueError):
        blobs.get("../escape")


def test_datasets_round_trip_and_delete(storage_url, tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    datasets = DatasetStore(Blobs(f"{storage_url}/datasets"), store)
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    row = datasets.save(rows, "f.jsonl")
    assert datasets.save(rows).id == row.id  # content-addressed: stored once
    other_host = DatasetStore(Blobs(f"{storage_url}/datasets"), store)
    assert other_host.load(row.id) == rows and row.size_bytes == len(other_host.content(row.id))
    datasets.delete(row.id)
    assert Blobs(f"{storage_url}/datasets").children() == []


def test_a_checkpoint_saved_on_one_host_resumes_on_another(storage_url):
    area = Blobs(f"{storage_url}/checkpoints")
    here = Checkpoints(area.child("job_1"), 5)
    assert here.load("fp") is None and not here.exists()
    here.save({"fingerprint": "fp", "step": 7, "weights": torch.arange(4.0)})
    there = Checkpoints(Blobs(f"{storage_url}/checkpoints").child("job_1"), 5)
    state = there.load("fp")
    assert state["step"] == 7 and torch.equal(state["weights"], torch.arange(4.0))
    assert there.load("other settings") is None
    there.clear()
    assert not here.exists() and area.children() == []


def test_epoch_checkpoints_keep_the_newest_and_serve_from_any_host(storage_url, tmp_path):
    def epochs(host: str) -> EpochStore:
        return EpochStore(Blobs(f"{storage_url}/epochs"), 2, tmp_path / host / "cache", tmp_path / host / "tmp")

    def write(step):
        def into(folder):
            (folder / "adapter_config.json").write_text("{}")
            (folder / "adapter_model.safetensors").write_bytes(f"weights {step}".encode())

        return into

    mine = epochs("a")
    for step in (5, 10, 15):
        mine.save("job_1", step, write(step), {"epoch": step // 5})
    mine.save("job_1", 15, write(99), {"epoch": 3})  # a resumed run's same epoch: the first one stays
    other = epochs("b")
    assert [(v.version, v.meta["epoch"]) for v in other.list("job_1")] == [(10, 2), (15, 3)]
    got = other.get("job_1", 15)
    assert got.weights.read_bytes() == b"weights 15" and got.meta["sha256"]
    assert other.get("job_1", 5) is None  # pruned
    assert other.job_ids() == ["job_1"]
    other.delete("job_1")
    assert mine.list("job_1") == [] and Blobs(f"{storage_url}/epochs").children() == []


def test_an_object_store_that_is_away_is_a_503_not_a_traceback(tmp_path, monkeypatch, s3):
    from app.client.local import free_port
    from app.errors import StoreUnavailable

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries: the standard variable
    blobs = Blobs("s3://peftserve/away", skip_instance_cache=True, retries=1)  # a client made now, for that endpoint
    with pytest.raises(StoreUnavailable) as e:
        DatasetStore(blobs, JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")).save([{"text": "a", "label": "b"}])
    assert e.value.status_code == 503 and "did not answer" in e.value.message
