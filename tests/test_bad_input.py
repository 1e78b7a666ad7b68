"""Issue 5, "Bad input": a corpus of bad requests.

Each one gets a 4xx in the one error envelope naming the field (and the row where there is one), never a
5xx, and stores nothing: every case snapshots what is stored (adapter files, dataset files and rows, jobs, the
adapter listing) before its request and compares right after it, so a case that stores something fails on its
own. At the end the server still serves the same answers. One server and one trained adapter serve the module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.base_models.tiny import toy_sentiment, toy_topic
from app.jobs.tables import DatasetRow, Job
from app.jobs.worker import Worker
from app.main import create_app
from tests.support import ADMIN_HEADERS, make_settings

HP = {
    "epochs": 3,
    "batch_size": 8,
    "learning_rate": 1e-2,
    "early_stopping_patience": 0,
    "target_modules": ["query", "value"],
}
PROBE = ["a great and lovely film", "an awful boring plot"]
MAX_TEXT = 20_000  # the default max_text_chars
MAX_PREDICT = 256  # the default max_predict_inputs


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


GOOD = toy_sentiment(20, seed=7)
GOOD_JSONL = jsonl(GOOD)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models):
    settings = make_settings(tmp_path_factory.mktemp("bad-input"), tiny_models)
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as c:
        c.settings = settings
        r = c.post("/datasets", files={"file": ("train.jsonl", jsonl(toy_sentiment(40)))})
        assert r.status_code == 201, r.text
        c.dataset_id = r.json()["id"]
        # a stored dataset whose labels the adapter does not know, for /evaluate
        r = c.post("/datasets", files={"file": ("topic.jsonl", jsonl(toy_topic(9)))})
        assert r.status_code == 201, r.text
        c.topic_dataset_id = r.json()["id"]
        r = c.post(
            "/jobs",
            json={
                "adapter": "sent",
                "base_model": "tiny-bert",
                "train": {"dataset": c.dataset_id},
                "hyperparameters": HP,
            },
        )
        assert r.status_code == 202, r.text
        c.job_id = r.json()["id"]
        Worker(settings).run(burst=True)
        job = c.get(f"/jobs/{c.job_id}").json()
        assert job["status"] == "succeeded", job
        c.answer = c.post("/predict", json={"adapter": "sent", "inputs": PROBE}).json()
        c.before = snapshot(c)
        yield c


def snapshot(client) -> dict:
    """What is stored: adapter files with their hashes, dataset files and rows, jobs with their state."""
    settings = client.settings
    svc = client.app.state.service

    def files(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"
        }

    with svc.store.session() as s:
        datasets = sorted((d.id, d.n_records) for d in s.scalars(select(DatasetRow)))
        jobs = sorted((j.id, j.status, j.result_adapter) for j in s.scalars(select(Job)))
    return {
        "adapters": files(settings.adapters_dir),
        "dataset_files": files(settings.datasets_dir),
        "datasets": datasets,
        "jobs": jobs,
        "listing": client.get("/adapters").json()["data"],
    }


@contextmanager
def stores_nothing(client) -> Iterator[None]:
    """What is stored is the same right after the request(s) in the block as right before them."""
    before = snapshot(client)
    yield
    assert snapshot(client) == before, "the request changed what is stored"


def check_error(r, field: str | None, status: int | tuple[int, ...] = 422) -> dict:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "field"}, err
    assert isinstance(err["message"], str) and err["message"].strip(), err
    assert isinstance(err["code"], str) and err["code"], err
    assert err["field"] == field, err
    return err


def rec(text="a film", label="pos", **more) -> dict:
    return {"text": text, "label": label, **more}


def two(*rows) -> list:
    """Valid rows of both labels, then the given ones (so their index is 2, 3, ...)."""
    return [rec("a good film", "pos"), rec("a bad film", "neg"), *rows]


def job(records=None, **body) -> dict:
    return {
        "adapter": "new",
        "base_model": "tiny-bert",
        "train": {"records": two() if records is None else records},
        **body,
    }


# ---- POST /jobs with a JSON body ----------------------------------------------------------------------
JOB_CASES = [
    # adapter names
    ("name-missing", {"base_model": "tiny-bert", "train": {"records": two()}}, "adapter"),
    ("name-dotdot", job(adapter="../etc"), "adapter"),
    ("name-slash", job(adapter="a/b"), "adapter"),
    ("name-backslash", job(adapter="a\\b"), "adapter"),
    ("name-space", job(adapter="my adapter"), "adapter"),
    ("name-leading-dot", job(adapter=".hidden"), "adapter"),
    ("name-empty", job(adapter=""), "adapter"),
    ("name-too-long", job(adapter="a" * 65), "adapter"),
    ("name-fullwidth", job(adapter="ｓｅｎｔ"), "adapter"),
    ("name-zero-width", job(adapter="sent\u200b"), "adapter"),
    ("name-cyrillic-homoglyph", job(adapter="s\u0435nt"), "adapter"),
    ("name-nul", job(adapter="sent\x00"), "adapter"),
    ("name-newline", job(adapter="sent\n"), "adapter"),
    ("name-version-suffix", job(adapter="sent@v1"), "adapter"),
    ("name-reserved", job(adapter="loaded"), "adapter"),
    ("name-number", job(adapter=7), "adapter"),
    # base model
    ("base-unknown", job(base_model="gpt-17"), "base_model"),
    ("base-path", job(base_model="../../tiny-bert"), "base_model"),
    ("base-wrong-type", job(base_model=["tiny-bert"]), "base_model"),
    # records
    ("records-zero-rows", job(records=[]), "train.records"),
    ("records-not-a-list", {**job(), "train": {"records": "text,label"}}, "train.records"),
    ("records-one-label", job(records=[rec(label="pos")] * 5), "train.records"),
    ("records-row-not-object", job(records=[*two(), "a film"]), "train.records[2]"),
    ("records-empty-text", job(records=two(rec(""))), "train.records[2].text"),
    ("records-whitespace-text", job(records=two(rec(" \t\n "))), "train.records[2].text"),
    ("records-nbsp-text", job(records=two(rec("\u00a0\u3000"))), "train.records[2].text"),
    ("records-missing-text", job(records=two({"label": "pos"})), "train.records[2].text"),
    ("records-text-number", job(records=two(rec(42))), "train.records[2].text"),
    ("records-text-null", job(records=two(rec(None))), "train.records[2].text"),
    ("records-missing-label", job(records=two({"text": "a film"})), "train.records[2].label"),
    ("records-label-null", job(records=two(rec(label=None))), "train.records[2].label"),
    ("records-label-empty", job(records=two(rec(label="  "))), "train.records[2].label"),
    ("records-label-float", job(records=two(rec(label=1.5))), "train.records[2].label"),
    ("records-label-bool", job(records=two(rec(label=True))), "train.records[2].label"),
    ("records-label-list", job(records=two(rec(label=["pos"]))), "train.records[2].label"),
    ("records-label-too-long", job(records=two(rec(label="x" * 201))), "train.records[2].label"),
    ("records-labels-int-and-str", job(records=[rec(label=0), rec(label=1), rec(label="1")]), "train.records[2].label"),
    ("records-labels-str-then-int", job(records=two(rec(label=1))), "train.records[2].label"),
    ("records-extra-column", job(records=two(rec(score=0.5))), "train.records[2].score"),
    ("records-empty-text-pair", job(records=two(rec(text_pair=" "))), "train.records[2].text_pair"),
    ("records-huge-row", job(records=two(rec("word " * 1_000_000))), "train.records[2].text"),
    ("records-text-over-limit", job(records=two(rec("a" * (MAX_TEXT + 1)))), "train.records[2].text"),
    ("train-missing", {"adapter": "new", "base_model": "tiny-bert"}, "train"),
    ("train-neither", {**job(), "train": {}}, "train"),
    ("train-both", {**job(), "train": {"records": two(), "dataset": "ds_x"}}, "train"),
    ("train-dataset-unknown", {**job(), "train": {"dataset": "ds_" + "0" * 24}}, "train.dataset"),
    ("train-dataset-traversal", {**job(), "train": {"dataset": "../../../etc/passwd"}}, "train.dataset"),
    ("train-dataset-number", {**job(), "train": {"dataset": 12}}, "train.dataset"),
    # validation
    (
        "validation-unknown-label",
        job(validation={"records": [rec(label="pos"), rec(label="meh")]}),
        "validation.records[1].label",
    ),
    ("validation-zero-rows", job(validation={"records": []}), "validation.records"),
    ("validation-bad-row", job(validation={"records": [rec(), rec("  ")]}), "validation.records[1].text"),
    ("validation-split-too-big", job(records=two(), validation_split=0.5), "validation_split"),
    ("validation-split-one", job(validation_split=1.0), "validation_split"),
    ("validation-split-negative", job(validation_split=-0.1), "validation_split"),
    ("validation-split-string", job(validation_split="ten percent"), "validation_split"),
    # hyperparameters: out of range, wrong type, unknown
    ("hp-epochs-zero", job(hyperparameters={"epochs": 0}), "hyperparameters.epochs"),
    ("hp-epochs-huge", job(hyperparameters={"epochs": 10**9}), "hyperparameters.epochs"),
    ("hp-epochs-string", job(hyperparameters={"epochs": "many"}), "hyperparameters.epochs"),
    ("hp-epochs-fraction", job(hyperparameters={"epochs": 1.5}), "hyperparameters.epochs"),
    ("hp-batch-size-negative", job(hyperparameters={"batch_size": -8}), "hyperparameters.batch_size"),
    ("hp-lr-zero", job(hyperparameters={"learning_rate": 0}), "hyperparameters.learning_rate"),
    ("hp-lr-string", job(hyperparameters={"learning_rate": "fast"}), "hyperparameters.learning_rate"),
    ("hp-lora-r-zero", job(hyperparameters={"lora_r": 0}), "hyperparameters.lora_r"),
    ("hp-dropout-one", job(hyperparameters={"lora_dropout": 1.0}), "hyperparameters.lora_dropout"),
    ("hp-max-length-tiny", job(hyperparameters={"max_length": 2}), "hyperparameters.max_length"),
    ("hp-seed-negative", job(hyperparameters={"seed": -1}), "hyperparameters.seed"),
    ("hp-class-weighting", job(hyperparameters={"class_weighting": "auto"}), "hyperparameters.class_weighting"),
    ("hp-target-modules-string", job(hyperparameters={"target_modules": "query"}), "hyperparameters.target_modules"),
    ("hp-target-modules-empty", job(hyperparameters={"target_modules": []}), "hyperparameters.target_modules"),
    ("hp-target-modules-path", job(hyperparameters={"target_modules": ["../x"]}), "hyperparameters.target_modules"),
    ("hp-unknown", job(hyperparameters={"lr": 0.1}), "hyperparameters.lr"),
    ("hp-not-object", job(hyperparameters=[1, 2]), "hyperparameters"),
    ("extra-top-level", job(priority="high"), "priority"),
    ("body-array", [job()], "body"),
    ("body-null", None, "body"),
]


# references to nothing (a base model or dataset that doesn't exist): 404, as for an unknown adapter
UNKNOWN_REFS = {"base-unknown", "base-path", "train-dataset-unknown", "train-dataset-traversal"}


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [(*c[1:], 404 if c[0] in UNKNOWN_REFS else 422) for c in JOB_CASES],
    ids=[c[0] for c in JOB_CASES],
)
def test_bad_job(server, body, field, status):
    with stores_nothing(server):
        r = server.post("/jobs", json=body)
    check_error(r, field, status)


RAW_BODIES = [
    ("truncated-json", "/jobs", b'{"adapter": "x", "train": {"records": [', "body"),
    ("single-quotes", "/jobs", b"{'adapter': 'x'}", "body"),
    ("trailing-comma", "/predict", b'{"adapter": "sent", "inputs": ["a",]}', "body"),
    ("nan-literal", "/jobs", json.dumps(job(validation_split=float("nan"))).encode(), "validation_split"),
    ("empty-body", "/predict", b"", "body"),
    ("latin1-body", "/predict", '{"adapter": "sent", "inputs": "café"}'.encode("latin-1"), "body"),
    (
        "surrogate-text",
        "/jobs",
        b'{"adapter": "x", "train": {"records": [{"text": "\\ud800", "label": "a"}]}}',
        "train.records[0].text",
    ),
    (
        "surrogate-label",
        "/jobs",
        b'{"adapter": "x", "train": {"records": [{"text": "a", "label": "\\udfff"}]}}',
        "train.records[0].label",
    ),
    ("surrogate-adapter", "/predict", b'{"adapter": "\\ud83d", "inputs": "a"}', "adapter"),
    ("deep-nesting", "/jobs", b"[" * 50_000 + b"]" * 50_000, "body"),
]


@pytest.mark.parametrize(("path", "raw", "field"), [c[1:] for c in RAW_BODIES], ids=[c[0] for c in RAW_BODIES])
def test_bad_raw_body(server, path, raw, field):
    with stores_nothing(server):
        r = server.post(path, content=raw, headers={"content-type": "application/json"})
    check_error(r, field)


def test_wrong_content_type(server):
    with stores_nothing(server):
        r = server.post("/predict", content=b"adapter=sent&inputs=a", headers={"content-type": "text/plain"})
    check_error(r, "body")


# ---- POST /predict -----------------------------------------------------------------------------------
PREDICT_CASES = [
    ("zero-inputs", {"adapter": "sent", "inputs": []}, "inputs", 422),
    ("too-many-inputs", {"adapter": "sent", "inputs": ["good"] * (MAX_PREDICT + 1)}, "inputs", 422),
    ("empty-input", {"adapter": "sent", "inputs": ""}, "inputs", 422),
    ("whitespace-input", {"adapter": "sent", "inputs": ["good", " \n"]}, "inputs[1]", 422),
    ("input-over-limit", {"adapter": "sent", "inputs": ["good", "a" * (MAX_TEXT + 1)]}, "inputs[1]", 422),
    ("input-number", {"adapter": "sent", "inputs": ["good", 3]}, "inputs[1]", 422),
    ("inputs-object", {"adapter": "sent", "inputs": {"text": "good"}}, "inputs", 422),
    ("inputs-missing", {"adapter": "sent"}, "inputs", 422),
    ("text-pairs-count", {"adapter": "sent", "inputs": ["a", "b"], "text_pairs": ["x"]}, "text_pairs", 422),
    ("text-pairs-empty", {"adapter": "sent", "inputs": "a", "text_pairs": []}, "text_pairs", 422),
    ("text-pairs-two-for-one", {"adapter": "sent", "inputs": "a", "text_pairs": ["x", "y"]}, "text_pairs", 422),
    ("text-pair-empty", {"adapter": "sent", "inputs": ["a", "b"], "text_pairs": ["x", " "]}, "text_pairs[1]", 422),
    (
        "text-pair-over-limit",
        {"adapter": "sent", "inputs": ["a"], "text_pairs": ["b" * (MAX_TEXT + 1)]},
        "text_pairs[0]",
        422,
    ),
    ("text-pairs-string", {"adapter": "sent", "inputs": ["a"], "text_pairs": "b"}, "text_pairs", 422),
    ("extra-field", {"adapter": "sent", "inputs": "good", "top_k": 2}, "top_k", 422),
    ("adapter-missing", {"inputs": "good"}, "adapter", 422),
    ("adapter-unknown", {"adapter": "nope", "inputs": "good"}, "adapter", 404),
    ("adapter-unknown-version", {"adapter": "sent@v9", "inputs": "good"}, "adapter", 404),
    ("adapter-bad-version", {"adapter": "sent@1", "inputs": "good"}, "adapter", 422),
    ("adapter-version-zero", {"adapter": "sent@v0", "inputs": "good"}, "adapter", 422),
    ("adapter-dotdot", {"adapter": "../adapters/sent", "inputs": "good"}, "adapter", 422),
    ("adapter-slash", {"adapter": "sent/v1", "inputs": "good"}, "adapter", 422),
    ("adapter-space", {"adapter": "sent ", "inputs": "good"}, "adapter", 422),
    ("adapter-fullwidth", {"adapter": "ｓｅｎｔ", "inputs": "good"}, "adapter", 422),
    ("adapter-staging", {"adapter": ".staging", "inputs": "good"}, "adapter", 422),
    ("adapter-too-long", {"adapter": "s" * 300, "inputs": "good"}, "adapter", 422),
]


@pytest.mark.parametrize(("body", "field", "status"), [c[1:] for c in PREDICT_CASES], ids=[c[0] for c in PREDICT_CASES])
def test_bad_predict(server, body, field, status):
    with stores_nothing(server):
        r = server.post("/predict", json=body)
    check_error(r, field, status)


# ---- POST /evaluate ----------------------------------------------------------------------------------
def evaluate_cases(server) -> list:
    return [
        ({"adapter": "sent", "records": [rec(label="pos"), rec(label="sport")]}, "records[1].label", 422),
        ({"adapter": "sent", "records": [rec(label="pos"), rec(label=1)]}, "records[1].label", 422),
        ({"adapter": "sent", "dataset": server.topic_dataset_id}, "dataset", 422),
        ({"adapter": "sent", "records": []}, "records", 422),
        ({"adapter": "sent", "records": [rec(), rec(" ")]}, "records[1].text", 422),
        ({"adapter": "sent", "records": [rec()], "dataset": server.dataset_id}, "body", 422),
        ({"adapter": "sent"}, "body", 422),
        ({"adapter": "sent", "dataset": "ds_" + "0" * 24}, "dataset", 404),
        ({"adapter": "sent", "dataset": "../datasets/x.jsonl"}, "dataset", 404),  # never a path
        ({"adapter": "sent", "dataset": ""}, "dataset", 422),
        ({"adapter": "nope", "records": [rec()]}, "adapter", 404),
        ({"adapter": "../sent", "records": [rec()]}, "adapter", 422),
    ]


EVALUATE_IDS = [
    "label-unknown",
    "label-int-for-str-labels",
    "dataset-labels-unknown",
    "zero-records",
    "whitespace-text",
    "records-and-dataset",
    "neither",
    "dataset-unknown",
    "dataset-traversal",
    "adapter-unknown",
    "adapter-dotdot",
]


@pytest.mark.parametrize("case", range(len(EVALUATE_IDS)), ids=EVALUATE_IDS)
def test_bad_evaluate(server, case):
    body, field, status = evaluate_cases(server)[case]
    with stores_nothing(server):
        r = server.post("/evaluate", json=body)
    err = check_error(r, field, status)
    if EVALUATE_IDS[case] == "dataset-labels-unknown":
        assert "row" in err["message"] and "sport" in err["message"], err


# ---- POST /datasets (multipart uploads) --------------------------------------------------------------
UPLOADS = [
    # (id, filename, content, field, message fragment)
    ("empty-file", "d.jsonl", b"", "file", "empty"),
    ("whitespace-file", "d.jsonl", b" \n\n \n", "file", "empty"),
    ("csv-header-only", "d.csv", b"text,label\n", "file", "at least one record"),
    # (a file without .jsonl/.json/.csv is read by its first character: tests/test_data.py)
    ("binary", "d.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "file", "UTF-8"),
    ("latin1-jsonl", "d.jsonl", '{"text": "café crème", "label": "pos"}\n'.encode("latin-1"), "file", "UTF-8"),
    ("latin1-csv", "d.csv", "text,label\ncafé,pos\nthé,neg\n".encode("latin-1"), "file", "UTF-8"),
    ("utf16-jsonl", "d.jsonl", GOOD_JSONL.decode().encode("utf-16"), "file", "UTF-16"),
    ("utf16-csv", "d.csv", "text,label\ngood,pos\nbad,neg\n".encode("utf-16"), "file", "UTF-16"),
    (
        "jsonl-malformed-line",
        "d.jsonl",
        jsonl(GOOD[:3]) + b'{"text": "a", "label": \n' + jsonl(GOOD[3:]),
        "file",
        "line 4",
    ),
    ("jsonl-line-is-array", "d.jsonl", jsonl(GOOD[:2]) + b'["a film", "pos"]\n', "file[2]", "line 3"),
    ("jsonl-line-is-string", "d.jsonl", jsonl(GOOD[:2]) + b'"a film"\n', "file[2]", "line 3"),
    ("jsonl-missing-label-column", "d.jsonl", jsonl([{"text": r["text"]} for r in GOOD]), "file", "label"),
    (
        "jsonl-missing-label-in-row",
        "d.jsonl",
        jsonl([*GOOD[:4], {"text": "a film"}, *GOOD[4:]]),
        "file[4].label",
        "missing",
    ),
    ("jsonl-extra-key-in-row", "d.jsonl", jsonl([*GOOD[:5], rec(score=1), *GOOD[5:]]), "file[5]", "score"),
    ("jsonl-one-label", "d.jsonl", jsonl([rec(label="pos")] * 6), "file", "distinct labels"),
    ("jsonl-whitespace-text", "d.jsonl", jsonl([*GOOD[:3], rec("   "), *GOOD[3:]]), "file[3].text", "empty"),
    ("jsonl-text-number", "d.jsonl", jsonl([*GOOD[:3], rec(5), *GOOD[3:]]), "file[3].text", "string"),
    (
        "jsonl-labels-1-and-str-1",
        "d.jsonl",
        jsonl([rec(label=0), rec(label=1), rec(label="1")]),
        "file[2].label",
        "mix",
    ),
    (
        "jsonl-labels-int-and-str",
        "d.jsonl",
        jsonl([rec(label="pos"), rec(label="neg"), rec(label=2)]),
        "file[2].label",
        "mix",
    ),
    ("jsonl-label-float", "d.jsonl", jsonl([rec(label=1), rec(label=2), rec(label=2.5)]), "file[2].label", "label"),
    ("jsonl-label-object", "d.jsonl", jsonl([*GOOD[:2], rec(label={"a": 1})]), "file[2].label", "label"),
    ("jsonl-huge-row", "d.jsonl", jsonl([*GOOD[:2], rec("good " * 300_000)]), "file[2].text", "characters"),
    ("json-array-of-numbers", "d.json", b"[1, 2, 3]", "file[0]", "object"),
    ("csv-missing-label-column", "d.csv", b"text,sentiment\ngood,pos\nbad,neg\n", "file", "label"),
    ("csv-extra-column", "d.csv", b"text,label,score\ngood,pos,1\nbad,neg,0\n", "file", "score"),
    ("csv-duplicate-column", "d.csv", b"text,label,text\ngood,pos,x\nbad,neg,y\n", "file", "text"),
    ("json-nested-too-deeply", "d.json", b"[" * 100_000 + b"]" * 100_000, "file", "nested too deeply"),
    ("jsonl-int-of-5000-digits", "d.jsonl", b'{"text": "a", "label": ' + b"1" * 5000 + b"}\n", "file", "line 1"),
    ("jsonl-int-label-300-digits", "d.jsonl", jsonl([rec(label=int("9" * 300)), rec(label=1)]), "file[0].label", "200"),
    ("csv-ragged-row", "d.csv", b"text,label\ngood,pos\nbad,neg,extra\nfine,pos\n", "file[1]", "line 3"),
    ("csv-unquoted-comma", "d.csv", b"text,label\nGood, fun film,pos\n", "file[0]", "3 fields"),
    ("csv-unclosed-quote", "d.csv", b'text,label\ngood,pos\n"bad,neg\nfine,pos\n', "file", "unexpected end of data"),
    ("csv-one-label", "d.csv", b"text,label\ngood,pos\nfine,pos\n", "file", "distinct labels"),
    ("csv-whitespace-text", "d.csv", b"text,label\ngood,pos\n   ,neg\n", "file[1].text", "empty"),
    ("csv-empty-label", "d.csv", b"text,label\ngood,pos\nbad,\n", "file[1].label", "empty"),
    (
        "csv-over-long-row",
        "d.csv",
        b"text,label\ngood,pos\n" + b"a" * (MAX_TEXT + 1) + b",neg\n",
        "file[1].text",
        "characters",
    ),
    ("csv-no-header", "d.csv", b"good,pos\nbad,neg\n", "file", "label"),
]


@pytest.mark.parametrize(
    ("filename", "content", "field", "fragment"), [c[1:] for c in UPLOADS], ids=[c[0] for c in UPLOADS]
)
def test_bad_upload(server, filename, content, field, fragment):
    with stores_nothing(server):
        r = server.post("/datasets", files={"file": (filename, content)})
    err = check_error(r, field)
    assert fragment.lower() in err["message"].lower(), err


def test_upload_without_a_file(server):
    with stores_nothing(server):
        r = server.post("/datasets", data={"text": "a film"})
    check_error(r, "file")


def test_upload_not_multipart(server):
    with stores_nothing(server):
        r = server.post("/datasets", json={"records": GOOD})
    check_error(r, "file")


def test_upload_over_the_limit(tmp_path_factory, tiny_models):
    settings = make_settings(tmp_path_factory.mktemp("small-uploads"), tiny_models, max_upload_bytes=1000)
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as c:
        c.settings = settings
        content = jsonl(toy_sentiment(60))
        assert len(content) > 1000
        with stores_nothing(c):
            r = c.post("/datasets", files={"file": ("d.jsonl", content)})
        err = check_error(r, "file", 413)
        assert "1000" in err["message"]
        assert c.get("/health").status_code == 200
        assert not list(settings.datasets_dir.iterdir())
        # far over the limit: refused from its Content-Length, before the body is read (nothing spooled)
        huge = {"content-type": "multipart/form-data; boundary=x", "content-length": str(50 << 20)}
        with stores_nothing(c):
            r = c.post("/datasets", content=b"--x--", headers=huge)
        assert r.status_code == 413 and r.json()["error"]["field"] == "file", r.text


def test_405_says_which_methods_are_allowed(server):
    with stores_nothing(server):
        r = server.delete("/jobs")
    assert r.status_code == 405 and r.json()["error"]["field"] == "method"
    assert "POST" in r.headers["allow"]  # Starlette names the methods of the first route on that path


# ---- path and query parameters -----------------------------------------------------------------------
PATHS = [
    # (id, method, url, status, field)
    ("adapter-encoded-dotdot", "GET", "/adapters/%2e%2e", 422, "name"),
    ("adapter-encoded-traversal", "GET", "/adapters/%2e%2e%2fetc%2fpasswd", 404, "path"),
    ("adapter-space", "GET", "/adapters/my%20adapter", 422, "name"),
    ("adapter-fullwidth", "GET", "/adapters/%EF%BD%93ent", 422, "name"),
    ("adapter-too-long", "GET", "/adapters/" + "a" * 65, 422, "name"),
    ("adapter-unknown", "GET", "/adapters/nope", 404, "name"),
    ("adapter-unknown-version", "GET", "/adapters/sent@v2", 404, "name"),
    ("adapter-bad-version", "GET", "/adapters/sent@vv", 422, "name"),
    ("delete-unknown", "DELETE", "/adapters/nope", 404, "name"),
    ("delete-unknown-version", "DELETE", "/adapters/sent@v7", 404, "name"),
    ("delete-dotdot", "DELETE", "/adapters/%2e%2e", 422, "name"),
    ("delete-staging", "DELETE", "/adapters/.staging", 422, "name"),
    ("delete-encoded-traversal", "DELETE", "/adapters/%2e%2e%2fsent", 404, "path"),
    ("delete-bad-version", "DELETE", "/adapters/sent@v1x", 422, "name"),
    ("job-unknown", "GET", "/jobs/job_nope", 404, "job_id"),
    ("job-dotdot", "GET", "/jobs/%2e%2e", 404, "job_id"),
    ("job-metrics-unknown", "GET", "/jobs/job_nope/metrics", 404, "job_id"),
    ("job-events-unknown", "GET", "/jobs/job_nope/events", 404, "job_id"),
    ("job-cancel-unknown", "POST", "/jobs/job_nope/cancel", 404, "job_id"),
    ("dataset-unknown", "GET", "/datasets/ds_nope", 404, "dataset_id"),
    ("dataset-dotdot", "GET", "/datasets/%2e%2e", 404, "dataset_id"),
    ("jobs-limit-zero", "GET", "/jobs?limit=0", 422, "limit"),
    ("jobs-limit-huge", "GET", "/jobs?limit=1000000", 422, "limit"),
    ("jobs-limit-abc", "GET", "/jobs?limit=abc", 422, "limit"),
    ("jobs-status-unknown", "GET", "/jobs?status=done", 422, "status"),
    ("jobs-after-unknown", "GET", "/jobs?after=job_unknown", 404, "after"),
    ("events-after-negative", "GET", "/jobs/{job}/events?after=-1", 422, "after"),
    ("events-after-huge", "GET", "/jobs/{job}/events?after=99999999999999999999", 422, "after"),
    ("events-limit-zero", "GET", "/jobs/{job}/events?limit=0", 422, "limit"),
    ("cancel-finished", "POST", "/jobs/{job}/cancel", 409, "job_id"),
    ("unknown-route", "GET", "/nope", 404, "path"),
    ("wrong-method", "PUT", "/predict", 405, "method"),
]


@pytest.mark.parametrize(("method", "url", "status", "field"), [c[1:] for c in PATHS], ids=[c[0] for c in PATHS])
def test_bad_path_or_query(server, method, url, status, field):
    with stores_nothing(server):
        r = server.request(method, url.replace("{job}", server.job_id))
    check_error(r, field, status)


# ---- afterwards ---------------------------------------------------------------------------------------
def test_upload_with_a_utf8_bom_is_read(server):
    """A UTF-8 byte-order mark is not an error: the file reads as without it (the same, already stored, id)."""
    for name, content in (("train.jsonl", jsonl(toy_sentiment(40))), ("train.csv", None)):
        if content is None:
            content = ("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in toy_sentiment(40))).encode()
        with stores_nothing(server):  # already stored: nothing new
            r = server.post("/datasets", files={"file": (name, b"\xef\xbb\xbf" + content)})
        assert r.status_code == 201, r.text
        assert r.json()["id"] == server.dataset_id


def test_still_serving_and_nothing_stored_changed(server):
    # runs after the corpus above (pytest keeps file order); each case has checked its own request already
    assert server.get("/health").status_code == 200
    assert server.post("/predict", json={"adapter": "sent", "inputs": PROBE}).json() == server.answer
    assert snapshot(server) == server.before
