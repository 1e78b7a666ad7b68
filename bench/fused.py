"""Several jobs on one worker: trained together (FUSED_JOBS) against one after another, side by side in one run.

    python -m bench.fused [--jobs 4] [--rows 1000] [--dtype auto]

On `minilm` at the product's defaults (every Linear, rank 16, validation split, checkpoints, epoch adapters),
N jobs of 1,000 rows each (Rotten Tomatoes snippets and SMS spam in turn, each job its own sample) are
submitted at once to one in-process worker, twice: with FUSED_JOBS=1 (the jobs run one after another) and
with FUSED_JOBS=N (a step of every job per forward and backward, app/training/fused.py). Printed: the wall
time from submission to the last job done in each run and their ratio (goal <= 0.6), and each adapter's
accuracy and macro-F1 on 1,000 held-out rows of its dataset, trained alone against trained together (goal:
within 1 point).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import table
from bench.train_speed import _cpu_name
from bench.training import metrics, rows_of, sample

DATASETS = ("rt_movie_snippets", "sms_spam")


def run_jobs(work: Path, specs: list[dict], fused_jobs: int, dtype: str) -> tuple[float, list[dict]]:
    """Submit every job at once to one worker (FUSED_JOBS=`fused_jobs`), wait for all: (wall seconds, each
    job's figures on its test rows)."""
    from app.config import Settings
    from app.jobs.worker import Worker
    from app.schemas import JobCreate
    from app.service import PeftServe

    settings = Settings(
        _env_file=None,
        data_dir=work / "data",
        adapters_dir=work / "adapters",
        workers=0,
        fused_jobs=fused_jobs,
        training_dtype=dtype,
    )
    svc = PeftServe(settings)
    started = time.perf_counter()
    jobs = [
        svc.submit_job(JobCreate(adapter=s["name"], base_model="minilm", train={"records": s["train"]})) for s in specs
    ]
    Worker(settings).run(burst=True)
    wall = time.perf_counter() - started
    figures = []
    for spec, job in zip(specs, jobs, strict=True):
        done = svc.store.get_job(job.id)
        if done.status != "succeeded":
            raise SystemExit(f"{spec['name']}: {done.status} {done.error_message}")
        labels = svc.adapters.resolve(spec["name"]).labels
        _, probs = svc.engine.predict(spec["name"], [r["text"] for r in spec["test"]])
        pred = [labels[i] for i in probs.argmax(-1).tolist()]
        figures.append(metrics(labels, [r["label"] for r in spec["test"]], pred))
    svc.close()
    return wall, figures


def main() -> None:
    from app.base_models.loading import resolve_dtype

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--rows", type=int, default=1000, help="training rows a job")
    ap.add_argument("--dtype", default="auto", help="TRAINING_DTYPE: auto, float32 or bfloat16")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="peftserve-bench-fused-"))
    specs = []
    for i in range(args.jobs):
        name = DATASETS[i % len(DATASETS)]
        train = sample(rows_of(name, "train", work / "rt"), args.rows, seed=i)
        test = sample(rows_of(name, "test", work / "rt"), 1000, seed=0)
        specs.append({"name": f"job{i}-{name.split('_')[0]}", "train": train, "test": test})
    dtype = resolve_dtype(args.dtype, "cpu", "none")
    print(f"cpu: {_cpu_name()}; {args.jobs} jobs of {args.rows} rows, training dtype {dtype}", flush=True)

    alone_wall, alone = run_jobs(work / "alone", specs, 1, args.dtype)
    print(f"  one after another: {alone_wall:.1f} s", flush=True)
    together_wall, together = run_jobs(work / "together", specs, args.jobs, args.dtype)
    print(f"  together: {together_wall:.1f} s", flush=True)

    rows = []
    for spec, a, t in zip(specs, alone, together, strict=True):
        diff = (t["accuracy"] - a["accuracy"]) * 100
        rows.append(
            (
                spec["name"],
                f"{a['accuracy']:.3f} / {a['f1_macro']:.3f}",
                f"{t['accuracy']:.3f} / {t['f1_macro']:.3f}",
                f"{diff:+.1f}",
            )
        )
    print()
    print(table(rows, ("job", "alone: acc / macro-F1", "together: acc / macro-F1", "accuracy diff (points)")))
    ratio = together_wall / alone_wall
    worst = max(abs(float(r[3])) for r in rows)
    print()
    print(
        f"{args.jobs} jobs of {args.rows} rows on one worker ({torch.get_num_threads()} threads, {dtype}): together"
        f" {together_wall:.1f} s against one after another {alone_wall:.1f} s: {ratio:.2f}x the wall time"
        f" (goal <= 0.6); accuracy within {worst:.1f} points of each job alone (goal <= 1)"
    )


if __name__ == "__main__":
    main()
