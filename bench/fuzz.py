"""Fuzz the HTTP API from its own OpenAPI document (schemathesis), in process over ASGI.

    make bench-fuzz        (or: python -m bench.fuzz [--cases 1000] [--seed N])

Builds the tiny test models in a temporary folder, uploads a dataset and trains one adapter with an in-process
burst worker (so /predict, /evaluate and the job routes reach real code), leaves one job queued (workers=0:
POST /jobs only queues), then generates cases for every operation of `/openapi.json`, positive and negative,
sends each with an admin key and checks: no 5xx, the status code is documented, the content type and the body
match the documented response. Prints the cases per operation, the total, the failures by check, wall time.
`tests/test_fuzz.py` runs the same harness with a small count.
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
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
CALL_TIMEOUT_S = 30  # a call that takes longer is reported (an event stream that never ends, a hang)
HP = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "target_modules": ["query", "value"]}


@dataclass
class State:
    """What exists before fuzzing starts: generated cases are steered onto these some of the time."""

    adapter: str
    dataset: str
    jobs: list[str]


@dataclass
class Report:
    cases: Counter = field(default_factory=Counter)  # "METHOD /path" -> cases sent
    statuses: Counter = field(default_factory=Counter)  # status code -> responses
    failures: Counter = field(default_factory=Counter)  # check (failure kind) -> failing cases
    examples: dict[str, str] = field(default_factory=dict)  # "check on operation" -> one failing case
    wall_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def summary(self) -> str:
        width = max(len(op) for op in self.cases)
        lines = [f"{op.ljust(width)}  {n:5d}" for op, n in sorted(self.cases.items())]
        lines.append(f"{'total'.ljust(width)}  {self.total:5d} cases in {self.wall_s:.1f} s")
        lines.append("statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())))
        if self.failures:
            lines.append("failures by check: " + ", ".join(f"{k}: {n}" for k, n in sorted(self.failures.items())))
            lines += [f"--- {k}\n{v}" for k, v in sorted(self.examples.items())]
        else:
            lines.append("failures by check: none")
        return "\n".join(lines)


def prepare(root: Path, models: dict[str, Path] | None = None) -> tuple[Any, State]:
    """Settings with the test keys over the tiny models (built under `root` unless given), a dataset, a
    trained adapter and a queued job."""
    from fastapi.testclient import TestClient

    from app.jobs.worker import Worker
    from app.main import create_app
    from tests.conftest import ADMIN_HEADERS, make_settings
    from tests.tiny import build_bert, build_llama, toy_sentiment

    if models is None:
        models = {
            "tiny-bert": build_bert(root / "models" / "bert"),
            "tiny-llama": build_llama(root / "models" / "llama"),
        }
    settings = make_settings(root, models)
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as c:
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
    return settings, State("sent", ds.json()["id"], [trained.json()["id"], queued.json()["id"]])


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
    body = case.body
    if isinstance(body, dict):
        if "adapter" in body and case.path in ("/predict", "/evaluate"):
            body["adapter"] = [state.adapter, f"{state.adapter}@v1", state.adapter][choice - 1]
        if "dataset" in body and choice == 2:
            body["dataset"] = state.dataset
        if "base_model" in body:
            body["base_model"] = "tiny-bert"


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
        # e.g. no negative case exists for an operation without inputs
        report.examples.setdefault(f"(not generated) {label} {mode.value}", f"{type(e).__name__}: {e}"[:300])
    return sent


def _kind(failure: Failure) -> str:
    return failure.checks[0] if failure.checks else type(failure).__name__


def _curl(case: schemathesis.Case, headers: dict) -> str:
    try:
        return case.as_curl_command(headers=headers)
    except Exception:  # pragma: no cover - only for the report
        return f"{case.method} {case.formatted_path} body={case.body!r}"[:600]


def fuzz(app: Any, state: State, headers: dict, cases: int, seed: int | None = None) -> Report:
    """At least `cases` generated cases over every operation (positive and negative), unless the schema
    runs out of distinct cases. Budget rounds: what operations without inputs cannot use goes to the others."""
    seed = random.randrange(2**32) if seed is None else seed
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations()]
    report = Report()
    t0 = time.perf_counter()
    slots = [(op, mode) for op in operations for mode in MODES]
    round_no = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while slots and report.total < cases:
            per_slot = max(1, -(-(cases - report.total) // len(slots)))
            full = []
            for op, mode in slots:
                if report.total >= cases:
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
    args = ap.parse_args()
    seed = random.randrange(2**32) if args.seed is None else args.seed
    from schemathesis.python import asgi

    from app.main import create_app
    from tests.conftest import ADMIN_HEADERS

    with tempfile.TemporaryDirectory(prefix="peftserve-fuzz-") as tmp:
        t0 = time.perf_counter()
        settings, state = prepare(Path(tmp))
        print(f"schemathesis {schemathesis.__version__}, seed {seed}; state ready in {time.perf_counter() - t0:.1f} s")
        app = create_app(settings)
        try:
            report = fuzz(app, state, ADMIN_HEADERS, args.cases, seed)
        finally:
            asgi.shutdown_lifespans()
        print(report.summary())
    raise SystemExit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
