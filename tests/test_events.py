"""GET /jobs/{id}/events?stream=true: the job's events as Server-Sent Events, live, until the job ends."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.events import sse_message
from app.base_models.tiny import toy_sentiment
from app.jobs.worker import Worker
from app.main import create_app
from tests.support import ADMIN_HEADERS, post_job, tiny_server

HP = {"epochs": 4, "batch_size": 8, "early_stopping_patience": 0, "target_modules": ["query", "value"]}


def parse_sse(lines) -> list[dict]:
    """SSE lines -> messages {id, event, data, at}; comments and `retry:` are dropped."""
    messages, current = [], {}
    for line in lines:
        if line == "":
            if "data" in current:
                messages.append({**current, "at": time.time()})
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                current["data"] = current["data"] + "\n" + value if "data" in current else value
            elif field in ("id", "event"):
                current[field] = value
    return messages


def check_stream(messages: list[dict], job_id: str, status: str = "succeeded") -> list[dict]:
    *events, end = messages
    assert end["event"] == "end" and json.loads(end["data"]) == {"job_id": job_id, "status": status}
    ids = [int(m["id"]) for m in events]
    assert ids == sorted(set(ids)), ids  # strictly increasing
    for m in events:
        body = json.loads(m["data"])
        assert body["id"] == int(m["id"]) and m["event"] == body["type"] in ("message", "metrics")
    metrics = [json.loads(m["data"]) for m in events if m["event"] == "metrics"]
    steps = [e["data"]["step"] for e in metrics]
    assert metrics and steps == sorted(steps), steps  # in training order
    assert {e["data"]["kind"] for e in metrics} <= {"train", "eval"}
    return events


def test_sse_message_format():
    # only CR/LF split data lines: U+2028, U+0085 inside the JSON stay on its line
    assert sse_message('{"m": "a\u2028b\x85c"}') == 'data: {"m": "a\u2028b\x85c"}\n\n'
    assert sse_message('{"a": 1}', event="metrics", id=7) == 'id: 7\nevent: metrics\ndata: {"a": 1}\n\n'
    assert sse_message("one\ntwo") == "data: one\ndata: two\n\n"


def test_stream_delivers_every_event_in_order_and_ends_with_the_job(settings):
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as c:
        job_id = c.post(
            "/jobs",
            json={
                "adapter": "sent",
                "base_model": "tiny-bert",
                "train": {"records": toy_sentiment(120)},
                "hyperparameters": HP,
            },
        ).json()["id"]
        worker = threading.Thread(target=Worker(settings).run, kwargs={"burst": True})
        worker.start()
        try:
            with c.stream("GET", f"/jobs/{job_id}/events", params={"stream": "true"}) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
                messages = parse_sse(r.iter_lines())
        finally:
            worker.join(120)
        events = check_stream(messages, job_id)
        listed = c.get(f"/jobs/{job_id}/events", params={"limit": 500}).json()["data"]
        assert [json.loads(m["data"]) for m in events] == listed  # the same events as the paginated list

        # Resuming: Last-Event-ID (or `after`) skips what was seen; Accept: text/event-stream also streams.
        middle = int(events[len(events) // 2]["id"])
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(middle)}
        with c.stream("GET", f"/jobs/{job_id}/events", headers=headers) as r:
            resumed = parse_sse(r.iter_lines())
        assert [int(m["id"]) for m in resumed[:-1]] == [e["id"] for e in listed if e["id"] > middle]
        with c.stream("GET", f"/jobs/{job_id}/events", params={"stream": "true", "after": middle}) as r:
            assert [m.get("id") for m in parse_sse(r.iter_lines())] == [m.get("id") for m in resumed]

        missing = c.get("/jobs/job_nope/events", params={"stream": "true"})
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "job_id"
        schema = c.get("/openapi.json").json()["paths"]["/jobs/{job_id}/events"]["get"]
        assert "stream" in [p["name"] for p in schema["parameters"]]
        assert "text/event-stream" in schema["responses"]["200"]["content"]


@pytest.mark.e2e
def test_stream_is_live_over_a_real_server(tmp_path, tiny_models):
    srv = tiny_server(tmp_path, tiny_models)
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, headers=ADMIN_HEADERS, timeout=60) as c:
            # A job far longer than the test: cancelled once the first metrics event has arrived, so the event
            # provably came while it trained, however fast this machine is.
            hp = {**HP, "epochs": 100, "batch_size": 2}
            job_id = post_job(c, {"adapter": "live", "train": {"records": toy_sentiment(200)}, "hyperparameters": hp})
            job_id = job_id.json()["id"]

            def cancel_at_first_metrics(lines):
                cancelled = False
                for line in lines:
                    if not cancelled and line == "event: metrics":
                        assert c.get(f"/jobs/{job_id}").json()["status"] == "running"
                        c.post(f"/jobs/{job_id}/cancel")
                        cancelled = True
                    yield line

            with c.stream("GET", f"/jobs/{job_id}/events", params={"stream": "true"}, timeout=180) as r:
                assert r.status_code == 200
                messages = parse_sse(cancel_at_first_metrics(r.iter_lines()))
            done = c.get(f"/jobs/{job_id}").json()
        assert done["status"] == "cancelled"
        events = check_stream(messages, job_id, done["status"])
        finished = datetime.fromisoformat(done["finished_at"]).timestamp()
        first_metrics = next(m for m in events if m["event"] == "metrics")
        assert first_metrics["at"] < finished  # delivered while the job was still training
    finally:
        srv.stop()
