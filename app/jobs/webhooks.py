"""Webhooks: a signed POST to a job's `webhook_url` when the job ends (succeeded, failed or cancelled).

Signed as the Standard Webhooks scheme has it: headers `webhook-id` (the same on every retry of one call),
`webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 over "id.timestamp.body">`.
The key is PEFTSERVE_WEBHOOK_SECRET: `whsec_<base64>` is decoded, any other value is used as UTF-8 bytes.
Receivers check with `verify()` (constant-time, with a timestamp tolerance against replays).

Calls owed are rows of the job store's outbox, written in the transaction that ends the job, so a restart
loses none. One dispatcher thread in the API process sends them and retries failures (no answer, or not
2xx) with exponential back-off, then gives up after `webhook_max_attempts`. Each attempt is a job event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone

import httpx

from app.jobs.outbox import claim_delivery, record_delivery
from app.jobs.store import JobStore
from app.jobs.tables import Job, WebhookDelivery

log = logging.getLogger(__name__)


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, tolerance: float = 300, now: float | None = None
) -> bool:
    """True when `body` and its headers were signed with `secret` within `tolerance` seconds of `now`."""
    try:
        msg_id, timestamp = headers["webhook-id"], int(headers["webhook-timestamp"])
        presented = headers["webhook-signature"].split()
        expected = sign(secret, msg_id, timestamp, body)
    except (KeyError, ValueError):  # a header missing or malformed, or a secret that is not valid base64
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    return any(hmac.compare_digest(expected, p) for p in presented)  # several signatures: key rotation


class WebhookDispatcher:
    def __init__(
        self,
        store: JobStore,
        describe: Callable[[Job], dict],
        secret: str | None,
        max_attempts: int = 8,
        retry_seconds: float = 2.0,
        timeout: float = 10.0,
        poll_interval: float = 0.5,
    ):
        self.store, self.describe, self.secret = store, describe, secret  # describe: a job as the payload's `data`
        self.max_attempts, self.retry_seconds, self.timeout = max_attempts, retry_seconds, timeout
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="webhooks")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout + 5)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            while not self._stop.wait(self.poll_interval):
                try:
                    while not self._stop.is_set() and (due := self._claim()):
                        self.deliver(client, due)
                except Exception:  # noqa: BLE001 - the store may be briefly unavailable; try again next poll
                    log.warning("webhook dispatch failed", exc_info=True)

    def _claim(self) -> WebhookDelivery | None:
        with self.store.session() as s:
            return claim_delivery(s, self.timeout + 30)

    def body(self, delivery: WebhookDelivery) -> bytes:
        payload = {
            "type": delivery.event,
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "data": self.describe(self.store.get_job(delivery.job_id)),
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    def deliver(self, client: httpx.Client, delivery: WebhookDelivery) -> None:
        msg_id = f"msg_{delivery.job_id}_{delivery.id}"  # stable across retries: receivers de-duplicate on it
        attempt = delivery.attempts + 1
        status: int | None = None
        error: str | None = None
        try:
            if not self.secret:
                raise RuntimeError("PEFTSERVE_WEBHOOK_SECRET is not set: calls cannot be signed")
            body, timestamp = self.body(delivery), int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(self.secret, msg_id, timestamp, body),
                "user-agent": "peftserve-webhooks",
            }
            status = client.post(delivery.url, content=body, headers=headers).status_code
            if not 200 <= status < 300:
                error = f"answered {status}"
        except Exception as e:  # noqa: BLE001 - any failure is recorded and retried
            error = f"{type(e).__name__}: {e}"[:500]
        ok = error is None
        give_up = not ok and attempt >= self.max_attempts
        retry_at = None
        if not ok and not give_up:
            retry_at = datetime.now(timezone.utc) + timedelta(
                seconds=min(3600, self.retry_seconds * 2 ** (attempt - 1))
            )
        with self.store.session() as s:
            record_delivery(s, delivery.id, status=status, error=error, done=ok or give_up, retry_at=retry_at)
        if ok:
            self.store.add_event(delivery.job_id, f"Webhook {delivery.event} delivered (HTTP {status})")
        else:
            then = (
                "gave up" if give_up else f"retrying in {(retry_at - datetime.now(timezone.utc)).total_seconds():.0f}s"
            )
            self.store.add_event(
                delivery.job_id,
                f"Webhook {delivery.event} attempt {attempt} of {self.max_attempts} failed: {error}; {then}",
                level="error" if give_up else "warning",
            )
