"""Fuzz the HTTP API from its own OpenAPI document (schemathesis), in process over ASGI.

    make bench-fuzz        (or: python -m bench.fuzz [--cases 1000] [--seed N])

Builds the tiny test models in a temporary folder, uploads a dataset and trains one adapter with an in-process
burst worker (so /predict, /evaluate and the job routes reach real code), leaves one job queued (workers=0:
POST /jobs only queues), then generates cases for every operation of `/openapi.json`, positive and negative,
sends each with an admin key and checks: no 5xx, the status code is documented, the content type and the body
match the documented response. Prints the cases per operation, the total, the failures by check, wall time.
Exits 1 if any check failed, if any operation of the document got no case, or if schemathesis could not
generate cases for an operation (a negative mode is only asked of operations with an input to break).
`tests/test_fuzz.py` runs it with a fixed seed and 200 cases (`--json` gives it the report).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
CALL_TIMEOUT_S = 30  # a call that takes longer is reported (an event stream that never ends, a hang)
HP = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "target_modules": ["query", "value"]}
# The admin key of the fuzzed app, and the header every case is sent with.
FUZZ_KEY = "fuzz-admin-key-0123456789"
HEADERS = {"Authorization": f"Bearer {FUZZ_KEY}"}


@dataclass
class State:
    """What exists before fuzzing starts: generated cases are steered onto these some of the time."""

    adapter: str
    dataset: str
    jobs: list[str]
    model: str = ""  # the trained adapter's /v1 model id


@dataclass
class Report:
    operations: list[str] = field(default_factory=list)  # "METHOD /path" of every operation in the document
    cases: Counter = field(default_factory=Counter)  # "METHOD /path" -> cases sent
    statuses: Counter = field(default_factory=Counter)  # status code -> responses
    failures: Counter = field(default_factory=Counter)  # check (failure kind) -> failing cases
    examples: dict[str, str] = field(default_factory=dict)  # "check on operation" -> one failing case
    errors: dict[str, str] = field(default_factory=dict)  # "operation mode" -> why schemathesis generated nothing
    wall_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    @property
    def missing(self) -> list[str]:
        """Operations of the document that no case exercised."""
        return [op for op in self.operations if not self.cases[op]]

    @property
    def problems(self) -> list[str]:
        """Why this run fails; empty when it passes."""
        out = []
        if self.failures:
            out.append("failed checks: " + ", ".join(f"{k}: {n}" for k, n in sorted(self.failures.items())))
        if self.missing:
            out.append(f"operations not exercised: {', '.join(self.missing)}")
        if self.errors:
            out.append(f"schemathesis errors: {', '.join(sorted(self.errors))}")
        return out

    def summary(self) -> str:
        width = max(len(op) for op in [*self.operations, *self.cases, "total"])
        lines = [f"{op.ljust(width)}  {self.cases[op]:5d}" for op in sorted({*self.operations, *self.cases})]
        lines.append(f"{'total'.ljust(width)}  {self.total:5d} cases in {self.wall_s:.1f} s")
        lines.append("statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())))
        if self.failures:
            lines.append("failures by check: " + ", ".join(f"{k}: {n}" for k, n in sorted(self.failures.items())))
            lines += [f"--- {k}\n{v}" for k, v in sorted(self.examples.items())]
        else:
            lines.append("failures by check: none")
        lines += [f"--- schemathesis error, {k}\n{v}" for k, v in sorted(self.errors.items())]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "operations": self.operations,
            "cases": dict(self.cases),
            "total": self.total,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "failures": dict(self.failures),
            "examples": self.examples,
            "errors": self.errors,
            "missing": self.missing,
            "problems": self.problems,
            "wall_s": round(self.wall_s, 2),
        }


def fuzz_settings(root: Path, models: dict[str, Path]) -> Any:
    """The fuzzed app's settings: state under `root`, the given local models (all in one folder, the allowed
    root), the admin key FUZZ_KEY, no worker processes, fp32."""
    from app.config import ModelSource, Settings

    (models_root,) = {p.parent for p in models.values()}
    return Settings(
        _env_file=None,
        data_dir=root / "data",
        adapters_dir=root / "adapters",
        workers=0,
        models_root=models_root,
        models={name: ModelSource(kind="local", location=str(p)) for name, p in models.items()},
        poll_interval=0.1,
        heartbeat_interval=0.5,
        inference_dtype="float32",
        training_dtype="float32",
        admin_api_keys=[FUZZ_KEY],
    )


def prepare(root: Path) -> tuple[Any, State]:
    """Settings over the tiny models (built under `root`), with a dataset, a trained adapter and a queued job."""
    from fastapi.testclient import TestClient

    from app.base_models.tiny import build_bert, build_llama, toy_sentiment
    from app.jobs.worker import Worker
    from app.main import create_app

    models = {
        "tiny-bert": build_bert(root / "models" / "bert"),
        "tiny-llama": build_llama(root / "models" / "llama"),
    }
    settings = fuzz_settings(root, models)
    with TestClient(create_app(settings), headers=HEADERS) as c:
        jsonl = "".join(json.dumps(r) + "\n" for r in toy_sentiment(60)).encode()
        ds = c.post("/datasets", files={"file": ("train.jsonl", jsonl)})
        assert ds.status_code == 201, ds.text
        body = {"adapter": "sent", "base_model": "tiny-bert", "train": {"records": toy_sentiment(80)}}
        trained = c.post("/jobs", json={**body, "hyperparameters": HP})
        assert trained.status_code == 202, trained.text
        Worker(settings).run(burst=True)
        assert c.get(f"/jobs/{trained.json()['id']}").json()["status"] == "succeeded"
        queued = c.post("/jobs", json={**body, "adapter": "later", "hyperparameters": HP})
        assert queued.status_code == 202, queued.text
    job_id = trained.json()["id"]
    return settings, State("sent", ds.json()["id"], [job_id, queued.json()["id"]], f"ft:tiny-bert:sent:{job_id}")


def _steer(case: schemathesis.Case, state: State, choice: int) -> None:
    """Point a positive case at something that exists (choice 1..3; 0 leaves it as generated).

    Random names almost never match, so without this /predict, /evaluate and the lookups would only
    ever answer 404/422. DELETE is left alone: it would remove the adapter the other cases use."""
    if choice == 0 or case.method.upper() == "DELETE":
        return
    params = case.path_parameters or {}
    if "name" in params:
        params["name"] = [state.adapter, f"{state.adapter}@v1", f"{state.adapter}@v9"][choice - 1]
    if "job_id" in params:
        # /events?stream=true follows a job until it ends: only the finished one (a queued job never ends here)
        params["job_id"] = state.jobs[0 if case.path.endswith("/events") else choice % len(state.jobs)]
    if "dataset_id" in params:
        params["dataset_id"] = state.dataset
    # the OpenAI face (/v1): the same job, dataset and adapter by their /v1 names
    if "fine_tuning_job_id" in params:
        params["fine_tuning_job_id"] = state.jobs[0 if case.path.endswith(("/events", "/checkpoints")) else choice % 2]
    if "file_id" in params:
        params["file_id"] = state.dataset
    if "model" in params:
        params["model"] = [state.model, "tiny-bert", f"{state.adapter}@v1"][choice - 1]
    body = case.body
    if isinstance(body, dict):
        if "adapter" in body and case.path in ("/predict", "/evaluate"):
            body["adapter"] = [state.adapter, f"{state.adapter}@v1", state.adapter][choice - 1]
        if "dataset" in body and choice == 2:
            body["dataset"] = state.dataset
        if "base_model" in body:
            body["base_model"] = "tiny-bert"
        if case.path == "/v1/chat/completions":
            body["model"] = state.model
        if "training_file" in body:
            body["training_file"], body["model"] = state.dataset, "tiny-bert"


def _run_operation(
    operation: Any, mode: GenerationMode, n: int, headers: dict, state: State, report: Report, seed: int
) -> int:
    """Up to `n` cases for one operation in one mode; returns how many were sent."""
    label = f"{operation.method.upper()} {operation.path}"
    sent = 0

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    @given(case=operation.as_strategy(generation_mode=mode), choice=st.integers(0, 3))
    def run(case: schemathesis.Case, choice: int) -> None:
        nonlocal sent
        if sent >= n:
            return
        if mode is GenerationMode.POSITIVE:
            _steer(case, state, choice)
        sent += 1
        report.cases[label] += 1
        try:
            response = case.call(headers=headers, timeout=CALL_TIMEOUT_S)
        except Exception as e:  # the app raised through the transport: as bad as a 5xx
            report.failures["exception"] += 1
            report.examples.setdefault(f"exception on {label}", f"{type(e).__name__}: {e}\n{_curl(case, headers)}")
            return
        report.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                kind = _kind(failure)
                report.failures[kind] += 1
                report.examples.setdefault(
                    f"{kind} on {label}",
                    f"{failure.title}: {failure.message[:600]}\n{_curl(case, headers)}\n"
                    f"-> {response.status_code} {response.text[:300]}",
                )

    try:
        run()
    except (hypothesis.errors.Unsatisfiable, schemathesis.errors.SchemathesisError) as e:
        # schemathesis could not build cases for this operation: the run fails (see Report.problems)
        report.errors.setdefault(f"{label} {mode.value}", f"{type(e).__name__}: {e}"[:600])
    return sent


def _has_inputs(operation: Any) -> bool:
    """Whether the operation takes anything a negative case could break: parameters (the API key header among
    them), or a body. GET /health takes nothing: every request to it is a valid one, so it is fuzzed in the
    positive mode only (asking schemathesis for a negative case of it raises Unsatisfiable)."""
    return any(
        len(part)
        for part in (operation.path_parameters, operation.query, operation.headers, operation.cookies, operation.body)
    )


def _kind(failure: Failure) -> str:
    return failure.checks[0] if failure.checks else type(failure).__name__


def _curl(case: schemathesis.Case, headers: dict) -> str:
    try:
        return case.as_curl_command(headers=headers)
    except Exception:  # pragma: no cover - only for the report
        return f"{case.method} {case.formatted_path} body={case.body!r}"[:600]


def fuzz(app: Any, state: State, headers: dict, cases: int, seed: int | None = None) -> Report:
    """At least `cases` generated cases over every operation (positive, and negative where it has inputs),
    unless the schema runs out of distinct cases. Budget rounds: each round shares what is left evenly over
    the slots still able to use it (rounded down, so every slot gets its share before the total is reached);
    what operations with few distinct cases (no inputs) cannot use goes to the others in the next round."""
    seed = random.randrange(2**32) if seed is None else seed
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    report = Report()
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            report.errors.setdefault(f"(schema) {type(result.err()).__name__}", str(result.err())[:600])
            continue
        op = result.ok()
        operations.append(op)
        report.operations.append(f"{op.method.upper()} {op.path}")
    t0 = time.perf_counter()
    slots = [(op, mode) for op in operations for mode in MODES if mode is GenerationMode.POSITIVE or _has_inputs(op)]
    round_no = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while slots and report.total < cases:
            per_slot = max(1, (cases - report.total) // len(slots))
            full = []
            for op, mode in slots:
                if report.total >= cases and round_no > 0:  # the first round visits every slot, whatever the count
                    break
                got = _run_operation(op, mode, per_slot, headers, state, report, seed + round_no)
                if got >= per_slot:
                    full.append((op, mode))
            slots, round_no = full, round_no + 1
    report.wall_s = time.perf_counter() - t0
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000, help="generated cases in all (at least)")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    ap.add_argument("--json", type=Path, default=None, help="also write the report here, as JSON")
    args = ap.parse_args()
    seed = random.randrange(2**32) if args.seed is None else args.seed
    from schemathesis.python import asgi

    from app.main import create_app

    with tempfile.TemporaryDirectory(prefix="peftserve-fuzz-") as tmp:
        t0 = time.perf_counter()
        settings, state = prepare(Path(tmp))
        print(f"schemathesis {schemathesis.__version__}, seed {seed}; state ready in {time.perf_counter() - t0:.1f} s")
        app = create_app(settings)
        try:
            report = fuzz(app, state, HEADERS, args.cases, seed)
        finally:
            asgi.shutdown_lifespans()
        print(report.summary())
    if args.json:
        args.json.write_text(json.dumps({"seed": seed, **report.as_json()}, indent=2))
    if report.problems:
        raise SystemExit("fuzz FAILED: " + "; ".join(report.problems))
    print("fuzz passed: every operation exercised, no failed check, no schemathesis error")


if __name__ == "__main__":
    main()
