"""The HTTP contract through FastAPI's TestClient; training by an in-process burst worker."""

import json

import pytest
from fastapi.testclient import TestClient

from app.base_models.tiny import toy_sentiment, toy_topic
from app.errors import ValidationFailed
from app.jobs.worker import Worker
from app.main import create_app
from tests.support import ADMIN_HEADERS

HP = {
    "epochs": 15,
    "batch_size": 8,
    "learning_rate": 1e-2,
    "early_stopping_patience": 0,
    "target_modules": ["query", "value"],
}


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as c:
        c.settings = settings
        yield c


def train(client, adapter="sent", records=None, **extra):
    body = {
        "adapter": adapter,
        "base_model": "tiny-bert",
        "train": {"records": records or toy_sentiment(120)},
        "hyperparameters": HP,
        **extra,
    }
    r = client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    Worker(client.settings).run(burst=True)
    return client.get(f"/jobs/{r.json()['id']}").json()


def assert_error(r, status, field=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message", "field"} and err["message"]
    if field is not None:
        assert err["field"] == field, err
    return err


def test_job_lifecycle_metrics_predict_evaluate(client):
    r = client.post(
        "/jobs",
        json={
            "adapter": "sent",
            "base_model": "tiny-bert",
            "train": {"records": toy_sentiment(200)},
            "validation": {"records": toy_sentiment(100, seed=3)},
            "hyperparameters": HP,
        },
    )
    job = r.json()
    assert r.status_code == 202 and job["status"] == "queued" and job["result"] is None
    assert job["progress"] == {"step": 0, "total_steps": 0, "epoch": 0.0, "fraction": 0.0}
    assert job["hyperparameters"]["lora_r"] == 16 and job["hyperparameters"]["epochs"] == 15
    Worker(client.settings).run(burst=True)
    job = client.get(f"/jobs/{job['id']}").json()
    assert job["status"] == "succeeded" and job["result"]["adapter"] == "sent@v1"
    assert job["progress"]["fraction"] == 1.0 and job["started_at"] and job["finished_at"]
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    assert metrics["status"] == "succeeded" and len(metrics["eval"]) == 15
    assert {"step", "epoch", "loss", "learning_rate"} <= set(metrics["train"][0])
    assert {"step", "epoch", "loss", "accuracy", "f1_macro"} <= set(metrics["eval"][0])
    assert metrics["summary"]["accuracy"] == job["result"]["metrics"]["accuracy"]
    # per-label figures at every validation epoch and for the epoch kept, by label name
    last = metrics["eval"][-1]["per_label"]
    assert set(last) == {"neg", "pos"} and sum(v["support"] for v in last.values()) == 100
    kept = job["result"]["metrics"]["per_label"]
    assert set(kept) == {"neg", "pos"} and set(kept["pos"]) == {"precision", "recall", "f1", "support"}

    pred = client.post("/predict", json={"adapter": "sent", "inputs": "a great and lovely film"}).json()
    assert pred["adapter"] == "sent@v1" and len(pred["predictions"]) == 1
    p = pred["predictions"][0]
    assert p["label"] in ("pos", "neg") and p["score"] == max(p["scores"].values())
    many = client.post("/predict", json={"adapter": "sent@v1", "inputs": ["good", "awful", "dull"]}).json()
    assert len(many["predictions"]) == 3

    ev = client.post("/evaluate", json={"adapter": "sent", "records": toy_sentiment(40, seed=5)}).json()
    assert set(ev) == {
        "adapter",
        "n",
        "accuracy",
        "f1_macro",
        "precision_macro",
        "recall_macro",
        "per_label",
        "labels",
        "confusion_matrix",
    }
    assert ev["n"] == 40 and ev["labels"] == ["neg", "pos"] and ev["accuracy"] > 0.7
    # per label, what the confusion matrix says (rows: truth, columns: prediction)
    cm = ev["confusion_matrix"]
    for i, label in enumerate(ev["labels"]):
        tp, truth, predicted = cm[i][i], sum(cm[i]), sum(row[i] for row in cm)
        got = ev["per_label"][label]
        assert got["support"] == truth and got["recall"] == pytest.approx(tp / truth)
        assert got["precision"] == pytest.approx(tp / predicted if predicted else 0.0)
    assert ev["f1_macro"] == pytest.approx(sum(v["f1"] for v in ev["per_label"].values()) / 2)

    events = client.get(f"/jobs/{job['id']}/events").json()["data"]
    assert events[0]["message"].startswith("Job created") and events[-1]["message"] == "Saved adapter sent@v1"


def test_dataset_upload_and_job_from_dataset(client):
    rows = toy_sentiment(60)
    jsonl = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = client.post("/datasets", files={"file": ("train.jsonl", jsonl, "application/jsonl")})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["n_records"] == 60 and ds["labels"] == {"neg": 30, "pos": 30}
    assert client.post("/datasets", files={"file": ("again.jsonl", jsonl)}).json()["id"] == ds["id"]
    csv = "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in toy_sentiment(20, seed=3))
    val = client.post("/datasets", files={"file": ("val.csv", csv.encode())}).json()
    job = client.post(
        "/jobs",
        json={
            "adapter": "fromds",
            "base_model": "tiny-bert",
            "train": {"dataset": ds["id"]},
            "validation": {"dataset": val["id"]},
            "hyperparameters": {"epochs": 1},
        },
    )
    assert job.status_code == 202 and job.json()["validation_dataset"] == val["id"]
    assert client.get(f"/datasets/{ds['id']}").json()["n_records"] == 60


def test_adapters_versions_and_delete(client):
    train(client, "topic", toy_topic(60), hyperparameters={"epochs": 1})
    train(client, "topic", toy_topic(60, seed=1), hyperparameters={"epochs": 1})
    listing = client.get("/adapters").json()
    assert [a["name"] for a in listing["data"]] == ["topic"]
    one = client.get("/adapters/topic").json()
    assert one["latest"] == "topic@v2" and [v["version"] for v in one["versions"]] == [1, 2]
    assert one["versions"][0]["labels"] == ["neg", "pos", "sport"] and one["versions"][0]["sha256"]
    client.post("/predict", json={"adapter": "topic", "inputs": "goal"})
    assert [x["adapter"] for x in client.get("/adapters/loaded").json()] == ["topic@v2"]
    assert client.delete("/adapters/topic@v2").json() == {"deleted": ["topic@v2"]}
    assert client.post("/predict", json={"adapter": "topic", "inputs": "goal"}).json()["adapter"] == "topic@v1"
    assert client.delete("/adapters/topic").json() == {"deleted": ["topic@v1"]}
    assert_error(client.post("/predict", json={"adapter": "topic", "inputs": "goal"}), 404, "adapter")
    assert_error(client.get("/adapters/topic"), 404)


def test_list_and_cancel_jobs(client):
    ids = [
        client.post(
            "/jobs", json={"adapter": f"j{i}", "base_model": "tiny-bert", "train": {"records": toy_sentiment(20)}}
        ).json()["id"]
        for i in range(3)
    ]
    page = client.get("/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = client.get("/jobs", params={"limit": 2, "after": ids[1]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False
    cancelled = client.post(f"/jobs/{ids[0]}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert [j["id"] for j in client.get("/jobs", params={"status": "cancelled"}).json()["data"]] == [ids[0]]
    assert_error(client.post(f"/jobs/{ids[0]}/cancel"), 409)
    assert_error(client.get("/jobs", params={"status": "nope"}), 422, "status")
    # pause and resume (a queued job pauses at once; a paused one cancels at once)
    assert client.post(f"/jobs/{ids[1]}/pause").json()["status"] == "paused"
    assert [j["id"] for j in client.get("/jobs", params={"status": "paused"}).json()["data"]] == [ids[1]]
    assert_error(client.post(f"/jobs/{ids[1]}/pause"), 409, "job_id")
    assert client.post(f"/jobs/{ids[1]}/resume").json()["status"] == "queued"
    assert_error(client.post(f"/jobs/{ids[1]}/resume"), 409, "job_id")
    assert_error(client.post("/jobs/job_nope/pause"), 404, "job_id")
    client.post(f"/jobs/{ids[2]}/pause")
    assert client.post(f"/jobs/{ids[2]}/cancel").json()["status"] == "cancelled"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (
            {"adapter": "x", "train": {"records": [{"text": "a", "label": "p"}, {"text": "b", "label": "p"}]}},
            422,
            "train.records",
        ),
        (
            {"adapter": "x", "train": {"records": [{"text": "a", "label": "p"}, {"text": " ", "label": "n"}]}},
            422,
            "train.records[1].text",
        ),
        ({"adapter": "x", "train": {"records": [{"text": "a"}]}}, 422, "train.records[0].label"),
        (
            {"adapter": "x", "train": {"records": [{"text": "a", "label": "p", "extra": 1}]}},
            422,
            "train.records[0].extra",
        ),
        ({"adapter": "../etc", "train": {"records": [{"text": "a", "label": "p"}]}}, 422, "adapter"),
        (
            {"adapter": "x", "base_model": "gpt-17", "train": {"records": [{"text": "a", "label": "p"}]}},
            404,  # a reference to nothing: 404, as for an unknown adapter
            "base_model",
        ),
        ({"adapter": "x", "train": {"dataset": "ds_000000000000000000000000"}}, 404, "train.dataset"),
        ({"adapter": "x", "train": {"dataset": ""}}, 422, "train.dataset"),  # the document says: non-empty
        ({"adapter": "x", "train": {}}, 422, "train"),
        (
            {
                "adapter": "x",
                "train": {"records": [{"text": "a", "label": "p"}] * 3},
                "hyperparameters": {"learning_rate": -1},
            },
            422,
            "hyperparameters.learning_rate",
        ),
        (
            {
                "adapter": "x",
                "train": {"records": [{"text": "a", "label": "p"}] * 3},
                "hyperparameters": {"epochs": "many"},
            },
            422,
            "hyperparameters.epochs",
        ),
        (
            {"adapter": "x", "train": {"records": [{"text": "a", "label": "p"}] * 3}, "hyperparameters": {"lr": 1}},
            422,
            "hyperparameters.lr",
        ),
        (
            {"adapter": "x", "train": {"records": [{"text": "a", "label": "p"}] * 3}, "validation_split": 1.5},
            422,
            "validation_split",
        ),
        (
            {
                "adapter": "x",
                "train": {"records": toy_sentiment(10)},
                "validation": {"records": [{"text": "a", "label": "other"}]},
            },
            422,
            "validation.records[0].label",
        ),
    ],
)
def test_bad_job_requests_get_4xx_naming_the_field(client, body, status, field):
    assert_error(client.post("/jobs", json=body), status, field)
    assert client.get("/jobs").json()["data"] == []  # nothing queued


def test_bad_inference_requests(client):
    train(client, "sent", toy_sentiment(40), hyperparameters={"epochs": 1})
    assert_error(client.post("/predict", json={"adapter": "sent", "inputs": []}), 422, "inputs")
    assert_error(client.post("/predict", json={"adapter": "sent", "inputs": [""]}), 422, "inputs[0]")
    assert_error(client.post("/predict", json={"adapter": "sent", "inputs": ["a"] * 257}), 422, "inputs")
    assert_error(client.post("/predict", json={"adapter": "sent@v9", "inputs": "a"}), 404, "adapter")
    assert_error(client.post("/predict", json={"adapter": "a/b", "inputs": "a"}), 422, "adapter")
    assert_error(client.post("/predict", json={"inputs": "a"}), 422, "adapter")
    assert_error(
        client.post("/evaluate", json={"adapter": "sent", "records": [{"text": "a", "label": "zzz"}]}),
        422,
        "records[0].label",
    )
    r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 422, "body")
    assert_error(client.get("/jobs/job_nope"), 404, "job_id")
    assert_error(client.get("/nope"), 404)
    bad = client.post(
        "/datasets", files={"file": ("d.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n')}
    )
    assert bad.status_code == 422
    assert client.get("/health").json()["status"] == "ok"  # still serving


def test_upload_limit(tmp_path, tiny_models):
    from tests.support import make_settings

    with TestClient(create_app(make_settings(tmp_path, tiny_models, max_upload_bytes=100)), headers=ADMIN_HEADERS) as c:
        r = c.post("/datasets", files={"file": ("d.jsonl", b'{"text": "aaaa", "label": "x"}\n' * 10)})
        assert_error(r, 413, "file")


def test_long_inputs_are_truncated_to_the_model_positions(client):
    # tiny-bert has 128 positions; max_length above that is capped, not a 500 later
    train(client, "long", toy_sentiment(40), hyperparameters={"epochs": 1, "max_length": 1024})
    r = client.post("/predict", json={"adapter": "long", "inputs": "good " * 2000})
    assert r.status_code == 200, r.text
    ev = client.post("/evaluate", json={"adapter": "long", "records": [{"text": "bad " * 2000, "label": "neg"}]})
    assert ev.status_code == 200, ev.text


def test_unicode_surrogates_and_unparseable_bodies_are_422(client):
    raw = b'{"adapter": "x", "train": {"records": [{"text": "\\ud800", "label": "a"}]}}'
    err = assert_error(client.post("/jobs", content=raw, headers={"content-type": "application/json"}), 422)
    assert err["field"] == "train.records[0].text"
    raw = b'{"adapter": "x", "inputs": ["ok", "\\udfff"]}'
    assert_error(client.post("/predict", content=raw, headers={"content-type": "application/json"}), 422, "inputs[1]")
    deep = b"[" * 100_000 + b"]" * 100_000
    assert_error(client.post("/jobs", content=deep, headers={"content-type": "application/json"}), 422, "body")
    assert_error(client.get("/jobs/job_x/events", params={"after": 2**63}), 422, "after")
    assert_error(client.get("/jobs", params={"after": "job_unknown"}), 404, "after")
    assert_error(client.post("/evaluate", json={"adapter": "x"}), 422, "body")


def test_get_one_pinned_version(client):
    train(client, "pin", toy_sentiment(40), hyperparameters={"epochs": 1})
    train(client, "pin", toy_topic(45), hyperparameters={"epochs": 1})
    one = client.get("/adapters/pin@v1").json()
    assert one["latest"] == "pin@v2" and [v["ref"] for v in one["versions"]] == ["pin@v1"]
    assert_error(client.get("/adapters/pin@v7"), 404)


def test_a_base_that_cannot_be_served_is_refused_before_anything_trains(tmp_path, tiny_models):
    """A vision model (no sequence-classification class in transformers) as a local base: 422 naming
    base_model at POST /jobs, no job stored."""
    from transformers import ViTConfig

    from tests.support import make_settings, models_root

    folder = models_root(tiny_models) / "tiny-vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(folder)
    settings = make_settings(tmp_path, {**tiny_models, "tiny-vit": folder})
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as c:
        body = {"adapter": "v", "base_model": "tiny-vit", "train": {"records": toy_sentiment(20)}}
        err = assert_error(c.post("/jobs", json=body), 422, "base_model")
        assert "tiny-vit" in err["message"] and "sequence-classification" in err["message"], err
        assert c.get("/jobs").json()["data"] == []
        ok = c.post("/jobs", json={**body, "base_model": "tiny-bert"})  # the server still takes good jobs
        assert ok.status_code == 202, ok.text


def test_download_is_a_peft_folder_that_predicts_what_the_server_predicts(client, tmp_path):
    import io
    import tarfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert train(client, "topic", toy_topic(120))["status"] == "succeeded"
    r = client.get("/adapters/topic@v1/archive")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    assert r.headers["content-disposition"] == 'attachment; filename="topic-v1.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        members = tar.getmembers()
        assert all(m.isfile() and m.name.startswith("topic-v1/") for m in members)
        tar.extractall(tmp_path, filter="data")
    assert client.get("/adapters/topic/archive").content == r.content  # newest = v1, and the same bytes
    folder = tmp_path / "topic-v1"
    labels = json.loads((folder / "peftserve.json").read_text())["labels"]
    assert labels == ["neg", "pos", "sport"]

    base_path = client.settings.models["tiny-bert"].location  # what the README in the archive tells a user to do
    base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=len(labels))
    tok = AutoTokenizer.from_pretrained(base_path)
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    texts = ["good film and a great cast", "goal match team", "awful plot"]
    with torch.no_grad():
        expected = [torch.softmax(model(**tok([t], return_tensors="pt")).logits, -1)[0] for t in texts]
    served = client.post("/predict", json={"adapter": "topic@v1", "inputs": texts}).json()["predictions"]
    for e, p in zip(expected, served, strict=True):
        assert [p["scores"][label] for label in labels] == pytest.approx(e.tolist(), abs=1e-5)

    assert_error(client.get("/adapters/nope/archive"), 404, "ref")
    assert_error(client.get("/adapters/topic@v9/archive"), 404, "ref")
    assert_error(client.get("/adapters/-x/archive"), 422, "ref")


def test_init_from_continues_an_adapter_and_records_its_parent(client):
    first = train(client, "sent", toy_sentiment(120))
    assert first["status"] == "succeeded"
    texts = ["good film and a great cast", "awful plot", "the movie was dull"]
    before = client.post("/predict", json={"adapter": "sent@v1", "inputs": texts}).json()["predictions"]

    # With a learning rate too small to move anything, the continued version answers as its parent does: it
    # started from the parent's LoRA weights and head (a fresh head would answer near chance).
    still = {**HP, "learning_rate": 1e-12, "epochs": 1}
    body = {"adapter": "sent", "base_model": "tiny-bert", "train": {"records": toy_sentiment(60, seed=9)}}
    r = client.post("/jobs", json={**body, "init_from": "sent", "hyperparameters": still})
    assert r.status_code == 202, r.text
    assert r.json()["init_from"] == "sent@v1"  # pinned at submit
    Worker(client.settings).run(burst=True)
    job = client.get(f"/jobs/{r.json()['id']}").json()
    assert job["status"] == "succeeded" and job["result"]["adapter"] == "sent@v2", job
    after = client.post("/predict", json={"adapter": "sent@v2", "inputs": texts}).json()["predictions"]
    for b, a in zip(before, after, strict=True):
        assert a["label"] == b["label"] and a["scores"] == pytest.approx(b["scores"], abs=1e-4)
    versions = client.get("/adapters/sent").json()["versions"]
    assert [v["parent"] for v in versions] == [None, "sent@v1"]
    assert versions[1]["hyperparameters"]["target_modules"] == HP["target_modules"]  # the parent's structure

    # refused before anything is stored, naming the field
    assert_error(client.post("/jobs", json={**body, "init_from": "nope"}), 404, "init_from")
    assert_error(client.post("/jobs", json={**body, "init_from": "sent@v7"}), 404, "init_from")
    topic = {**body, "train": {"records": toy_topic(60)}, "init_from": "sent"}
    err = assert_error(client.post("/jobs", json=topic), 422, "init_from")
    assert "labels" in err["message"]
    other_base = {**body, "base_model": "tiny-llama", "init_from": "sent"}
    assert_error(client.post("/jobs", json=other_base), 422, "init_from")
    other_rank = {**body, "init_from": "sent", "hyperparameters": {**HP, "lora_r": 4}}
    assert_error(client.post("/jobs", json=other_rank), 422, "hyperparameters.lora_r")
    assert len(client.get("/jobs").json()["data"]) == 2


def test_one_input_through_several_classifiers_in_one_batch(client):
    assert train(client, "sent", toy_sentiment(120))["status"] == "succeeded"
    assert train(client, "topic", toy_topic(120))["status"] == "succeeded"
    texts = ["good film and a great cast", "goal match team", "awful plot"]
    svc = client.app.state.service
    batches_before = svc.engine.stats["batches"]
    r = client.post("/predict", json={"adapters": ["topic", "sent@v1"], "inputs": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["adapters"] == ["topic@v1", "sent@v1"] and len(body["predictions"]) == 3
    assert svc.engine.stats["batches"] - batches_before == 1  # both adapters' rows in one forward batch
    for name in ("topic", "sent@v1"):
        alone = client.post("/predict", json={"adapter": name, "inputs": texts}).json()["predictions"]
        for row, single in zip(body["predictions"], alone, strict=True):
            assert row[name]["label"] == single["label"]
            assert row[name]["scores"] == pytest.approx(single["scores"], abs=1e-5)

    assert_error(client.post("/predict", json={"inputs": "x"}), 422, "adapter")
    assert_error(
        client.post("/predict", json={"adapter": "sent", "adapters": ["topic"], "inputs": "x"}), 422, "adapters"
    )
    assert_error(client.post("/predict", json={"adapters": [], "inputs": "x"}), 422, "adapters")
    assert_error(client.post("/predict", json={"adapters": ["sent", "sent"], "inputs": "x"}), 422, "adapters")
    assert_error(client.post("/predict", json={"adapters": ["sent", "nope"], "inputs": "x"}), 404, "adapters[1]")
    assert_error(client.post("/predict", json={"adapters": ["sent"], "inputs": [""]}), 422, "inputs[0]")


def _tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def _import(client, content: bytes, name="imp", base_model="tiny-bert", labels=None):
    data = {"name": name, "base_model": base_model, **({"labels": labels} if labels is not None else {})}
    return client.post("/adapters", data=data, files={"file": ("a.tar.gz", content, "application/gzip")})


def test_import_an_adapter_trained_elsewhere_with_peft(client, tmp_path):
    """A folder saved by plain peft (SEQ_CLS, the head as modules_to_save, labels in config.json) serves what
    plain peft computes."""
    import torch
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base_path = client.settings.models["tiny-bert"].location
    labels = ["billing", "tech", "other"]
    torch.manual_seed(3)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_path, num_labels=3, id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)}
    )
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # a trained-looking adapter: its LoRA moves the answers
    peft_model.save_pretrained(tmp_path / "elsewhere")
    model.config.save_pretrained(tmp_path / "elsewhere")  # config.json with id2label, as Trainer saves
    files = {f"elsewhere/{p.name}": p.read_bytes() for p in (tmp_path / "elsewhere").iterdir()}

    r = _import(client, _tar(files), name="support")
    assert r.status_code == 201, r.text
    assert r.json()["ref"] == "support@v1" and r.json()["labels"] == labels

    texts = ["good film", "goal match team score", "awful"]
    tok = AutoTokenizer.from_pretrained(base_path)
    fresh = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=3)
    reference = PeftModel.from_pretrained(fresh, str(tmp_path / "elsewhere")).eval()
    served = client.post("/predict", json={"adapter": "support", "inputs": texts}).json()["predictions"]
    with torch.no_grad():
        for t, p in zip(texts, served, strict=True):
            want = torch.softmax(reference(**tok([t], return_tensors="pt")).logits, -1)[0].tolist()
            assert [p["scores"][label] for label in labels] == pytest.approx(want, abs=1e-5)


def test_import_round_trips_a_download_and_refuses_bad_archives(client):
    assert train(client, "sent", toy_sentiment(120))["status"] == "succeeded"
    archive = client.get("/adapters/sent/archive").content
    r = _import(client, archive, name="copy")
    assert r.status_code == 201, r.text
    texts = ["a lovely film", "dull and boring"]
    a = client.post("/predict", json={"adapter": "sent", "inputs": texts}).json()["predictions"]
    b = client.post("/predict", json={"adapter": "copy", "inputs": texts}).json()["predictions"]
    assert [p["scores"] for p in a] == [p["scores"] for p in b]

    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        good = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    peft_files = {k: good[k] for k in ("adapter_config.json", "adapter_model.safetensors")}
    dora = json.loads(good["adapter_config.json"]) | {"use_dora": True}
    refused = {
        "a link": _tar(peft_files, links={"x/peftserve.json": "/etc/passwd"}),
        "dot-dot": _tar({**peft_files, "../evil.json": b"{}"}),
        "absolute": _tar({**peft_files, "/tmp/evil.json": b"{}"}),
        "a pickle": _tar({**peft_files, "pytorch_model.bin": b"\x80\x04."}),
        "no weights": _tar({"adapter_config.json": good["adapter_config.json"]}),
        "not a tarball": b"PK\x03\x04 not a tar",
        "DoRA": _tar({**peft_files, "adapter_config.json": json.dumps(dora).encode()}),
        "not safetensors": _tar({**peft_files, "adapter_model.safetensors": b"\x00" * 64}),
        "two folders": _tar({f"a/{k}": v for k, v in peft_files.items()} | {"b/peftserve.json": b"{}"}),
    }
    for case, content in refused.items():
        r = _import(client, content, labels="neg,pos")
        assert r.status_code == 422 and r.json()["error"]["field"] == "file", (case, r.text)
    # labels: none to be found, or not one per head output
    assert_error(_import(client, _tar(peft_files)), 422, "labels")
    assert_error(_import(client, _tar(peft_files), labels="a,b,c"), 422, "file")
    assert_error(_import(client, _tar(peft_files), labels='["a", "a"]'), 422, "labels")
    # the base: unknown, or one whose layers it does not fit
    assert_error(_import(client, archive, base_model="nope"), 404, "base_model")
    assert_error(_import(client, archive, base_model="tiny-llama"), 422, "file")
    assert_error(_import(client, archive, name="../x"), 422, "name")
    assert [a["name"] for a in client.get("/adapters").json()["data"]] == ["copy", "sent"]  # nothing else stored


def test_import_refuses_archives_that_would_unpack_into_too_much(client):
    """Bounded reading: gzip only, at most 64 entries, file contents within the upload limit (checked from the
    headers, before a byte is read)."""
    import io
    import tarfile

    from app.stores.archive import read_archive

    def tar_of(mode: str, files: dict[str, int]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as tar:
            for name, size in files.items():
                info = tarfile.TarInfo(name)
                info.size = size
                tar.addfile(info, io.BytesIO(b"\0" * size))
        return buf.getvalue()

    bz2 = tar_of("w:bz2", {"adapter_config.json": 10, "adapter_model.safetensors": 10})
    many = tar_of("w:gz", {f"f{i}.txt": 1 for i in range(65)})
    big = tar_of("w:gz", {"adapter_config.json": 10, "adapter_model.safetensors": 2_000_000})
    for content in (bz2, many, big):
        with pytest.raises(ValidationFailed) as e:
            read_archive(content, max_bytes=1_000_000)
        assert e.value.field == "file"
    assert len(big) < 10_000  # a few kB that would have unpacked to 2 MB
    r = client.post(
        "/adapters",
        data={"name": "x", "base_model": "tiny-bert"},
        files={"file": ("a.tar.gz", b"\0" * (client.settings.max_upload_bytes + 2_000_000), "application/gzip")},
    )
    assert_error(r, 413, "file")


def test_import_checks_labels_and_what_init_from_may_continue(client):
    import io
    import tarfile

    assert train(client, "sent", toy_sentiment(120))["status"] == "succeeded"
    with tarfile.open(fileobj=io.BytesIO(client.get("/adapters/sent/archive").content)) as tar:
        good = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    peft_files = {k: good[k] for k in ("adapter_config.json", "adapter_model.safetensors")}
    for labels in (2, True, "ab", ["x", "x"], ["", "y"]):
        meta = json.dumps({"labels": labels}).encode()
        assert_error(_import(client, _tar({**peft_files, "peftserve.json": meta})), 422, "file")
    assert_error(_import(client, _tar(peft_files), labels="a, a"), 422, "labels")

    # a parent whose LoRA structure this server does not train (a regex target_modules), or rsLoRA: refused
    # at POST /jobs naming init_from, not accepted and failed later
    config = json.loads(good["adapter_config.json"])
    regex = {**peft_files, "adapter_config.json": json.dumps({**config, "target_modules": "query|value"}).encode()}
    assert _import(client, _tar(regex), name="regex", labels="neg,pos").status_code == 201
    rs = {**peft_files, "adapter_config.json": json.dumps({**config, "use_rslora": True}).encode()}
    assert _import(client, _tar(rs), name="rs", labels="neg,pos").status_code == 201
    body = {"adapter": "next", "base_model": "tiny-bert", "train": {"records": toy_sentiment(40)}}
    for parent in ("regex", "rs"):
        assert_error(client.post("/jobs", json={**body, "init_from": parent}), 422, "init_from")
    big_rank = {**peft_files, "adapter_config.json": json.dumps({**config, "r": 300}).encode()}
    assert_error(_import(client, _tar(big_rank), name="big", labels="neg,pos"), 422, "file")


def test_multi_label_trains_serves_and_evaluates(client, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from app.base_models.tiny import toy_multilabel

    # The seeds below were measured at rank 8 (alpha 16), the default then; pinned so the figures still hold.
    hp = {**HP, "epochs": 12, "tune_thresholds": True, "lora_r": 8, "lora_alpha": 16}
    body = {"adapter": "tags", "base_model": "tiny-bert", "train": {"records": toy_multilabel(240)},
            "validation": {"records": toy_multilabel(60, seed=4)}, "hyperparameters": hp}  # fmt: skip
    r = client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    Worker(client.settings).run(burst=True)
    job = client.get(f"/jobs/{r.json()['id']}").json()
    assert job["status"] == "succeeded", job
    m = job["result"]["metrics"]
    assert {"f1_micro", "f1_macro", "subset_accuracy", "hamming_loss", "per_label"} <= set(m)
    # Every label for every row scores f1_micro 0.56 here; seeds 0-4 of this set-up trained to 0.67-0.83 (seed 0,
    # the one used: 0.76). The test is seeded; a threshold at 0.8 had held only by the luck of one dropout draw.
    assert set(m["per_label"]) == {"negative", "positive", "sport"} and m["f1_micro"] > 0.7, m
    version = client.get("/adapters/tags").json()["versions"][0]
    assert version["labels"] == ["negative", "positive", "sport"]
    evals = client.get(f"/jobs/{job['id']}/metrics").json()["eval"]
    assert evals[-1]["subset_accuracy"] is not None and evals[-1]["hamming_loss"] is not None

    texts = ["the goal and a superb match", "a dull film", "the plot and the actor"]
    pred = client.post("/predict", json={"adapter": "tags", "inputs": texts}).json()["predictions"]
    assert set(pred[0]["labels"]) == {"positive", "sport"}, pred  # a clear row with two labels
    assert all(set(p["labels"]) <= {"negative", "positive", "sport"} for p in pred)
    # the probabilities are the sigmoids plain peft gives on the saved folder
    base_path = client.settings.models["tiny-bert"].location
    folder = client.app.state.service.adapters.resolve("tags").path
    ref = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=3), str(folder)
    ).eval()
    tok = AutoTokenizer.from_pretrained(base_path)
    with torch.no_grad():
        for t, p in zip(texts, pred, strict=True):
            want = torch.sigmoid(ref(**tok([t], return_tensors="pt")).logits)[0].tolist()
            assert [p["scores"][k] for k in ("negative", "positive", "sport")] == pytest.approx(want, abs=1e-5)

    ev = client.post("/evaluate", json={"adapter": "tags", "records": toy_multilabel(60, seed=9)}).json()
    assert set(ev) == {"adapter", "n", "f1_micro", "f1_macro", "subset_accuracy", "hamming_loss", "per_label",
                       "labels", "thresholds"}  # fmt: skip
    assert ev["n"] == 60 and len(ev["thresholds"]) == 3 and ev["subset_accuracy"] > 0.35, ev  # "none": 1/6
    # the figures are those of the decisions /predict gives on the same rows
    from sklearn.metrics import f1_score, hamming_loss

    rows = toy_multilabel(60, seed=9)
    decided = client.post("/predict", json={"adapter": "tags", "inputs": [r["text"] for r in rows]}).json()
    names = ev["labels"]
    truth = [[int(n in r["label"]) for n in names] for r in rows]
    got = [[int(n in p["labels"]) for n in names] for p in decided["predictions"]]
    assert ev["f1_micro"] == pytest.approx(f1_score(truth, got, average="micro"))
    assert ev["hamming_loss"] == pytest.approx(hamming_loss(truth, got))

    # single- and multi-label adapters in one mixed batch
    assert train(client, "sent", toy_sentiment(80))["status"] == "succeeded"
    both = client.post("/predict", json={"adapters": ["sent", "tags"], "inputs": texts}).json()["predictions"]
    assert "label" in both[0]["sent"] and both[0]["tags"]["labels"] == pred[0]["labels"]
    for row, p in zip(both, pred, strict=True):
        assert row["tags"]["scores"] == pytest.approx(p["scores"], abs=1e-5)

    # refused, naming the row or field
    mixed = toy_multilabel(6) + [{"text": "a good film", "label": "positive"}]
    err = assert_error(client.post("/jobs", json={**body, "train": {"records": mixed}}), 422, "train.records[6].label")
    assert "mix" in err["message"]
    single_val = {**body, "validation": {"records": toy_sentiment(10)}}
    assert_error(client.post("/jobs", json=single_val), 422, "validation")
    assert_error(
        client.post("/evaluate", json={"adapter": "tags", "records": toy_sentiment(4)}), 422, "records[0].label"
    )
    assert_error(client.post("/jobs", json={**body, "train": {"records": [{"text": "x", "label": ["a", 3]}]}}), 422,
                 "train.records[0].label[1]")  # fmt: skip


def test_a_multi_label_adapter_round_trips_through_download_and_import(client):
    from app.base_models.tiny import toy_multilabel

    hp = {**HP, "epochs": 4, "tune_thresholds": True}
    body = {
        "adapter": "tags",
        "base_model": "tiny-bert",
        "train": {"records": toy_multilabel(120)},
        "hyperparameters": hp,
    }
    assert client.post("/jobs", json=body).status_code == 202
    Worker(client.settings).run(burst=True)
    r = _import(client, client.get("/adapters/tags/archive").content, name="tags-copy")
    assert r.status_code == 201, r.text
    texts = ["the goal and a superb match", "a dull film"]
    a = client.post("/predict", json={"adapter": "tags", "inputs": texts}).json()["predictions"]
    b = client.post("/predict", json={"adapter": "tags-copy", "inputs": texts}).json()["predictions"]
    assert a == b and all("labels" in p for p in b)  # multi-label, with the same thresholds


def test_multi_label_csv_upload(client):
    csv = b"text,labels\nthe goal and a superb match,positive|sport\na dull film,negative\nthe plot,\n"
    r = client.post("/datasets", files={"file": ("tags.csv", csv)})
    assert r.status_code == 201, r.text
    assert r.json()["multi_label"] is True and r.json()["labels"] == {"negative": 1, "positive": 1, "sport": 1}
    single = client.post("/datasets", files={"file": ("s.csv", b"text,label\na,x\nb,y\n")}).json()
    assert single["multi_label"] is False


def test_datasets_are_a_resource_listed_described_and_deleted(client):
    rows = [{"text": f"text number {i} " + "word " * i, "label": ["pos", "neg"][i % 3 == 0]} for i in range(30)]
    first = client.post("/datasets", files={"file": ("a.jsonl", "".join(json.dumps(r) + "\n" for r in rows))}).json()
    second = client.post("/datasets", files={"file": ("b.csv", b"text,label,text_pair\nx,y,z\nu,v,w\n")}).json()
    page = client.get("/datasets", params={"limit": 1}).json()
    assert [d["id"] for d in page["data"]] == [second["id"]] and page["has_more"]  # newest first
    page = client.get("/datasets", params={"limit": 1, "after": second["id"]}).json()
    assert [d["id"] for d in page["data"]] == [first["id"]] and not page["has_more"]
    assert_error(client.get("/datasets", params={"after": "ds_nothing"}), 404, "after")

    d = client.get(f"/datasets/{first['id']}").json()
    assert d["labels"] == {"neg": 10, "pos": 20} and d["n_records"] == 30 and d["filename"] == "a.jsonl"
    assert d["length_words"] == {"p50": 18, "p90": 30, "p99": 32, "max": 32}  # 3 + i words, i < 30: 3..32
    assert d["length_chars"]["max"] == len(rows[-1]["text"]) and len(d["first_rows"]) == 5
    assert d["first_rows"][0] == {"text": rows[0]["text"], "label": "neg"} and d["sha256"].startswith(first["id"][3:])
    assert client.get(f"/datasets/{second['id']}").json()["first_rows"][0] == {
        "text": "x",
        "label": "y",
        "text_pair": "z",
    }

    job = client.post(
        "/jobs",
        json={"adapter": "x", "base_model": "tiny-bert", "train": {"dataset": first["id"]}, "hyperparameters": HP},
    ).json()
    err = assert_error(client.delete(f"/datasets/{first['id']}"), 409, "dataset_id")
    assert job["id"] in err["message"]  # names the job that holds it
    client.post(f"/jobs/{job['id']}/cancel")
    assert client.delete(f"/datasets/{first['id']}").json() == {"deleted": [first["id"]]}
    assert_error(client.get(f"/datasets/{first['id']}"), 404)
    assert_error(client.delete(f"/datasets/{first['id']}"), 404)
    assert [d["id"] for d in client.get("/datasets").json()["data"]] == [second["id"]]


def test_errors_suggest_the_closest_name_and_list_what_exists(client):
    body = {"adapter": "x", "base_model": "tiny-bert", "train": {"records": toy_sentiment(20)}}
    err = assert_error(client.post("/jobs", json={**body, "hyperparameters": {"learnig_rate": 1e-3}}), 422)
    assert err["field"] == "hyperparameters.learnig_rate"
    assert "did you mean 'learning_rate'?" in err["message"] and "epochs, learning_rate, lora_alpha" in err["message"]
    err = assert_error(client.post("/jobs", json={**body, "validaton_split": 0.2}), 422, "validaton_split")
    assert "did you mean 'validation_split'?" in err["message"]
    err = assert_error(client.post("/jobs", json={**body, "base_model": "tiny-bret"}), 404, "base_model")
    assert "did you mean 'tiny-bert'?" in err["message"] and "tiny-llama" in err["message"]
    train(client, "sentiment", records=toy_sentiment(24))
    err = assert_error(client.post("/predict", json={"adapter": "sentimnet", "inputs": ["good"]}), 404, "adapter")
    assert "did you mean 'sentiment'?" in err["message"] and "(adapters: sentiment)" in err["message"]
    r = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-bert", "hyperparameter": {}})
    assert r.status_code == 400 and "did you mean 'hyperparameters'?" in r.json()["error"]["message"]


def test_integer_labels_are_taken_as_names_and_the_dataset_says_so(client):
    body = b'{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n{"text": "c", "label": 1}\n'
    ds = client.post("/datasets", files={"file": ("ints.jsonl", body)}).json()
    assert ds["labels"] == {"0": 1, "1": 2}
    assert ds["notes"] == ["integer labels (0, 1) were read as label names: predictions answer them as strings"]
    assert client.get(f"/datasets/{ds['id']}").json()["notes"] == ds["notes"]
    named = client.post("/datasets", files={"file": ("s.csv", b"text,label\na,x\nb,y\n")}).json()
    assert named["notes"] == []


def test_the_api_document_tells_the_truth_about_what_it_accepts(client):
    doc = client.get("/openapi.json").json()
    for path, ops in doc["paths"].items():  # a 405 lists every method of the path (OPTIONS is served by none)
        r = client.options(path.replace("{", "").replace("}", ""))
        assert r.status_code == 405 and r.headers["allow"] == ", ".join(sorted(m.upper() for m in ops)), path
    schemas = doc["components"]["schemas"]
    assert schemas["DataSource"]["oneOf"] == [{"required": ["records"]}, {"required": ["dataset"]}]
    assert schemas["PredictRequest"]["oneOf"] == [{"required": ["adapter"]}, {"required": ["adapters"]}]
    assert "pattern" in schemas["JobCreate"]["properties"]["adapter"]
    params = {p["name"]: p for p in doc["paths"]["/jobs/{job_id}/events"]["get"]["parameters"]}
    assert params["last-event-id"]["schema"]["pattern"] == "^[0-9]{1,18}$"
    assert "multipart/form-data" in doc["paths"]["/adapters"]["post"]["requestBody"]["content"]
    # what the document allows is accepted: a name with "..", an upload named "file", a valid Last-Event-ID
    assert client.get("/adapters/a..b").status_code == 404
    ds = client.post("/datasets", files={"file": ("file", b'{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}')})
    assert ds.status_code == 201, ds.text
    job = train(client, "sent", records=toy_sentiment(24))
    r = client.get(f"/jobs/{job['id']}/events", params={"stream": "true"}, headers={"Last-Event-ID": "2"})
    assert r.status_code == 200 and "id: 1\n" not in r.text and "id: 3\n" in r.text
    assert_error(
        client.get(f"/jobs/{job['id']}/events", params={"stream": "true"}, headers={"Last-Event-ID": "x"}), 422
    )
    err = assert_error(client.post("/predict", json={"adapter": "sent", "inputs": ["  "]}), 422, "inputs[0]")
    assert err["message"].startswith("inputs[0]: is empty")
    assert_error(client.post("/predict", json={"adapter": "sent", "inputs": []}), 422, "inputs")
    assert_error(client.get("/jobs", params={"after": ""}), 422, "after")
