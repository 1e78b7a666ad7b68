"""The official `openai` SDK against a live server (`peftserve serve`, one worker, the tiny models): files, a
fine-tuning job with "auto" hyperparameters, pagination, events, checkpoints, the result file, chat completions
as a classifier, pause/resume, cancel, deleting a model, and each error class the SDK raises."""

from __future__ import annotations

import csv
import io
import json
import math
import time

import httpx
import pytest

from app.base_models.tiny import toy_sentiment
from tests.support import ADMIN_KEY, USER_KEY, tiny_server

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.e2e

# Tiny models learn the toy set with a larger step than the default (5e-4 x 10 = 5e-3) and more epochs.
FAST = {"n_epochs": 10, "batch_size": 8, "learning_rate_multiplier": 10}


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_models):
    srv = tiny_server(tmp_path_factory.mktemp("openai"), tiny_models)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=60)


def chat_rows(rows: list[dict]) -> list[dict]:
    system = {"role": "system", "content": "Is the review positive or negative?"}
    return [
        {"messages": [system, {"role": "user", "content": r["text"]}, {"role": "assistant", "content": r["label"]}]}
        for r in rows
    ]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def wait(client, job_id: str, until: tuple[str, ...] = ("succeeded", "failed", "cancelled"), timeout: float = 180):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        assert time.monotonic() < deadline, f"{job_id} still {job.status}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def trained(client):
    """A classic and a chat-format file uploaded, and a job on the chat one trained to success."""
    classic = client.files.create(file=("classic.jsonl", jsonl(toy_sentiment(60, seed=1))), purpose="fine-tune")
    chat = client.files.create(file=("chat.jsonl", jsonl(chat_rows(toy_sentiment(200)))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-bert",
        training_file=chat.id,
        suffix="sentiment",
        seed=7,
        metadata={"team": "search"},
        method={"type": "supervised", "supervised": {"hyperparameters": FAST}},
    )
    return classic, chat, wait(client, job.id)


def test_files_upload_list_retrieve_content(client, trained):
    classic, chat, _ = trained
    assert classic.object == "file" and classic.purpose == "fine-tune" and classic.status == "processed"
    assert classic.id.startswith("ds_") and classic.filename == "classic.jsonl" and classic.bytes > 0
    assert client.files.retrieve(chat.id).id == chat.id
    rows = [json.loads(line) for line in client.files.content(chat.id).text.splitlines()]
    assert len(rows) == 200 and set(rows[0]) == {"text", "label"}  # chat rows stored as text and label
    listed = [f.id for f in client.files.list(purpose="fine-tune", limit=1)]  # pages of one, followed by the SDK
    assert {classic.id, chat.id} <= set(listed) and len(listed) == len(set(listed))
    bad = jsonl([{"text": "fine", "label": "pos"}, {"messages": [{"role": "user", "content": "no label"}]}])
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert "line 2" in e.value.message and e.value.body["param"] == "file[1].messages[0]"


def test_a_job_runs_to_success_with_auto_hyperparameters_resolved(client, trained):
    classic, _, done = trained
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny-bert:sentiment:{done.id}"
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at and done.seed == 7
    assert done.hyperparameters.n_epochs == 10 and done.metadata == {"team": "search"}
    auto = client.fine_tuning.jobs.create(
        model="tiny-bert",
        training_file=classic.id,
        hyperparameters={"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
    )
    assert auto.status in ("queued", "running") and auto.fine_tuned_model is None
    resolved = auto.hyperparameters
    assert (resolved.n_epochs, resolved.batch_size, resolved.learning_rate_multiplier) == (3, 16, 1.0)
    finished = wait(client, auto.id)
    assert finished.status == "succeeded" and finished.fine_tuned_model == f"ft:tiny-bert::{auto.id}"
    assert finished.user_provided_suffix is None


def test_jobs_page_and_filter_by_metadata(client, trained):
    _, _, done = trained
    ids = [j.id for j in client.fine_tuning.jobs.list(limit=1)]  # every job, one page at a time
    assert done.id in ids and len(ids) == len(set(ids))
    first = client.fine_tuning.jobs.list(limit=1)
    assert len(first.data) == 1 and first.has_more is True
    tagged = client.fine_tuning.jobs.list(metadata={"team": "search"})
    assert [j.id for j in tagged.data] == [done.id]
    assert client.fine_tuning.jobs.list(metadata={"team": "other"}).data == []


def test_events_page_newest_first(client, trained):
    _, _, done = trained
    page = client.fine_tuning.jobs.list_events(done.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    assert page.data[0].message.startswith("Saved adapter")  # the newest first
    every = list(client.fine_tuning.jobs.list_events(done.id, limit=3))
    assert every[-1].message.startswith("Job created") and len(every) == len({e.id for e in every})
    assert {e.type for e in every} == {"message", "metrics"}
    assert all(e.object == "fine_tuning.job.event" and e.level in ("info", "warn", "error") for e in every)


def test_checkpoints_result_file_and_chat_completions(client, live, trained):
    _, _, done = trained
    checkpoints = client.fine_tuning.jobs.checkpoints.list(done.id)
    steps = [c.step_number for c in checkpoints.data]
    assert len(steps) == 3 and steps == sorted(steps, reverse=True)  # the last 3 epochs, newest first
    newest = checkpoints.data[0]
    assert newest.fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-{newest.step_number}"
    assert newest.metrics.valid_mean_token_accuracy is not None and newest.metrics.train_loss is not None
    older = client.fine_tuning.jobs.checkpoints.list(done.id, after=newest.id, limit=1)
    assert [c.step_number for c in older.data] == [steps[1]] and older.has_more

    (result_id,) = done.result_files
    assert client.files.retrieve(result_id).purpose == "fine-tune-results"
    table = list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))
    assert table[0].keys() >= {"step", "train_loss", "valid_loss", "valid_accuracy", "valid_f1_macro"}
    assert any(row["valid_accuracy"] for row in table) and any(row["train_loss"] for row in table)

    def ask(model: str, text: str, **options):
        return client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": text}],
            **options,
        )

    held_out = toy_sentiment(20, seed=99)
    answers = [ask(done.fine_tuned_model, r["text"]).choices[0].message.content for r in held_out]
    assert sum(a == r["label"] for a, r in zip(answers, held_out, strict=True)) >= 15  # it learned the task
    # the same answers as the native API gives for the job's adapter
    native = httpx.post(
        f"{live.url}/predict",
        json={"adapter": "sentiment@v1", "inputs": [r["text"] for r in held_out]},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ).json()
    assert answers == [p["label"] for p in native["predictions"]]
    good = held_out[0]["text"]
    answer = ask(done.fine_tuned_model, good, logprobs=True, top_logprobs=2)
    choice = answer.choices[0]
    assert (
        choice.message.role == "assistant" and choice.message.content == answers[0] and choice.finish_reason == "stop"
    )
    token = choice.logprobs.content[0]
    assert token.token == answers[0] and [t.token for t in token.top_logprobs][0] == answers[0]
    assert abs(sum(math.exp(t.logprob) for t in token.top_logprobs) - 1) < 1e-4  # the label distribution
    assert abs(math.exp(token.logprob) - native["predictions"][0]["score"]) < 1e-4
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens == 1
    assert answer.system_fingerprint == "sentiment@v1"
    assert ask(newest.fine_tuned_model_checkpoint, good).choices[0].message.content in ("pos", "neg")
    sampled = ask(done.fine_tuned_model, good, n=4, temperature=1.5, seed=1)
    assert len(sampled.choices) == 4 and {c.message.content for c in sampled.choices} <= {"pos", "neg"}
    stream = list(ask(done.fine_tuned_model, held_out[1]["text"], stream=True))
    assert len(stream) == 1 and stream[0].choices[0].delta.content == answers[1]

    with pytest.raises(openai.BadRequestError) as e:
        ask(done.fine_tuned_model, good, n=2)  # n > 1 without temperature: one answer
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:
        ask(done.fine_tuned_model, good, tools=[{"type": "function", "function": {"name": "f"}}])
    assert e.value.body["param"] == "tools"
    with pytest.raises(openai.NotFoundError):
        ask("ft:tiny-bert:sentiment:job_000000000000000000000000", good)


def test_concurrent_completions_share_the_engine(client, trained):
    from concurrent.futures import ThreadPoolExecutor

    _, _, done = trained
    rows = toy_sentiment(16, seed=98)
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda t: client.chat.completions.create(
                    model=done.fine_tuned_model, messages=[{"role": "user", "content": t}]
                ),
                [r["text"] for r in rows],
            )
        )
    got = [a.choices[0].message.content for a in answers]
    assert sum(g == r["label"] for g, r in zip(got, rows, strict=True)) >= 12


def test_models_list_retrieve_delete(client, trained):
    _, _, done = trained
    ids = [m.id for m in client.models.list()]
    assert "tiny-bert" in ids and done.fine_tuned_model in ids
    assert client.models.retrieve(done.fine_tuned_model).owned_by == "peftserve"
    # a model of its own to delete
    chat_file = client.files.list(purpose="fine-tune").data[0].id
    job = client.fine_tuning.jobs.create(
        model="tiny-bert", training_file=chat_file, suffix="doomed", hyperparameters={**FAST, "n_epochs": 1}
    )
    doomed = wait(client, job.id)
    assert len(client.fine_tuning.jobs.checkpoints.list(doomed.id).data) == 1
    assert client.models.delete(doomed.fine_tuned_model).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(doomed.fine_tuned_model)
    assert client.fine_tuning.jobs.checkpoints.list(doomed.id).data == []  # gone with it
    with pytest.raises(openai.ConflictError):
        client.models.delete("tiny-bert")


def test_pause_resume_and_cancel(client, trained):
    classic, _, _ = trained
    long = {"n_epochs": 100, "batch_size": 2, "learning_rate_multiplier": 2}
    job = client.fine_tuning.jobs.create(model="tiny-bert", training_file=classic.id, hyperparameters=long)
    wait(client, job.id, until=("running",))
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status in ("running", "paused")  # a running job pauses at its next step
    assert wait(client, job.id, until=("paused",)).status == "paused"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    wait(client, job.id, until=("running",))
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert wait(client, cancelled.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith("Paused at step") for m in messages) and any(m.startswith("Resumed from") for m in messages)


def test_each_error_class(client, live, trained):
    classic, _, _ = trained
    with pytest.raises(openai.NotFoundError) as e:
        client.files.retrieve("ds_000000000000000000000000")
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] == "file_id"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("job_nope")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-bert", training_file=classic.id, hyperparameters={"n_epochs": 0})
    assert e.value.body["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.NotFoundError) as e:
        client.fine_tuning.jobs.create(model="tiny-bert", training_file="ds_000000000000000000000000")
    assert e.value.body["param"] == "training_file"
    with pytest.raises(openai.NotFoundError) as e:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=classic.id)
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-bert", training_file=classic.id, method={"type": "dpo"})
    assert e.value.body["param"] == "method.type"
    wrong = openai.OpenAI(base_url=f"{live.url}/v1", api_key="not-a-key-0123456789", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.models.list()
    assert e.value.body["code"] == "invalid_api_key"
    user = openai.OpenAI(base_url=f"{live.url}/v1", api_key=USER_KEY, max_retries=0)
    assert user.models.list().data  # a use key reads
    with pytest.raises(openai.PermissionDeniedError):
        user.files.create(file=("x.jsonl", jsonl(toy_sentiment(10))), purpose="fine-tune")
