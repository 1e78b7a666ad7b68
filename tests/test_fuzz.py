"""Schema-driven fuzzing of the whole API (schemathesis over ASGI): no 5xx, every status code, content type and
body as documented in /openapi.json, every operation exercised. `python -m bench.fuzz` in its own process (the
bench runs 1,000+ cases with a new seed each time), here with fewer cases and a fixed seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = 200
SEED = 20240501  # fixed here so CI is reproducible; the bench draws a new seed each run


def test_generated_cases_get_documented_answers_and_no_5xx(tmp_path):
    cmd = [sys.executable, "-m", "bench.fuzz", "--cases", str(CASES), "--seed", str(SEED)]
    out = subprocess.run([*cmd, "--json", str(tmp_path / "report.json")], cwd=ROOT, capture_output=True, text=True)
    print(out.stdout)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["total"] >= CASES
    assert len(report["operations"]) >= 16, report["operations"]  # the document lists them all
    assert all(report["cases"].get(op) for op in report["operations"]), report["cases"]  # each one exercised
    assert report["missing"] == [] and report["errors"] == {} and report["failures"] == {}, report["problems"]
    statuses = {int(k): v for k, v in report["statuses"].items()}
    assert not any(status >= 500 for status in statuses), statuses
    assert statuses.get(200) and statuses.get(404) and statuses.get(422), statuses
