"""The /v1 routes in process (TestClient, burst worker): OpenAI's error envelope, files and result files in one
paged list, metadata filters, event paging, and the chat options refused. The SDK's own run is test_openai.py."""

import json

import pytest
from fastapi.testclient import TestClient

from app.base_models.tiny import toy_multilabel, toy_sentiment
from app.jobs.worker import Worker
from app.main import create_app
from tests.support import ADMIN_HEADERS, USER_HEADERS

FAST = {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 10}


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as c:
        c.settings = settings
        yield c


def upload(client, rows, name="train.jsonl"):
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = client.post("/v1/files", files={"file": (name, body)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()


def fine_tune(client, file_id, **extra):
    r = client.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": file_id, "hyperparameters": FAST, **extra}
    )
    assert r.status_code == 200, r.text
    return r.json()


def assert_openai_error(r, status, param=None, kind="invalid_request_error"):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"] == kind
    if param is not None:
        assert err["param"] == param, err
    assert r.headers["x-should-retry"] == "false"
    return err


def test_errors_use_openais_envelope_and_statuses_under_v1_only(client):
    assert_openai_error(
        client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, kind="authentication_error"
    )
    err = assert_openai_error(client.get("/v1/models", headers={"Authorization": ""}), 401, kind="authentication_error")
    assert err["code"] == "invalid_api_key"
    assert_openai_error(
        client.post(
            "/v1/files", headers=USER_HEADERS, files={"file": ("a.jsonl", b"{}")}, data={"purpose": "fine-tune"}
        ),
        403,
        kind="permission_error",
    )
    assert_openai_error(client.get("/v1/files/ds_0123"), 404, "file_id")
    # an unknown parameter, a bad value: 400 (not 422) naming it
    assert_openai_error(
        client.post("/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": "x", "nope": 1}), 400, "nope"
    )
    assert_openai_error(client.post("/v1/chat/completions", json={"model": "m", "messages": [], "n": 0}), 400, "n")
    assert_openai_error(
        client.post("/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "fine-tune"}), 400, "file"
    )
    assert_openai_error(
        client.post("/v1/files", files={"file": ("a.jsonl", b"x")}, data={"purpose": "batch"}), 400, "purpose"
    )
    assert_openai_error(client.get("/v1/files", params={"after": "ds_nope"}), 404, "after")
    # the native face keeps its own envelope
    native = client.get("/jobs/job_nope").json()["error"]
    assert set(native) == {"code", "message", "field"}


def test_files_and_result_files_page_together_and_a_file_in_use_is_kept(client):
    first = upload(client, toy_sentiment(40), "a.jsonl")
    second = upload(client, toy_sentiment(40, seed=2), "b.jsonl")
    job = fine_tune(client, first["id"])
    r = client.delete(f"/v1/files/{first['id']}")
    assert_openai_error(r, 409, "dataset_id")
    assert job["id"] in r.json()["error"]["message"]
    Worker(client.settings).run(burst=True)
    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["result_files"] == [f"rf_{job['id'][4:]}"]
    # newest first: the result file (the job ended last), then the uploads; paged one at a time
    ids, after = [], None
    while True:
        page = client.get("/v1/files", params={"limit": 1, **({"after": after} if after else {})}).json()
        ids += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert ids == [done["result_files"][0], second["id"], first["id"]]
    oldest_first = client.get("/v1/files", params={"order": "asc"}).json()["data"]
    assert [f["id"] for f in oldest_first] == ids[::-1]
    results = client.get("/v1/files", params={"purpose": "fine-tune-results"}).json()["data"]
    assert [f["purpose"] for f in results] == ["fine-tune-results"]
    csv_text = client.get(f"/v1/files/{results[0]['id']}/content").text
    assert csv_text.startswith("step,epoch,train_loss,") and results[0]["bytes"] == len(csv_text.encode())
    assert_openai_error(client.delete(f"/v1/files/{results[0]['id']}"), 409)
    # the job has ended: its file may go now
    assert client.delete(f"/v1/files/{first['id']}").json() == {"id": first["id"], "object": "file", "deleted": True}
    assert_openai_error(client.get(f"/v1/files/{first['id']}"), 404)
    assert client.get(f"/datasets/{first['id']}").status_code == 404  # the same dataset, gone on both faces


def test_metadata_filter_suffix_names_and_native_jobs_alike(client):
    file_id = upload(client, toy_sentiment(40))["id"]
    tagged = fine_tune(client, file_id, metadata={"team": "a"}, suffix="topic")
    plain = fine_tune(client, file_id)
    native = client.post(
        "/jobs", json={"adapter": "native", "base_model": "tiny-bert", "train": {"dataset": file_id}}
    ).json()
    listed = client.get("/v1/fine_tuning/jobs").json()["data"]
    assert [j["id"] for j in listed] == [native["id"], plain["id"], tagged["id"]]
    assert [j["id"] for j in client.get("/v1/fine_tuning/jobs?metadata[team]=a").json()["data"]] == [tagged["id"]]
    unlabelled = client.get("/v1/fine_tuning/jobs?metadata=null").json()["data"]
    assert [j["id"] for j in unlabelled] == [native["id"], plain["id"]]
    assert_openai_error(client.get("/v1/fine_tuning/jobs?metadata=x"), 400, "metadata")
    Worker(client.settings).run(burst=True)
    names = {j["id"]: j["fine_tuned_model"] for j in client.get("/v1/fine_tuning/jobs").json()["data"]}
    assert names[tagged["id"]] == f"ft:tiny-bert:topic:{tagged['id']}"
    assert names[plain["id"]] == f"ft:tiny-bert::{plain['id']}"
    assert names[native["id"]] == f"ft:tiny-bert:native:{native['id']}"  # a native job's adapter is its suffix
    assert client.get("/adapters/ft-tiny-bert").json()["latest"] == "ft-tiny-bert@v1"  # a suffix-less job's adapter
    models = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert set(names.values()) <= set(models) and "tiny-bert" in models
    # continue a fine-tuned model: its base, its adapter as init_from
    again = fine_tune(client, file_id, model=names[tagged["id"]], suffix="topic")
    assert client.get(f"/jobs/{again['id']}").json()["init_from"] == "topic@v1"
    events = client.get(f"/v1/fine_tuning/jobs/{tagged['id']}/events", params={"limit": 2}).json()
    older = client.get(f"/v1/fine_tuning/jobs/{tagged['id']}/events", params={"after": events["data"][-1]["id"]}).json()
    ids = [int(e["id"].removeprefix("ftevent-")) for e in events["data"] + older["data"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
    assert_openai_error(client.get(f"/v1/fine_tuning/jobs/{tagged['id']}/events", params={"after": "x"}), 400, "after")


def test_hyperparameters_resolve_and_bad_ones_name_openais_parameter(client):
    file_id = upload(client, toy_sentiment(40))["id"]
    body = {"model": "tiny-bert", "training_file": file_id}
    job = client.post("/v1/fine_tuning/jobs", json={**body, "hyperparameters": {"learning_rate_multiplier": 2}}).json()
    assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": 16, "learning_rate_multiplier": 2.0}
    assert client.get(f"/jobs/{job['id']}").json()["hyperparameters"]["learning_rate"] == pytest.approx(1e-3)
    for hp, param in [
        ({"n_epochs": 0}, "hyperparameters.n_epochs"),
        ({"batch_size": 5000}, "hyperparameters.batch_size"),
        ({"learning_rate_multiplier": -1}, "hyperparameters.learning_rate_multiplier"),
        ({"n_epochs": "many"}, "hyperparameters.n_epochs"),
    ]:
        assert_openai_error(client.post("/v1/fine_tuning/jobs", json={**body, "hyperparameters": hp}), 400, param)
    twice = {
        **body,
        "hyperparameters": {"n_epochs": 2},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
    }
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json=twice), 400, "hyperparameters")
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json={**body, "suffix": "bad name!"}), 400, "suffix")
    assert_openai_error(
        client.post("/v1/fine_tuning/jobs", json={**body, "validation_file": "ds_0"}), 404, "validation_file"
    )
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json={**body, "model": "gpt-17"}), 404, "model")
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json={**body, "model": ""}), 400, "model")
    many = {f"k{i}": "v" for i in range(17)}
    assert_openai_error(client.post("/v1/fine_tuning/jobs", json={**body, "metadata": many}), 400, "metadata")
    assert_openai_error(
        client.post("/v1/fine_tuning/jobs", json={**body, "integrations": [{"type": "wandb"}]}), 400, "integrations"
    )


def test_chat_refuses_what_a_classifier_cannot_honour(client):
    single = upload(client, toy_sentiment(40))["id"]
    multi = upload(client, toy_multilabel(60))["id"]
    jobs = [fine_tune(client, single, suffix="one"), fine_tune(client, multi, suffix="many")]
    Worker(client.settings).run(burst=True)
    one, many = (client.get(f"/v1/fine_tuning/jobs/{j['id']}").json()["fine_tuned_model"] for j in jobs)

    def ask(model, messages=None, **options):
        return client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": messages or [{"role": "user", "content": "good film"}], **options},
        )

    assert ask(one).json()["choices"][0]["message"]["content"] in ("pos", "neg")
    labels = json.loads(ask(many).json()["choices"][0]["message"]["content"])  # a multi-label model: a JSON list
    assert isinstance(labels, list) and set(labels) <= {"positive", "negative", "sport"}
    assert_openai_error(ask(many, logprobs=True), 400, "model")
    assert_openai_error(ask("tiny-bert"), 400, "model")  # a base has no trained head
    assert_openai_error(ask("ft:tiny-bert:one:job_nope"), 404, "model")
    assert_openai_error(ask(one.replace(":one:", ":two:")), 404, "model")  # the whole name must match
    assert_openai_error(
        ask(one, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]), 400, "messages"
    )
    assert_openai_error(ask(one, top_logprobs=2), 400, "top_logprobs")
    assert_openai_error(ask(one, n=2), 400, "n")  # several choices are sampled: temperature > 0

    lone = json.dumps({"model": one, "messages": [{"role": "user", "content": "a\ud800b"}]})  # JSON's escape
    r = client.post("/v1/chat/completions", content=lone, headers={"content-type": "application/json"})
    assert_openai_error(r, 400, "messages[0].content")
    assert_openai_error(ask(one, response_format={"type": "json_object"}), 400, "response_format")
    assert_openai_error(ask(one, temperature=3), 400, "temperature")
    # sampling is seeded
    first = ask(one, n=8, temperature=2, seed=3).json()["choices"]
    assert first == ask(one, n=8, temperature=2, seed=3).json()["choices"]
    streamed = client.post(
        "/v1/chat/completions",
        json={
            "model": one,
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = [line.removeprefix("data: ") for line in streamed.text.split("\n\n") if line]
    assert events[-1] == "[DONE]" and json.loads(events[1])["usage"]["completion_tokens"] == 1
    assert json.loads(events[0])["object"] == "chat.completion.chunk"


def test_chat_document_states_the_rules_across_fields(client):
    """What _check_options refuses, the schema says (if/then), so a client generated from it knows."""
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ChatCompletionCreate"]
    rules = {tuple(rule["if"]["required"]): rule["then"] for rule in schema["allOf"]}
    assert rules[("top_logprobs",)]["properties"] == {"logprobs": {"const": True}}
    assert rules[("n",)]["properties"]["temperature"]["exclusiveMinimum"] == 0
