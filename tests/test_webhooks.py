"""Webhooks: a job's webhook_url gets a signed POST when the job ends, retried until it answers 2xx."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from app.base_models.tiny import toy_sentiment
from app.jobs.webhooks import sign, verify
from app.jobs.worker import Worker
from app.main import create_app
from tests.support import ADMIN_HEADERS, make_settings

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
HP = {"epochs": 1, "batch_size": 8, "target_modules": ["query", "value"]}


class Receiver:
    """An HTTP server on loopback that fails the first `failures` calls with 503, then answers 204."""

    def __init__(self, failures: int):
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.failures = failures
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(503 if len(outer.calls) <= outer.failures else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.calls) >= n, self.calls

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver(failures=2)
    yield r
    r.close()


@pytest.fixture
def client(tmp_path, tiny_models):
    settings = make_settings(tmp_path, tiny_models, webhook_secret=SECRET, webhook_retry_seconds=0.2)
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as c:
        c.settings = settings
        yield c


def test_succeeded_job_calls_its_webhook_signed_with_retries(client, receiver):
    r = client.post(
        "/jobs",
        json={
            "adapter": "hooked",
            "base_model": "tiny-bert",
            "train": {"records": toy_sentiment(40)},
            "hyperparameters": HP,
            "webhook_url": receiver.url,
        },
    )
    # shown as its origin only (a path or query may carry a token, and read-only keys see jobs)
    origin = receiver.url.removesuffix("/hook")
    assert r.status_code == 202 and r.json()["webhook_url"] == origin + "/…", r.text
    job_id = r.json()["id"]
    Worker(client.settings).run(burst=True)
    receiver.wait(3)  # two 503s, then delivered
    time.sleep(1.0)
    assert len(receiver.calls) == 3  # no call after the 2xx
    ids = {h["webhook-id"] for h, _ in receiver.calls}
    assert len(ids) == 1  # one message, retried: receivers de-duplicate on webhook-id
    headers, body = receiver.calls[-1]
    assert verify(SECRET, headers, body)
    assert headers["webhook-signature"] == sign(SECRET, headers["webhook-id"], int(headers["webhook-timestamp"]), body)
    payload = json.loads(body)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job_id and payload["data"]["result"]["adapter"] == "hooked@v1"
    # a changed body, another key or a stale timestamp does not verify
    assert not verify(SECRET, headers, body.replace(b"succeeded", b"failed"))
    assert not verify("whsec_" + base64.b64encode(b"another key of 32 bytes.........").decode(), headers, body)
    assert not verify(SECRET, headers, body, now=int(headers["webhook-timestamp"]) + 3600)
    events = [e["message"] for e in client.get(f"/jobs/{job_id}/events", params={"limit": 500}).json()["data"]]
    assert sum("Webhook job.succeeded attempt" in m for m in events) == 2
    assert any(m == "Webhook job.succeeded delivered (HTTP 204)" for m in events), events


def test_cancelled_job_calls_its_webhook(client, receiver):
    receiver.failures = 0
    job = client.post(
        "/jobs",
        json={
            "adapter": "gone",
            "base_model": "tiny-bert",
            "train": {"records": toy_sentiment(40)},
            "webhook_url": receiver.url,
        },
    ).json()
    assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    receiver.wait(1)
    headers, body = receiver.calls[0]
    assert verify(SECRET, headers, body) and json.loads(body)["type"] == "job.cancelled"


def test_bad_webhook_secret_is_refused_at_start_up():
    from app.config import Settings

    for bad in ("whsec_not*base64!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError, match="whsec_"):
            Settings(_env_file=None, webhook_secret=bad)
    assert not verify(
        "whsec_not*base64!", {"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "v1,x"}, b""
    )


def test_webhook_url_is_checked(client, tmp_path, tiny_models):
    body = {"adapter": "x", "base_model": "tiny-bert", "train": {"records": toy_sentiment(20)}}
    for bad in ("ftp://example.org/x", "not a url", "http://", "http://example.org/" + "a" * 2040):
        r = client.post("/jobs", json={**body, "webhook_url": bad})
        assert r.status_code == 422 and r.json()["error"]["field"] == "webhook_url", r.text
    unsigned = make_settings(tmp_path / "nosecret", tiny_models)  # no secret configured: refused, not unsigned
    with TestClient(create_app(unsigned), headers=ADMIN_HEADERS) as c:
        r = c.post("/jobs", json={**body, "webhook_url": "http://127.0.0.1:9/x"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "webhook_url"
        assert "PEFTSERVE_WEBHOOK_SECRET" in r.json()["error"]["message"]
