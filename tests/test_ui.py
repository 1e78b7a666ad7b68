"""The /ui dashboard in a real browser (Debian's chromium through playwright) against a real server process.

Skipped with a reason where /usr/bin/chromium or playwright is absent; never downloads a browser.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from app.base_models.tiny import toy_sentiment
from tests.support import ADMIN_HEADERS, ADMIN_KEY, post_job, tiny_server, wait_job

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"  # gitignored
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
FAST = {"batch_size": 8, "learning_rate": 0.01, "early_stopping_patience": 0, "target_modules": ["query", "value"]}


@pytest.fixture
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


def points(page, chart: str) -> int:
    return int(page.get_attribute(f'[data-chart="{chart}"]', "data-points") or 0)


def wait_points(page, chart: str, more_than: int = 0, timeout: float = 30) -> int:
    page.wait_for_function(
        '([name, n]) => Number(document.querySelector(`[data-chart="${name}"]`)?.dataset.points || 0) > n',
        arg=[chart, more_than],
        timeout=timeout * 1000,
    )
    return points(page, chart)


def test_dashboard_jobs_charts_live_updates_and_try_it(tmp_path, tiny_models, browser):
    srv = tiny_server(tmp_path, tiny_models).start()
    try:
        with httpx.Client(base_url=srv.url, headers=ADMIN_HEADERS, timeout=60) as c:
            body = {"adapter": "sent", "train": {"records": toy_sentiment(120)}}
            done = post_job(c, {**body, "hyperparameters": {**FAST, "epochs": 4}}).json()["id"]
            assert wait_job(c, done)["status"] == "succeeded"
            long_body = {"adapter": "long", "train": {"records": toy_sentiment(400)}}
            running = post_job(c, {**long_body, "hyperparameters": {**FAST, "epochs": 100, "batch_size": 2}}).json()
            wait_job(c, running["id"], until=("running",), timeout=60)

            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{srv.url}/ui")  # redirects to /ui/
            assert page.url.endswith("/ui/")
            page.fill("#key-input", ADMIN_KEY)  # no key stored yet: the page asks for one
            page.click("#key-form button[type=submit]")
            page.wait_for_selector(f'#jobs a[href="#/jobs/{done}"]')
            assert page.locator("#jobs tr[data-status=running] .bar").count() == 1
            assert page.evaluate("localStorage.getItem('peftserve.apiKey')") == ADMIN_KEY
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "ui-jobs.png"))

            # The finished job: every chart has its points, drawn on canvases.
            page.goto(f"{srv.url}/ui/#/jobs/{done}")
            for chart in ("loss", "lr", "eval"):
                assert wait_points(page, chart) > 0, chart
            assert page.locator("[data-chart] canvas").count() >= 3
            assert points(page, "eval") == 4  # one per epoch
            page.wait_for_selector("#events div")
            assert "succeeded" in page.inner_text("#summary")

            # The running job: its charts gain points while it trains (SSE-driven refresh).
            page.goto(f"{srv.url}/ui/#/jobs/{running['id']}")
            first = wait_points(page, "loss")
            later = wait_points(page, "loss", more_than=first, timeout=60)
            assert later > first
            assert "running" in page.inner_text("#summary") and page.locator("#hp td").count() > 0
            page.wait_for_selector("#summary [data-eta]", timeout=30_000)  # estimated_finish, from the step time
            page.screenshot(path=str(ARTIFACTS / "ui-job.png"), full_page=True)
            # Pause it from the page (it checkpoints and frees its worker), then resume it.
            page.click("#summary #pause")
            page.wait_for_selector("#summary .badge.paused", timeout=30_000)
            assert page.locator("#summary #resume").count() == 1 and page.locator("#summary #pause").count() == 0
            page.click("#summary #resume")
            page.wait_for_selector("#summary .badge.running", timeout=30_000)
            assert wait_job(c, running["id"], until=("running",))["status"] == "running"

            # Jobs table, adapters list, try it, evaluate.
            page.goto(f"{srv.url}/ui/#/adapters")
            page.wait_for_selector("text=sent@v1")
            page.goto(f"{srv.url}/ui/#/try?adapter=sent")
            page.fill("#inputs", "a lovely superb film\nawful and dull")
            page.click("#try button[type=submit]")
            page.wait_for_selector(".prediction .score")
            assert page.locator(".prediction").count() == 2
            assert sorted(
                page.locator(".prediction").first.locator(".score").evaluate_all("els => els.map(e => e.dataset.label)")
            ) == ["neg", "pos"]
            page.screenshot(path=str(ARTIFACTS / "ui-try.png"), full_page=True)

            # Leaving a screen before it has loaded: the adapter list is held back 1 s, and the user moves on
            # to Jobs meanwhile. Jobs must stay (the Try it form must not land on it late).
            def slow(route):
                time.sleep(1.0)
                route.continue_()

            page.route("**/adapters", slow)
            page.goto(f"{srv.url}/ui/#/try")
            page.evaluate("location.hash = '#/jobs'")
            page.wait_for_selector("#jobs tbody tr")
            page.wait_for_timeout(2000)
            assert page.inner_text("#view h1") == "Jobs" and page.locator("#try").count() == 0
            page.unroute("**/adapters", slow)

            page.goto(f"{srv.url}/ui/#/evaluate?adapter=sent")
            page.fill("#records", "\n".join(json.dumps(r) for r in toy_sentiment(20, seed=5)))
            page.click("#evaluate button[type=submit]")
            page.wait_for_selector(".confusion td")
            assert page.locator(".confusion td").count() == 4  # 2 labels x 2
            page.screenshot(path=str(ARTIFACTS / "ui-evaluate.png"), full_page=True)

            # A failing call shows the error envelope's message; a bad key asks for a key again.
            page.fill("#records", '{"text": "x", "label": "nope"}')
            page.click("#evaluate button[type=submit]")
            page.wait_for_selector("#error:not([hidden])")
            assert "nope" in page.inner_text("#error")
            page.evaluate("localStorage.setItem('peftserve.apiKey', 'wrong-key-0123456789')")
            page.goto(f"{srv.url}/ui/#/jobs")
            page.wait_for_selector("#key-form:not([hidden])")
            assert "API key" in page.inner_text("#error")
            page.close()
            c.post(f"/jobs/{running['id']}/cancel")
    finally:
        srv.stop()


def test_a_first_visit_asks_for_the_key_then_a_new_job_from_an_upload(tmp_path, tiny_models, browser):
    """The "New job" page: upload a file, see the label counts and warnings the server's figures call for, set
    a few hyperparameters (their defaults shown), submit, land on the job's live page, which names its dataset,
    the epoch it kept and why, and its warnings."""
    srv = tiny_server(tmp_path, tiny_models).start()
    try:
        rows = toy_sentiment(60)
        data = tmp_path / "reviews.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        page = browser.new_page(viewport={"width": 1280, "height": 1200})
        page.goto(f"{srv.url}/ui/#/new")
        page.wait_for_selector("#key-form:not([hidden])")
        assert page.is_hidden("#error")  # no raw 401 message: the page asks for the key and calls nothing
        page.fill("#key-input", ADMIN_KEY)
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#new-job")
        assert page.get_attribute("#hp-epochs", "placeholder") == "3"  # defaults, from the API's document
        page.set_input_files("#file", str(data))
        page.wait_for_selector("#label-counts tr")
        counts = page.inner_text("#label-counts")
        assert "neg" in counts and "pos" in counts and "30" in counts
        assert "60 rows in all" in page.inner_text("#preview [data-warning]")
        assert page.locator("#first-rows tbody tr").count() == 5
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui-new-job.png"), full_page=True)
        page.fill("#adapter", "from-the-page")
        page.select_option("#base", "tiny-bert")
        page.fill("#hp-epochs", "3")
        page.fill("#hp-learning_rate", "0.01")
        page.fill("#hp-batch_size", "8")
        page.fill("#hp-target_modules", "query, value")
        page.click("#new-job button[type=submit]")
        page.wait_for_url("**/ui/#/jobs/job_*")
        job_id = page.url.rsplit("/", 1)[1]
        page.wait_for_selector("#summary .badge.succeeded", timeout=120_000)
        summary = page.inner_text("#summary")
        assert "trained on ds_" in summary and "validated on 10% of it" in summary
        assert "kept the weights of step" in summary and page.locator("#summary [data-warning]").count() >= 1
        page.screenshot(path=str(ARTIFACTS / "ui-new-job-done.png"), full_page=True)
        with httpx.Client(base_url=srv.url, headers=ADMIN_HEADERS, timeout=30) as c:
            job = c.get(f"/jobs/{job_id}").json()
            assert job["hyperparameters"]["epochs"] == 3 and job["hyperparameters"]["target_modules"] == [
                "query",
                "value",
            ]
            assert job["base_model"] == "tiny-bert" and job["adapter"] == "from-the-page"

            # Compare runs: a second version with another learning rate, both ticked on the Jobs page.
            other = post_job(
                c,
                {
                    "adapter": "from-the-page",
                    "train": {"dataset": job["train_dataset"]},
                    "hyperparameters": {**FAST, "epochs": 3, "learning_rate": 0.002},
                },
            ).json()["id"]
            assert wait_job(c, other)["status"] == "succeeded"
        page.goto(f"{srv.url}/ui/#/jobs")
        for ticked in (job_id, other):
            page.check(f'[data-compare="{ticked}"]')
        page.click("#compare")
        page.wait_for_url("**/ui/#/compare?jobs=*")
        for key in ("accuracy", "f1_macro", "loss"):
            assert wait_points(page, f"cmp-{key}") == 3, key  # the union of the runs' epochs
        differs = page.locator("#compare-hp tr[data-differs] th").all_inner_texts()
        assert "learning_rate" in differs and "epochs" not in differs and "base model" not in differs
        page.screenshot(path=str(ARTIFACTS / "ui-compare.png"), full_page=True)
        page.goto(f"{srv.url}/ui/#/adapters")  # all versions of one adapter: one link
        page.click("text=compare versions")
        page.wait_for_selector("#compare-hp tr[data-differs]")
        page.close()
    finally:
        srv.stop()
