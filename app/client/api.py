"""A thin, typed Python client for the peftserve HTTP API (httpx), and what `peftserve` CLI commands call.

    from app.client import PeftServeClient

    with PeftServeClient("http://127.0.0.1:8000", api_key="...") as ps:
        job = ps.submit("sentiment", train="train.jsonl", hyperparameters={"epochs": 3})
        for event in ps.stream_events(job["id"]):
            print(event.type, event.message)
        print(ps.predict("sentiment", ["A moving, beautifully acted film."]))

Responses are the server's JSON as dicts (the shapes of app/schemas.py); every error response becomes a
`PeftServeAPIError` carrying the envelope's `code`, `message` and `field`. Only httpx is imported here (no
torch, no app.main), so a CLI command that goes through this client starts fast.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

Records = Sequence[Mapping[str, Any]]
# Training/evaluation data: a JSONL/CSV file (uploaded first), inline records, or {"dataset": "ds_…"}.
Data = str | os.PathLike | Records | Mapping[str, Any]


class PeftServeAPIError(Exception):
    """An error answer from the server: its HTTP status and the `{"error": {code, message, field}}` envelope."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(f"{status} {code}: {message}" + (f" (field: {field})" if field else ""))
        self.status, self.code, self.message, self.field = status, code, message, field

    @classmethod
    def from_response(cls, response: httpx.Response) -> PeftServeAPIError:
        try:
            body = response.json()
        except ValueError:
            body = None
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and "message" in err:
            return cls(response.status_code, str(err.get("code") or "error"), str(err["message"]), err.get("field"))
        text = response.text.strip()[:300] or response.reason_phrase
        return cls(response.status_code, "http_error", f"HTTP {response.status_code}: {text}")


class PeftServeConnectionError(PeftServeAPIError):
    """The server could not be reached or did not answer in time (status 0: no HTTP answer)."""

    def __init__(self, message: str):
        super().__init__(0, "connection_error", message)


@dataclass
class JobEvent:
    """One job event: an `EventPublic` (type `message` or `metrics`), or the final `end` (data: the job)."""

    type: str
    message: str = ""
    data: dict[str, Any] | None = None
    id: int | None = None
    level: str = "info"
    created_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_public(cls, e: Mapping[str, Any], type: str | None = None) -> JobEvent:
        return cls(
            type=type or e.get("type") or "message",
            message=e.get("message") or "",
            data=e.get("data"),
            id=e.get("id"),
            level=e.get("level") or "info",
            created_at=e.get("created_at"),
            raw=dict(e),
        )


def sse_lines(chunks: Iterable[str]) -> Iterator[str]:
    """Lines of an event stream, split at CR, LF or CRLF only (httpx's iter_lines also splits at U+2028 and
    other Unicode line breaks, which JSON strings may hold)."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk
        # a lone CR ends a line only once something follows it (it may be the first half of a CRLF)
        while m := _LINE_END.search(buffer):
            yield buffer[: m.start()]
            buffer = buffer[m.end() :]
    if buffer:
        yield buffer.removesuffix("\r")


_LINE_END = re.compile(r"\r\n|\r(?=.)|\n", re.S)


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str, str | None]]:
    """Server-Sent Events: (event, data, id) per message; comments and `retry:` are skipped. A message the
    stream cut off before its closing blank line is dropped, as the SSE spec says."""
    event, data, event_id = "message", [], None
    for line in lines:
        line = line.rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data), event_id
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value or "message"
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


class PeftServeClient:
    """The peftserve API over one httpx connection pool. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = (base_url or os.environ.get("PEFTSERVE_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("PEFTSERVE_API_KEY") or None
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> PeftServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- plumbing ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise PeftServeConnectionError(f"cannot reach {self.base_url}: {e or type(e).__name__}") from e
        if r.is_error:
            raise PeftServeAPIError.from_response(r)
        return r.json()

    def _data(self, value: Data) -> dict[str, Any]:
        """A DataSource body: upload a file, pass records inline, or pass {"dataset": id} as it is."""
        if isinstance(value, (str, os.PathLike)):
            return {"dataset": self.upload_dataset(value)["id"]}
        if isinstance(value, Mapping):
            return dict(value)
        return {"records": [dict(r) for r in value]}

    # ---- health and datasets ---------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def upload_dataset(self, path: str | os.PathLike) -> dict[str, Any]:
        """Upload a JSONL or CSV file (`text`, `label`, optional `text_pair`); returns the dataset (`id`, …)."""
        p = Path(path)
        with p.open("rb") as f:
            return self._request("POST", "/datasets", files={"file": (p.name, f)})

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        """One dataset: rows per label, length percentiles (`length_chars`, `length_words`), its first rows."""
        return self._request("GET", f"/datasets/{dataset_id}")

    def datasets(self, limit: int = 20) -> list[dict[str, Any]]:
        """Up to `limit` uploaded datasets, newest first (pages of at most 100 are followed)."""
        out: list[dict[str, Any]] = []
        while len(out) < limit:
            params: dict[str, Any] = {"limit": min(100, limit - len(out))}
            if out:
                params["after"] = out[-1]["id"]
            page = self._request("GET", "/datasets", params=params)
            out += page["data"]
            if not page["has_more"] or not page["data"]:
                break
        return out

    def delete_dataset(self, dataset_id: str) -> list[str]:
        """Delete a dataset (a 409 while a live job uses it); returns the deleted id in a list."""
        return self._request("DELETE", f"/datasets/{dataset_id}")["deleted"]

    # ---- jobs ----------------------------------------------------------------------------------------
    def submit(
        self,
        adapter: str,
        train: Data,
        *,
        validation: Data | None = None,
        base_model: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        validation_split: float | None = None,
        init_from: str | None = None,
    ) -> dict[str, Any]:
        """Queue a training job; files are uploaded first. Returns the job (`id`, `status`, …). `init_from`
        (`name` or `name@vN`) continues that adapter version instead of starting a fresh one."""
        body: dict[str, Any] = {"adapter": adapter, "train": self._data(train)}
        if validation is not None:
            body["validation"] = self._data(validation)
        if base_model is not None:
            body["base_model"] = base_model
        if hyperparameters:
            body["hyperparameters"] = dict(hyperparameters)
        if validation_split is not None:
            body["validation_split"] = validation_split
        if init_from is not None:
            body["init_from"] = init_from
        return self._request("POST", "/jobs", json=body)

    def jobs(self, status: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Up to `limit` jobs, newest first (pages of at most 100 are followed while the server has more)."""
        out: list[dict[str, Any]] = []
        after: str | None = None
        while len(out) < limit:
            params: dict[str, Any] = {"limit": min(100, limit - len(out))}
            if status:
                params["status"] = status
            if after:
                params["after"] = after
            page = self._request("GET", "/jobs", params=params)
            out += page["data"]
            if not page["has_more"] or not page["data"]:
                break
            after = page["data"][-1]["id"]
        return out[:limit]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{job_id}/cancel")

    def pause(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{job_id}/pause")

    def resume(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{job_id}/resume")

    def metrics(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}/metrics")

    def events(self, job_id: str, after: int = 0, limit: int = 100) -> dict[str, Any]:
        """One page of events with an id above `after`: {"data": [...], "has_more": bool}."""
        return self._request("GET", f"/jobs/{job_id}/events", params={"after": after, "limit": limit})

    def stream_events(self, job_id: str, after: int = 0, *, poll_interval: float = 0.5) -> Iterator[JobEvent]:
        """Every event of a job above `after`, live, ending with a `JobEvent(type="end")` once the job has ended.

        Follows the Server-Sent Events stream (`?stream=true`), reconnecting from the last event id if it
        drops; a server without the stream (a JSON answer) is polled instead.
        """
        last = after
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            # the server sends a keep-alive comment every ~15 s: a read silent for much longer is a lost stream
            timeout = httpx.Timeout(self.timeout, read=max(self.timeout, 60.0))
            params = {"stream": "true", "after": last}
            try:
                with self._http.stream(
                    "GET", f"/jobs/{job_id}/events", params=params, headers=headers, timeout=timeout
                ) as r:
                    if r.is_error:
                        r.read()
                        raise PeftServeAPIError.from_response(r)
                    if not r.headers.get("content-type", "").startswith("text/event-stream"):
                        break  # no stream on this server: poll
                    for name, data, event_id in parse_sse(sse_lines(r.iter_text())):
                        payload = json.loads(data) if data else {}
                        if name == "end":
                            yield JobEvent(type="end", message=str(payload.get("status", "")), data=payload)
                            return
                        event = JobEvent.from_public(payload, type=name)
                        if event_id and event_id.isdigit():
                            event.id = int(event_id)
                        if event.id is not None:
                            last = max(last, event.id)
                        yield event
            except (httpx.TransportError, httpx.StreamError):
                pass  # dropped: resume from `last`
            time.sleep(poll_interval)
            self.job(job_id)  # raises if the job is gone (or the server is down)
        yield from self._poll_events(job_id, last, poll_interval)

    def _poll_events(self, job_id: str, after: int, poll_interval: float) -> Iterator[JobEvent]:
        last, ended = after, None
        while True:
            page = self.events(job_id, after=last, limit=500)
            for e in page["data"]:
                last = e["id"]
                yield JobEvent.from_public(e)
            if page["has_more"]:
                continue
            if ended is not None:  # the status was terminal before this last drain: every event is out
                yield JobEvent(type="end", message=ended["status"], data={"job_id": job_id, "status": ended["status"]})
                return
            job = self.job(job_id)
            if job["status"] in TERMINAL:
                ended = job
                continue
            time.sleep(poll_interval)

    def wait(self, job_id: str, *, timeout: float | None = None, poll_interval: float = 0.5) -> dict[str, Any]:
        """Poll until the job has ended; returns it. `TimeoutError` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (job := self.job(job_id))["status"] not in TERMINAL:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(poll_interval)
        return job

    # ---- adapters and inference --------------------------------------------------------------------
    def adapters(self) -> dict[str, Any]:
        """{"data": [adapter with versions, …], "loaded": [resident adapters, …]}."""
        return self._request("GET", "/adapters")

    def adapter(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/adapters/{name}")

    def download_adapter(self, ref: str, dest: str | os.PathLike | None = None) -> Path:
        """Save `name` (newest) or `name@vN` as the server's .tar.gz of peft's folder; returns the file written
        (`dest`, or the server's file name in the current folder, or inside `dest` when it is a folder)."""
        try:
            with self._http.stream("GET", f"/adapters/{ref}/archive") as r:
                if r.is_error:
                    r.read()
                    raise PeftServeAPIError.from_response(r)
                filename = _attachment_name(r.headers.get("content-disposition", "")) or f"{ref}.tar.gz"
                path = Path(dest) if dest is not None else Path(filename)
                if path.is_dir():
                    path = path / filename
                tmp = path.with_name(f".{path.name}.part")
                with tmp.open("wb") as f:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
                tmp.replace(path)
                return path
        except httpx.HTTPError as e:
            raise PeftServeConnectionError(f"cannot reach {self.base_url}: {e or type(e).__name__}") from e

    def import_adapter(
        self, name: str, base_model: str, archive: str | os.PathLike, labels: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Upload a .tar.gz of a peft LoRA folder (sequence classification) as the next version of `name`;
        returns the stored version (`ref`, `labels`, …)."""
        path = Path(archive)
        data: dict[str, str] = {"name": name, "base_model": base_model}
        if labels is not None:
            data["labels"] = json.dumps(list(labels))
        with path.open("rb") as f:
            return self._request("POST", "/adapters", data=data, files={"file": (path.name, f, "application/gzip")})

    def delete_adapter(self, ref: str) -> list[str]:
        """Delete `name@vN`, or every version of `name`; returns the refs deleted."""
        return self._request("DELETE", f"/adapters/{ref}")["deleted"]

    def predict(
        self, adapter: str, inputs: str | Sequence[str], text_pairs: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """{"adapter": "name@vN", "predictions": [{"label", "score", "scores"}, …]}."""
        body: dict[str, Any] = {"adapter": adapter, "inputs": inputs if isinstance(inputs, str) else list(inputs)}
        if text_pairs is not None:
            body["text_pairs"] = list(text_pairs)
        return self._request("POST", "/predict", json=body)

    def evaluate(self, adapter: str, data: Data) -> dict[str, Any]:
        """Accuracy, macro P/R/F1 and confusion matrix on a file (uploaded first), records, or {"dataset": id}."""
        return self._request("POST", "/evaluate", json={"adapter": adapter, **self._data(data)})


def _attachment_name(disposition: str) -> str | None:
    """The plain file name of a `Content-Disposition: attachment; filename="…"` header (no folders)."""
    _, sep, rest = disposition.partition('filename="')
    name = rest.partition('"')[0] if sep else ""
    return name if name and "/" not in name and "\\" not in name and name not in (".", "..") else None
