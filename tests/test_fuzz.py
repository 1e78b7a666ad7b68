"""Schema-driven fuzzing of the whole API: no 5xx, every status code, content type and body as documented in
/openapi.json, every operation exercised. `python -m bench.fuzz` (schemathesis over ASGI, in its own process; the
bench runs 1,000+ cases with a new seed each time) here with fewer cases and a fixed seed; and schemathesis's own
CLI with every check (`-c all`, which also asks that every request the document calls valid is accepted) against
a live server, with a new seed each run."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ADMIN_KEY, tiny_server

ROOT = Path(__file__).resolve().parents[1]
CASES = 200
SEED = 20240501  # fixed here so CI is reproducible; the bench draws a new seed each run
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


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


@pytest.mark.e2e
def test_schemathesis_cli_with_every_check_finds_nothing_on_a_live_server(tmp_path, tiny_models):
    """The command a user would run. tests/schemathesis.toml names the operations that judge a file's contents or
    cross-field counts no schema can state; everything else must be accepted exactly when the document says."""
    seed = random.randrange(1_000_000)
    with tiny_server(tmp_path, tiny_models, workers=0) as server:
        cmd = [str(SCHEMATHESIS), "--config-file", str(ROOT / "tests" / "schemathesis.toml"), "run"]
        cmd += [f"{server.url}/openapi.json", "-c", "all", "--max-examples", "15", "--seed", str(seed)]
        cmd += ["-H", f"Authorization: Bearer {ADMIN_KEY}", "--report", "junit", "--report-dir", str(tmp_path)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(out.stdout[-3000:])
    assert out.returncode == 0, f"seed {seed} (rerun with --seed {seed}):\n" + out.stdout[-8000:] + out.stderr[-2000:]
    selected, tested = re.search(r"Selected: \d+/(\d+)", out.stdout), re.search(r"Tested: (\d+)", out.stdout)
    assert selected and tested and int(tested[1]) == int(selected[1]) >= 30, out.stdout[-3000:]  # every operation
