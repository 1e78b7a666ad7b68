"""What the server may touch on disk: only validated names under its configured roots; local base models only
under models_root; adapter weights as safetensors only (a pickle is never unpickled); checkpoints read with
torch's weights-only loader."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.base_models.tiny import toy_sentiment
from app.config import ModelSource, Settings
from app.jobs.worker import Worker
from app.main import create_app
from app.service import PeftServe
from app.stores.blobs import Blobs
from app.training.checkpoint import Checkpoints
from tests.support import ADMIN_HEADERS, make_settings, submit


class _Marker:
    """Unpickling this creates a file: proof that someone ran pickle.load on it."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("security")
    settings = make_settings(root, tiny_models)
    svc = PeftServe(settings)
    submit(svc, "real", toy_sentiment(60), epochs=2)
    Worker(settings).run(burst=True)
    svc.close()
    # An adapter-shaped folder beside the adapter store, and a dataset-shaped file beside the dataset store:
    # no request may read, serve, overwrite or delete them.
    outside = root / "outside"
    shutil.copytree(settings.adapters_dir / "real", outside)
    (settings.data_dir / "ds_secret.jsonl").write_text('{"text": "secret", "label": "x"}\n')
    return settings, root


TRAVERSALS = ["..", "../outside", "..%2Foutside", "%2e%2e%2foutside", "real/../../outside", "/etc/passwd", "a/b"]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_names_reach_nothing_outside_the_roots(trained, name):
    settings, root = trained
    before = tree(root / "outside") | {"ds": (settings.data_dir / "ds_secret.jsonl").read_bytes()}
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as c:
        answers = [
            c.get(f"/adapters/{name}"),
            c.delete(f"/adapters/{name}"),
            c.get(f"/datasets/{name}"),
            c.get("/datasets/..%2fds_secret"),
            c.get(f"/jobs/{name}"),
            c.post("/predict", json={"adapter": name, "inputs": "hello"}),
            c.post("/predict", json={"adapter": f"{name}@v1", "inputs": "hello"}),
            c.post("/evaluate", json={"adapter": name, "records": [{"text": "a", "label": "pos"}]}),
            c.post("/jobs", json={"adapter": name, "base_model": "tiny-bert", "train": {"records": toy_sentiment(8)}}),
            c.post("/jobs", json={"adapter": "ok", "base_model": "tiny-bert", "train": {"dataset": name}}),
        ]
        for r in answers:
            assert 400 <= r.status_code < 500, (r.request.url, r.status_code, r.text)
            assert set(r.json()["error"]) == {"code", "message", "field"}
        assert c.get("/adapters").json()["data"][0]["name"] == "real"  # the store itself is intact
    after = tree(root / "outside") | {"ds": (settings.data_dir / "ds_secret.jsonl").read_bytes()}
    assert after == before
    assert sorted(p.name for p in root.iterdir()) == ["adapters", "data", "outside"]  # nothing new beside them


def test_a_pickle_adapter_is_refused_and_never_unpickled(trained, tmp_path):
    settings, root = trained
    marker = tmp_path / "unpickled"
    version = settings.adapters_dir / "pickled" / "v1"
    version.mkdir(parents=True)
    real = settings.adapters_dir / "real" / "v1"
    for f in ("adapter_config.json", "peftserve.json"):
        shutil.copy(real / f, version / f)
    meta = json.loads((version / "peftserve.json").read_text())
    meta.update(name="pickled", sha256="")
    (version / "peftserve.json").write_text(json.dumps(meta))
    (version / "adapter_model.bin").write_bytes(pickle.dumps({"weights": _Marker(marker)}))
    try:
        with TestClient(create_app(settings), headers=ADMIN_HEADERS) as c:
            r = c.post("/predict", json={"adapter": "pickled", "inputs": "a lovely film"})
            assert r.status_code == 404 and "safetensors" in r.json()["error"]["message"], r.text
            assert c.post("/predict", json={"adapter": "real", "inputs": "a lovely film"}).status_code == 200
        assert not marker.exists()
    finally:
        shutil.rmtree(settings.adapters_dir / "pickled")


def test_a_pickled_checkpoint_is_not_executed(tmp_path):
    marker = tmp_path / "unpickled"
    ckpt = Checkpoints(Blobs(tmp_path / "job_x"), 10)
    (tmp_path / "job_x").mkdir()
    import torch

    torch.save({"format": 1, "fingerprint": "f", "evil": _Marker(marker)}, tmp_path / "job_x" / "checkpoint.pt")
    assert ckpt.load("f") is None  # refused by the weights-only loader: training starts over
    assert not marker.exists()


def test_local_models_only_under_models_root(tmp_path):
    root = tmp_path / "models"
    (root / "mine").mkdir(parents=True)
    ok = Settings(_env_file=None, models_root=root, models={"m": ModelSource(kind="local", location="mine")})
    assert ok.models["m"].location == str(root / "mine")  # relative to the root
    for location in (str(tmp_path / "elsewhere"), "../elsewhere", "mine/../../elsewhere", "/etc"):
        with pytest.raises(ValueError, match="outside models_root"):
            Settings(_env_file=None, models_root=root, models={"m": ModelSource(kind="local", location=location)})
    for location in (str(tmp_path), "./mine", "~/x"):  # a "hub" id naming a folder would load from disk
        with pytest.raises(ValueError, match="names a local path"):
            Settings(_env_file=None, models_root=root, models={"m": ModelSource(kind="hub", location=location)})
    assert Settings(_env_file=None, models={"h": ModelSource(kind="hub", location="org/model")}).models["h"]
