"""Which *ForSequenceClassification families the service trains and serves, checked end to end.

    python -m bench.architectures [--epochs 3] [--archs gpt2,roberta] [--workdir DIR] [--strict]

Builds every tiny base of app.base_models.tiny.ARCHITECTURES (saved as a real hub base is: backbone,
*ForMaskedLM or *ForCausalLM), starts a real `peftserve serve` with one worker, trains one adapter per base
with the default LoRA targets, predicts seven texts of different lengths (one over the models' 128 tokens)
over HTTP, stops the server and starts a second server process over the same data, predicts again, and
computes what plain transformers + peft give for each saved adapter. Prints a markdown table: architecture ×
(trains, serves, same after restart, equals plain peft with the largest absolute difference), and the error
of any failing cell. A failing architecture is recorded, never fatal; `--strict` exits 1 if any cell failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from app.base_models.tiny import PROBE_TEXTS as TEXTS  # one word to 180 (cut at 128 tokens)
from bench.common import AUTH, BENCH_KEY, bench_server

ATOL = 1e-5
_SPAN = ("started_at", "finished_at")


@dataclass
class Row:
    arch: str
    model: Path | None = None
    job: str | None = None
    adapter: str | None = None  # name@vN
    labels: list[str] = field(default_factory=list)
    train_seconds: float | None = None
    trains: bool | None = None  # None: not reached
    serves: bool | None = None
    first: list[list[float]] | None = None
    restart: bool | None = None
    restart_diff: float | None = None
    plain: bool | None = None
    plain_diff: float | None = None
    errors: list[str] = field(default_factory=list)

    def fail(self, stage: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.errors.append(f"{stage}: {' '.join(str(text).split())[:400]}")


def _message(r: httpx.Response) -> str:
    try:
        err = r.json()["error"]
        return f"{r.status_code} {err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{r.status_code}: {r.text[:300]}"


def _predict(c: httpx.Client, row: Row) -> list[list[float]]:
    r = c.post("/predict", json={"adapter": row.adapter, "inputs": TEXTS})
    if r.status_code != 200:
        raise RuntimeError(_message(r))
    return [[p["scores"][label] for label in row.labels] for p in r.json()["predictions"]]


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def _build(rows: list[Row], models: Path) -> None:
    from app.base_models.tiny import build_tiny

    for row in rows:
        try:
            row.model = build_tiny(row.arch, models / f"tiny-{row.arch}")
        except Exception as e:  # noqa: BLE001 - recorded in the table
            row.trains = False
            row.fail("build", e)


def _train(c: httpx.Client, rows: list[Row], epochs: int, n_rows: int, timeout: float) -> None:
    from app.base_models.tiny import toy_sentiment

    for row in rows:
        if row.model is None:
            continue
        body = {
            "adapter": f"a-{row.arch}",
            "base_model": f"tiny-{row.arch}",
            "train": {"records": toy_sentiment(n_rows)},
            # the product's default targets (every Linear of the blocks); a learning rate for tiny models
            "hyperparameters": {"epochs": epochs, "batch_size": 8, "learning_rate": 1e-2},
        }
        r = c.post("/jobs", json=body)
        if r.status_code != 202:
            row.trains = False
            row.fail("submit", _message(r))
        else:
            row.job = r.json()["id"]
    deadline = time.monotonic() + timeout
    pending = [row for row in rows if row.job]
    while pending and time.monotonic() < deadline:
        for row in list(pending):
            job = c.get(f"/jobs/{row.job}").json()
            if job["status"] in ("queued", "running"):
                continue
            pending.remove(row)
            row.trains = job["status"] == "succeeded"
            if row.trains:
                row.adapter = job["result"]["adapter"]
                if job["started_at"] and job["finished_at"]:
                    started, finished = (datetime.fromisoformat(job[k].replace("Z", "+00:00")) for k in _SPAN)
                    row.train_seconds = round((finished - started).total_seconds(), 1)
            else:
                err = job.get("error") or {}
                row.fail("train", f"{job['status']}: {err.get('code')}: {err.get('message')}")
        time.sleep(0.5)
    for row in pending:
        row.trains = False
        row.fail("train", f"job {row.job} not finished after {timeout:.0f} s")


def _serve(c: httpx.Client, rows: list[Row], adapters: Path) -> None:
    for row in rows:
        if not row.trains:
            continue
        try:
            name, version = row.adapter.split("@")
            row.labels = json.loads((adapters / name / version / "peftserve.json").read_text())["labels"]
            row.first = _predict(c, row)
            row.serves = True
        except Exception as e:  # noqa: BLE001
            row.serves = False
            row.fail("serve", e)


def _after_restart(c: httpx.Client, rows: list[Row]) -> None:
    for row in rows:
        if not row.serves:
            continue
        try:
            row.restart_diff = _max_diff(_predict(c, row), row.first)
            row.restart = row.restart_diff <= ATOL
            if not row.restart:
                row.fail("restart", f"answers moved by {row.restart_diff:.2e} after a restart")
        except Exception as e:  # noqa: BLE001
            row.restart = False
            row.fail("restart", e)


def _plain_peft(rows: list[Row], adapters: Path) -> None:
    from app.base_models.tiny import plain_peft_probs

    for row in rows:
        if not row.serves:
            continue
        try:
            name, version = row.adapter.split("@")
            probs = plain_peft_probs(row.model, adapters / name / version, len(row.labels), TEXTS)
            row.plain_diff = _max_diff(probs.tolist(), row.first)
            row.plain = row.plain_diff <= ATOL
            if not row.plain:
                row.fail("plain peft", f"served probabilities differ from plain peft by up to {row.plain_diff:.2e}")
        except Exception as e:  # noqa: BLE001
            row.plain = False
            row.fail("plain peft", e)


def _cell(ok: bool | None, detail: str = "") -> str:
    mark = "–" if ok is None else ("yes" if ok else "**no**")
    return f"{mark} ({detail})" if detail and ok is not None else mark


def markdown(rows: list[Row]) -> str:
    header = ["architecture", "trains", "serves", "same after restart", "equals plain peft (max abs diff)", "error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [
            r.arch,
            _cell(r.trains, f"{r.train_seconds} s" if r.train_seconds is not None else ""),
            _cell(r.serves),
            _cell(r.restart, f"{r.restart_diff:.1e}" if r.restart_diff is not None else ""),
            _cell(r.plain, f"{r.plain_diff:.1e}" if r.plain_diff is not None else ""),
            "; ".join(r.errors).replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(archs: list[str], epochs: int, n_rows: int, work: Path, threads: int, timeout: float) -> list[Row]:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    rows = [Row(arch) for arch in archs]
    models, adapters = work / "models", work / "adapters"
    print(f"work folder {work}; building {len(rows)} tiny bases ...", file=sys.stderr, flush=True)
    _build(rows, models)
    built = {f"tiny-{r.arch}": {"kind": "local", "location": str(r.model)} for r in rows if r.model}
    env = {
        "PEFTSERVE_ADMIN_API_KEYS": BENCH_KEY,
        "PEFTSERVE_DATA_DIR": str(work / "data"),
        "PEFTSERVE_ADAPTERS_DIR": str(adapters),
        "PEFTSERVE_MODELS": json.dumps(built),
        "PEFTSERVE_MODELS_ROOT": str(models),
        "PEFTSERVE_WORKERS": "1",
        "PEFTSERVE_POLL_INTERVAL": "0.2",
        "PEFTSERVE_TRAINING_DTYPE": "float32",
        "PEFTSERVE_INFERENCE_DTYPE": "float32",  # exact comparisons; bf16 serving has its own tests
        # tiny models gain nothing from intra-op threads; on a small box they only spin against each other
        "OMP_NUM_THREADS": str(threads),
    }
    server = bench_server(env, work / "server.log", args=["--log-level", "warning"])
    try:
        server.start()
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
            print(f"training {sum(r.model is not None for r in rows)} adapters ...", file=sys.stderr, flush=True)
            _train(c, rows, epochs, n_rows, timeout)
            _serve(c, rows, adapters)
        print("restarting the server ...", file=sys.stderr, flush=True)
        server.stop()
        server.start()  # a second server process over the same data: nothing held in memory survives
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
            _after_restart(c, rows)
    except Exception as e:  # noqa: BLE001 - the server itself failed: every row not done says so
        for row in rows:
            if row.restart is None and row.trains is not False and row.serves is not False:
                row.fail("server", e)
        print(f"server failed: {e}; log {server.log}", file=sys.stderr)
    finally:
        server.stop()
    _plain_peft(rows, adapters)
    return rows


def main(argv: list[str] | None = None) -> int:
    from app.base_models.tiny import ARCHITECTURES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=",".join(ARCHITECTURES), help="comma-separated, of: " + " ".join(ARCHITECTURES))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rows", type=int, default=120, help="toy sentiment rows per job")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server, its worker and this process")
    ap.add_argument("--timeout", type=float, default=900, help="seconds to wait for all training jobs")
    ap.add_argument("--workdir", type=Path, help="work folder (default: a new temporary one)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any cell failed")
    args = ap.parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = sorted(set(archs) - set(ARCHITECTURES))
    if unknown:
        ap.error(f"unknown architectures {unknown}; known: {', '.join(ARCHITECTURES)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="peftserve-arch-"))
    started = time.monotonic()
    rows = run(archs, args.epochs, args.rows, work, args.threads, args.timeout)
    print(markdown(rows))
    passed = sum(not r.errors for r in rows)
    print(f"\n{passed}/{len(rows)} architectures pass every column ({time.monotonic() - started:.0f} s; {work})")
    return 1 if args.strict and passed < len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
