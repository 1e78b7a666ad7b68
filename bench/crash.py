"""Kill -9 the training worker at random moments while jobs run; every job must still finish.

    python -m bench.crash --jobs 10

A real `peftserve serve` with one worker trains N jobs on a tiny BERT built from config. While a job is
running, the worker process is SIGKILLed after a random delay; the server restarts it, the job goes back to
the queue and the new worker resumes it from its last checkpoint. At the end: every job succeeded, each
adapter exists exactly once, no run started over from step 0 once its job had a checkpoint (only kills
before the first checkpoint may cost a restart), and each job's metric history reads as one run.
With `--fused-jobs N` the worker trains up to N jobs together (FUSED_JOBS, app/training/fused.py): a kill then
hits every job in the group, and each must resume from its own checkpoint. tests/test_crash.py runs it with 2
jobs of 12 epochs (`--jobs 2 --seed 1 --epochs 12 --timeout 600`), one at a time and together, and reads the
summary this prints last (JSON). Exits 1 if any check above fails.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import AUTH, BENCH_KEY, bench_server, table

CHECKPOINT_STEPS = 50
KILLS_PER_JOB = 3


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _alive(pid: int) -> bool:
    """Running, not a zombie (a killed worker stays one until the server reaps it, within 2 s)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # gone meanwhile: FileNotFoundError, or ProcessLookupError mid-read
        return False


def _owner(c: httpx.Client, job_id: str) -> int | None:
    """The pid of the worker that last claimed the job (its "Started on worker host:pid" event)."""
    events = c.get(f"/jobs/{job_id}/events", params={"limit": 500}).json()["data"]
    started = [e["message"] for e in events if e["message"].startswith("Started on worker ")]
    return int(started[-1].rsplit(":", 1)[1]) if started else None


def run(
    jobs: int = 10,
    seed: int = 0,
    workdir: Path | None = None,
    timeout: float = 1200,
    epochs: int = 30,
    fused_jobs: int = 1,
) -> dict:
    from app.base_models.tiny import build_bert, toy_sentiment

    rng = random.Random(seed)
    work = Path(workdir or tempfile.mkdtemp(prefix="peftserve-crash-"))
    model = build_bert(work / "tiny-bert")
    env = {
        "PEFTSERVE_ADMIN_API_KEYS": BENCH_KEY,
        "PEFTSERVE_DATA_DIR": str(work / "data"),
        "PEFTSERVE_ADAPTERS_DIR": str(work / "adapters"),
        "PEFTSERVE_MODELS": json.dumps({"tiny-bert": {"kind": "local", "location": str(model)}}),
        "PEFTSERVE_MODELS_ROOT": str(work),
        "PEFTSERVE_WORKERS": "1",
        "PEFTSERVE_POLL_INTERVAL": "0.2",
        "PEFTSERVE_CHECKPOINT_STEPS": str(CHECKPOINT_STEPS),
        "PEFTSERVE_MAX_ATTEMPTS": "100",  # this run kills on purpose; the limit has its own unit test
        "PEFTSERVE_TRAINING_DTYPE": "float32",
        "PEFTSERVE_FUSED_JOBS": str(fused_jobs),  # > 1: the worker trains that many jobs together; a kill hits all
    }
    server = bench_server(env, work / "server.log", args=["--log-level", "warning"])
    kills: list[dict] = []
    started = time.monotonic()
    try:
        server.start()
        with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as c:
            ids = []
            for i in range(jobs):
                # 72 steps an epoch (~2,000 in 30): seconds of training on the tiny model, room for kills mid-run
                hp = {
                    "epochs": epochs,
                    "batch_size": 2,
                    "early_stopping_patience": 0,
                    "target_modules": ["query", "value"],
                }
                body = {"adapter": f"crash-{i}", "base_model": "tiny-bert", "hyperparameters": hp}
                r = c.post("/jobs", json={**body, "train": {"records": toy_sentiment(160, seed=i)}})
                r.raise_for_status()
                ids.append(r.json()["id"])
            deadline = time.monotonic() + timeout
            plan: dict[str, int] = {}  # job -> step at which to kill it (-1: a moment after it is seen running)
            while time.monotonic() < deadline:
                states = {j: c.get(f"/jobs/{j}").json() for j in ids}
                if all(s["status"] in ("succeeded", "failed", "cancelled") for s in states.values()):
                    break
                running = [s for s in states.values() if s["status"] == "running"]
                pid = _owner(c, running[0]["id"]) if running else None
                if pid is None or pid not in _children(server.proc.pid) or not _alive(pid):
                    time.sleep(0.1)  # nothing running, or still marked running by a worker already dead
                    continue
                job = running[0]
                if sum(k["job"] == job["id"] and k["planned"] for k in kills) >= KILLS_PER_JOB:
                    time.sleep(0.2)
                    continue
                if job["id"] not in plan:
                    # Most kills land mid-training, a random 20-800 steps into this run; one in four lands at a
                    # random moment after the claim (loading the base, tokenizing, saving).
                    if rng.random() < 0.25:
                        plan[job["id"]] = -1
                        time.sleep(rng.uniform(0.0, 3.0))
                    else:
                        plan[job["id"]] = job["progress"]["step"] + rng.randint(20, 800)
                target = plan[job["id"]]
                if target >= 0 and job["progress"]["step"] < target:
                    time.sleep(0.05)
                    continue
                job = c.get(f"/jobs/{job['id']}").json()
                if job["status"] != "running" or _owner(c, job["id"]) != pid or not _alive(pid):
                    continue
                together = [s for s in running[1:] if _owner(c, s["id"]) == pid]  # trained in the same worker
                subprocess.run(["kill", f"-{signal.SIGKILL.value}", str(pid)], check=False)
                del plan[job["id"]]
                for hit in [job, *(c.get(f"/jobs/{s['id']}").json() for s in together)]:
                    kill = {"job": hit["id"], "step": hit["progress"]["step"], "at": time.monotonic() - started}
                    # A kill can land just as its job ends (saved and recorded): then nothing was lost.
                    kill["after_end"] = c.get(f"/jobs/{hit['id']}").json()["status"] != "running"
                    kill["planned"] = hit is job
                    kills.append(kill)
            else:
                raise TimeoutError("jobs did not finish")
            final = {j: c.get(f"/jobs/{j}").json() for j in ids}
            metrics = {j: c.get(f"/jobs/{j}/metrics").json() for j in ids}
            events = {j: c.get(f"/jobs/{j}/events", params={"limit": 500}).json()["data"] for j in ids}
    finally:
        server.stop()
    wall = time.monotonic() - started

    rows, problems = [], []
    for i, j in enumerate(ids):
        job, name = final[j], f"crash-{i}"
        versions = sorted(p.name for p in (work / "adapters" / name).glob("v*"))
        resumed = (job.get("result") or {}).get("metrics", {}).get("resumed_from_steps", [])
        job_kills = [k for k in kills if k["job"] == j]
        early = sum(k["step"] < CHECKPOINT_STEPS for k in job_kills)  # may precede the first checkpoint
        fresh = sum(e["message"] == "First training step done" for e in events[j])  # runs that began at step 0
        steps = [p["step"] for p in metrics[j]["train"]]
        lost = sum("Worker lost" in e["message"] for e in events[j])
        if job["status"] != "succeeded":
            problems.append(f"{name}: {job['status']} {job.get('error')}")
        if versions != ["v1"]:
            problems.append(f"{name}: versions {versions}, want exactly one")
        if fresh - 1 > early or any(s <= 0 for s in resumed):  # started over although a checkpoint existed
            problems.append(f"{name}: {fresh} runs from step 0 after {early} kills before a checkpoint; {resumed}")
        if steps != sorted(set(steps)):
            problems.append(f"{name}: metric steps repeat or go back: {steps}")
        total = (job.get("result") or {}).get("metrics", {}).get("steps", 0)
        rows.append((name, job["status"], len(job_kills), lost, fresh, str(resumed), total, job["attempts"], versions))
    header = ("adapter", "status", "kills", "lost", "from step 0", "resumed from", "steps", "attempts", "versions")
    print(table(rows, header))
    redone = sum(k["step"] for k in kills)  # steps a restart from step 0 would have trained again
    saved = sum(s for j in ids for s in (final[j].get("result") or {}).get("metrics", {}).get("resumed_from_steps", []))
    summary = {
        "jobs": jobs,
        "kills": sum(k["planned"] for k in kills),
        "jobs_hit": len(kills),  # with fused jobs one kill hits every job its worker trains
        "kills_past_a_checkpoint": sum(k["step"] >= CHECKPOINT_STEPS for k in kills),
        "kills_as_the_job_ended": sum(k["after_end"] for k in kills),
        "jobs_lost": sum(sum("Worker lost" in e["message"] for e in events[j]) for j in ids),
        "resumes": sum(
            len((final[j].get("result") or {}).get("metrics", {}).get("resumed_from_steps", [])) for j in ids
        ),
        "steps_not_retrained": saved,
        "steps_done_at_kills": redone,
        "succeeded": sum(final[j]["status"] == "succeeded" for j in ids),
        "wall_s": round(wall, 1),
        "problems": problems,
    }
    print(json.dumps(summary, indent=2))
    if workdir is None and not problems:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30, help="epochs a job (72 steps each)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds for all jobs to finish")
    ap.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a temporary folder)")
    ap.add_argument("--fused-jobs", type=int, default=1, help="jobs the worker trains together (FUSED_JOBS)")
    args = ap.parse_args()
    summary = run(args.jobs, args.seed, args.workdir, args.timeout, args.epochs, args.fused_jobs)
    sys.exit(1 if summary["problems"] else 0)


if __name__ == "__main__":
    main()
