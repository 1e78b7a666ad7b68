"""Integration: the real packaged bases (`minilm`, `smollm2-135m`) and real labelled data from ../shared/data."""

from __future__ import annotations

import json
import random

import pytest

from app.jobs.worker import Worker
from app.schemas import EvaluateRequest, JobCreate, PredictRequest
from app.service import PeftServe
from tests.support import make_settings, shared_data

pytestmark = pytest.mark.integration


def load(name: str, n: int, seed: int = 0) -> list[dict]:
    with shared_data(name).open(encoding="utf-8") as f:  # not splitlines(): texts hold U+2028 and friends
        rows = [json.loads(line) for line in f if line.strip()]
    random.Random(seed).shuffle(rows)
    return rows[:n]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    # The product's precision defaults (bf16 where the CPU has it), unlike the exact unit tests.
    return make_settings(tmp_path_factory.mktemp("integration"), {}, inference_dtype="auto", training_dtype="auto")


def train(settings, adapter, base_model, train_rows, val_rows, **hp):
    svc = PeftServe(settings)
    job = svc.submit_job(
        JobCreate(
            adapter=adapter,
            base_model=base_model,
            train={"records": train_rows},
            validation={"records": val_rows},
            hyperparameters=hp,
        )
    )
    Worker(settings).run(burst=True)
    done = svc.store.get_job(job.id)
    assert done.status == "succeeded", done.error_message
    return svc, done


def test_minilm_on_movie_snippets_clearly_beats_chance(settings):
    train_rows = load("rt_movie_snippets.train.jsonl", 1200)
    test_rows = load("rt_movie_snippets.test.jsonl", 800)
    svc, job = train(settings, "rt", "minilm", train_rows, test_rows[:300], epochs=2)
    ev = svc.evaluate(EvaluateRequest(adapter="rt", records=test_rows[300:]))
    # balanced binary task: chance is 0.5
    assert ev.accuracy >= 0.68 and ev.f1_macro >= 0.66, ev
    assert job.result_metrics["train_samples_per_second"] > 0
    pred = svc.predict(
        PredictRequest(adapter="rt", inputs=["A moving, beautifully acted film.", "A tedious, joyless mess."])
    )
    assert [p.label for p in pred.predictions] == ["positive", "negative"]


def test_minilm_on_imbalanced_sms_spam(settings):
    train_rows = load("sms_spam.train.jsonl", 800)
    test_rows = load("sms_spam.test.jsonl", 600)
    svc, _ = train(settings, "spam", "minilm", train_rows, test_rows[:200], epochs=2)
    ev = svc.evaluate(EvaluateRequest(adapter="spam", records=test_rows[200:]))
    majority = max(sum(r["label"] == lab for r in test_rows[200:]) for lab in ev.labels) / len(test_rows[200:])
    assert ev.accuracy > majority + 0.03 and ev.f1_macro >= 0.75, ev  # majority-class f1_macro is < 0.5


def test_smollm2_gguf_base_converts_trains_and_serves(settings):
    train_rows = load("rt_movie_snippets.train.jsonl", 96, seed=1)
    val_rows = load("rt_movie_snippets.test.jsonl", 32, seed=1)
    svc, job = train(settings, "rt-smol", "smollm2-135m", train_rows, val_rows, epochs=1, max_length=64)
    assert (settings.model_cache_dir / "smollm2-135m" / "model.safetensors").exists()
    meta = svc.adapters.resolve("rt-smol").meta
    assert meta["heads"] == ["score"] and meta["base_model"] == "smollm2-135m"
    pred = svc.predict(PredictRequest(adapter="rt-smol", inputs=["Great fun.", "Dull."]))
    assert len(pred.predictions) == 2 and set(pred.predictions[0].scores) == {"negative", "positive"}
