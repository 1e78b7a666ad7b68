"""The real training path (worker → trainer → adapter store) on tiny models built from config."""

import threading
import time

import pytest
import torch

from app.base_models.tiny import toy_sentiment, toy_topic
from app.jobs.worker import Worker
from app.service import PeftServe
from tests.support import make_settings, submit


def run_all(settings) -> Worker:
    worker = Worker(settings)
    worker.run(burst=True)
    return worker


def test_job_trains_saves_and_reports(settings):
    svc = PeftServe(settings)
    job = submit(svc, "sent", toy_sentiment(200))
    run_all(settings)
    done = svc.store.get_job(job.id)
    assert done.status == "succeeded", done.error_message
    assert done.result_adapter == "sent@v1"
    assert done.step == done.total_steps > 0
    m = svc.job_metrics(job.id)
    assert len(m.train) >= 4 and all(p.loss is not None and p.learning_rate is not None for p in m.train)
    assert [round(p.epoch) for p in m.eval] == list(range(1, 16))
    assert m.summary["accuracy"] >= 0.75, m.summary  # 20 held-out toy rows, chance is 0.5
    files = sorted(p.name for p in (settings.adapters_dir / "sent" / "v1").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "peftserve.json"]
    meta = svc.adapters.resolve("sent").meta
    assert meta["labels"] == ["neg", "pos"] and meta["job_id"] == job.id and meta["base_model"] == "tiny-bert"
    kinds = [e.type for e in svc.store.events(job.id)]
    assert "metrics" in kinds
    # 20 validation rows: the result says they are too few to judge on, and what to do (an event too)
    (warning,) = done.result_warnings
    assert warning.startswith("validation has only 20 rows") and "validation file" in warning
    assert any(e.level == "warning" and e.message == f"Warning: {warning}" for e in svc.store.events(job.id))
    assert sum(m.summary["predicted"].values()) == 20 and len(m.summary["predicted"]) == 2


def test_base_is_shared_and_left_clean_between_jobs(settings):
    svc = PeftServe(settings)
    submit(svc, "first", toy_sentiment(48), epochs=1)
    worker = Worker(settings)
    worker.run(burst=True)
    base = worker.base
    before = {k: v.clone() for k, v in base.model.state_dict().items() if "classifier" not in k}
    submit(svc, "second", toy_topic(48), epochs=1)  # other label count, same loaded base
    worker.run(burst=True)
    assert worker.base is base  # not reloaded
    after = {k: v for k, v in base.model.state_dict().items() if "classifier" not in k}
    assert after.keys() == before.keys()  # no LoRA layers left behind
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen weights untouched
    assert svc.adapters.resolve("second").meta["labels"] == ["neg", "pos", "sport"]


def test_tiny_llama_trains(settings):
    svc = PeftServe(settings)
    job = submit(svc, "dec", toy_sentiment(48), base_model="tiny-llama", epochs=1)
    run_all(settings)
    assert svc.store.get_job(job.id).status == "succeeded"
    assert svc.adapters.resolve("dec").meta["heads"] == ["score"]


@pytest.mark.parametrize(("quantization", "layer"), [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantized_on_cpu_through_the_real_path(tmp_path, tiny_models, quantization, layer):
    settings = make_settings(tmp_path, tiny_models, quantization=quantization)
    svc = PeftServe(settings)
    job = submit(svc, "q", toy_sentiment(64), epochs=2)
    worker = run_all(settings)
    done = svc.store.get_job(job.id)
    assert done.status == "succeeded", done.error_message
    import bitsandbytes as bnb

    assert any(isinstance(m, getattr(bnb.nn, layer)) for m in worker.base.model.modules())
    assert svc.adapters.resolve("q").meta["quantization"] == quantization
    from app.schemas import PredictRequest

    out = svc.predict(PredictRequest(adapter="q", inputs=["good film", "awful plot"]))
    assert out.adapter == "q@v1" and all(abs(sum(p.scores.values()) - 1) < 1e-4 for p in out.predictions)


def worker_in_thread(settings, until, burst: bool = True) -> tuple[Worker, threading.Thread]:
    """A worker running in a thread (draining the queue in burst mode), returned once `until()` holds (60 s at
    most)."""
    worker = Worker(settings)
    t = threading.Thread(target=worker.run, kwargs={"burst": burst})
    t.start()
    deadline = time.monotonic() + 60
    while not until() and time.monotonic() < deadline:
        time.sleep(0.05)
    return worker, t


def test_cancel_stops_a_running_job_promptly(settings):
    svc = PeftServe(settings)
    job = submit(svc, "long", toy_sentiment(400), epochs=100, batch_size=4)
    _, t = worker_in_thread(settings, lambda: svc.store.get_job(job.id).step >= 3)
    asked = time.monotonic()
    svc.store.request_cancel(job.id)
    t.join(30)
    assert not t.is_alive()
    done = svc.store.get_job(job.id)
    assert done.status == "cancelled" and done.step < done.total_steps
    assert time.monotonic() - asked < 10
    assert svc.adapters.names() == []  # nothing half-saved


def test_shutdown_returns_the_job_to_the_queue(settings):
    svc = PeftServe(settings)
    job = submit(svc, "long", toy_sentiment(400), epochs=100, batch_size=4)
    worker, t = worker_in_thread(settings, lambda: svc.store.get_job(job.id).step >= 3, burst=False)
    worker.stopping.set()
    t.join(30)
    again = svc.store.get_job(job.id)
    assert again.status == "queued" and again.step >= 3 and again.attempts == 0  # not an attempt used up
    assert (settings.checkpoints_dir / job.id / "checkpoint.pt").exists()  # the next worker resumes from it


def test_a_paused_job_checkpoints_frees_its_worker_and_resumes_where_it_stopped(settings):
    svc = PeftServe(settings)
    job = submit(svc, "long", toy_sentiment(200), epochs=4, batch_size=4)
    _, t = worker_in_thread(settings, lambda: svc.store.get_job(job.id).step >= 3)
    svc.store.request_pause(job.id)
    t.join(30)
    assert not t.is_alive()  # the worker is free: burst mode found nothing more to do
    paused = svc.store.get_job(job.id)
    assert paused.status == "paused" and 3 <= paused.step < paused.total_steps and paused.attempts == 0
    assert (settings.checkpoints_dir / job.id / "checkpoint.pt").exists()
    Worker(settings).sweep_checkpoints()
    assert (settings.checkpoints_dir / job.id / "checkpoint.pt").exists()  # a paused job's checkpoint is kept
    svc.store.resume(job.id)
    run_all(settings)
    done = svc.store.get_job(job.id)
    assert done.status == "succeeded", done.error_message
    assert svc.adapters.resolve("long").meta["metrics"]["resumed_from_steps"] == [paused.step]


def test_each_epoch_keeps_a_servable_adapter_the_newest_few_only(tmp_path, tiny_models):
    settings = make_settings(tmp_path, tiny_models, epoch_checkpoints=2)
    svc = PeftServe(settings)
    rows = toy_sentiment(40)
    job = submit(svc, "ep", rows, epochs=3, batch_size=8)
    run_all(settings)
    assert svc.store.get_job(job.id).status == "succeeded"
    kept = svc.resources.epochs.list(job.id)
    assert [v.version for v in kept] == [10, 15]  # the last two epochs' ends (36 rows: 5 steps an epoch)
    assert [v.meta["epoch"] for v in kept] == [2, 3]
    figures = kept[-1].meta["metrics"]
    assert set(figures) == {"train_loss", "valid_loss", "valid_accuracy", "valid_f1_macro"}
    eval_points = [p for p in svc.store.metrics(job.id) if p.kind == "eval"]
    assert figures["valid_accuracy"] == round(eval_points[-1].values["accuracy"], 6)
    # served like any version, by whatever name the caller gives it
    from dataclasses import replace

    version = replace(kept[0], alias="ep-checkpoint-8")
    (answered, future), *_ = svc.engine.submit_each([version], ["good film", "awful plot"])
    assert answered.ref == "ep-checkpoint-8" and future.result().shape == (2, 2)
    # a cancelled job keeps none
    cancelled = submit(svc, "gone", rows, epochs=50, batch_size=8)
    _, t = worker_in_thread(settings, lambda: bool(svc.resources.epochs.list(cancelled.id)))
    assert svc.resources.epochs.list(cancelled.id)
    svc.store.request_cancel(cancelled.id)
    t.join(30)
    assert svc.store.get_job(cancelled.id).status == "cancelled"
    assert svc.resources.epochs.list(cancelled.id) == []


def test_the_sweep_removes_epoch_checkpoints_of_jobs_that_ended_without_a_worker(settings):
    svc = PeftServe(settings)
    kept, cancelled = submit(svc, "a", toy_sentiment(20)), submit(svc, "b", toy_sentiment(20))

    def write(folder):
        (folder / "adapter_config.json").write_text("{}")
        (folder / "adapter_model.safetensors").write_bytes(b"x")

    for job in (kept, cancelled):
        svc.resources.epochs.save(job.id, 5, write, {"epoch": 1})
    svc.store.request_pause(cancelled.id)
    svc.store.request_cancel(cancelled.id)  # a paused job cancels with no worker involved
    Worker(settings).sweep_checkpoints()
    assert [v.version for v in svc.resources.epochs.list(kept.id)] == [5]  # a live job keeps its own
    assert svc.resources.epochs.list(cancelled.id) == [] and svc.resources.epochs.job_ids() == [kept.id]


def test_bad_target_modules_fail_the_job_with_a_clear_error(settings):
    svc = PeftServe(settings)
    job = submit(svc, "x", toy_sentiment(20), target_modules=["no_such_module"])
    good = submit(svc, "y", toy_sentiment(20), epochs=1)
    run_all(settings)  # one worker: the failed job, then a good one on a fresh base
    done = svc.store.get_job(job.id)
    assert done.status == "failed" and done.error_code == "invalid_hyperparameters"
    assert "no_such_module" in done.error_message
    assert svc.store.get_job(good.id).status == "succeeded"


@pytest.mark.parametrize("seed", [3])
def test_training_is_seeded(tmp_path, tiny_models, seed):
    results = []
    for run in range(2):
        settings = make_settings(tmp_path / str(run), tiny_models)
        svc = PeftServe(settings)
        submit(svc, "s", toy_sentiment(32), epochs=1, seed=seed)
        run_all(settings)
        results.append(svc.adapters.resolve("s").meta["metrics"]["train_loss"])
    assert results[0] == results[1]


def test_early_stopping_keeps_the_best_epoch(settings):
    svc = PeftServe(settings)
    # A learning rate this high stops improving after a few epochs; patience 1 ends the run there.
    job = submit(svc, "es", toy_sentiment(120), epochs=30, early_stopping_patience=1, learning_rate=5e-2)
    run_all(settings)
    done = svc.store.get_job(job.id)
    assert done.status == "succeeded", done.error_message
    m = svc.job_metrics(job.id)
    assert len(m.eval) < 30 and done.step == done.total_steps  # stopped early, and reads as complete
    best = max(m.eval, key=lambda e: e.f1_macro)
    assert m.eval[-1].step > best.step  # it ran on past the best epoch, then gave up
    meta = svc.adapters.resolve("es").meta["metrics"]
    assert meta["best_step"] == best.step and meta["f1_macro"] == pytest.approx(best.f1_macro, abs=1e-6)
    assert any("Early stop" in e.message for e in svc.store.events(job.id))


def test_class_weighting_lifts_the_minority_class(settings):
    svc = PeftServe(settings)
    rows = toy_sentiment(200)
    pos = [r for r in rows if r["label"] == "pos"]
    skewed = [r for r in rows if r["label"] == "neg"] + pos[:12]  # ~11% positive, like SMS spam
    val = {"records": [r for r in toy_sentiment(80, seed=5)]}
    recalls = {}
    for mode in ("none", "balanced"):
        # a balanced validation set, so the epoch kept is the one that tells the classes apart best (a split
        # of the skewed rows holds one or two positives, and every epoch ties on it)
        submit(
            svc, f"w-{mode}", skewed, validation=val["records"], epochs=3, class_weighting=mode,
            target_modules=["query", "value"],
        )  # fmt: skip
        run_all(settings)
        _, probs = svc.engine.predict(f"w-{mode}", [r["text"] for r in val["records"]])
        labels = svc.adapters.resolve(f"w-{mode}").labels
        pred = [labels[i] for i in probs.argmax(-1).tolist()]
        truth = [r["label"] for r in val["records"]]
        recalls[mode] = sum(p == t == "pos" for p, t in zip(pred, truth, strict=True)) / truth.count("pos")
    assert recalls["balanced"] > recalls["none"], recalls


@pytest.mark.parametrize("base_model", ["tiny-bert", "tiny-llama"])
def test_bf16_training_on_a_bf16_base(tmp_path, tiny_models, base_model):
    settings = make_settings(tmp_path, tiny_models, training_dtype="bfloat16")
    svc = PeftServe(settings)
    job = submit(svc, "b", toy_sentiment(200), base_model=base_model)
    run_all(settings)
    done = svc.store.get_job(job.id)
    assert done.status == "succeeded", done.error_message
    metrics = svc.adapters.resolve("b").meta["metrics"]
    assert metrics["precision"] == "bf16" and metrics["accuracy"] >= 0.75, metrics
    # Saved LoRA weights and head are fp32 (the optimizer's master copy), loadable anywhere.
    from safetensors.torch import load_file

    state = load_file(str(svc.adapters.resolve("b").weights))
    assert {t.dtype for t in state.values()} == {torch.float32}


@pytest.mark.parametrize(
    ("dtype", "eager_up_to", "attention", "casts"),
    [
        ("bfloat16", 256, "eager", False),  # bf16 on CPU, short rows: eager attention, no fp32 input copies
        ("bfloat16", 64, "sdpa", False),  # rows longer than eager pays for (tiny-bert takes 128): sdpa stays
        ("float32", 256, "sdpa", True),  # fp32: nothing to cast, sdpa as fast as eager
    ],
)
def test_fast_paths_hold_for_the_run_and_leave_the_base_as_it_was(
    tmp_path, tiny_models, monkeypatch, dtype, eager_up_to, attention, casts
):
    import app.training.trainer as trainer
    from app.training.loop import TrainingRun

    monkeypatch.setattr(trainer, "EAGER_ATTENTION_MAX_TOKENS", eager_up_to)
    seen = {}
    run = TrainingRun.run

    def spy(self, *args):
        seen["attention"] = self.base.model.config._attn_implementation
        seen["casts"] = {m.cast_input_dtype_enabled for m in self.model.modules() if hasattr(m, "lora_A")}
        return run(self, *args)

    monkeypatch.setattr(TrainingRun, "run", spy)
    settings = make_settings(tmp_path, tiny_models, training_dtype=dtype)
    svc = PeftServe(settings)
    job = submit(svc, "f", toy_sentiment(48), epochs=1)
    worker = run_all(settings)
    assert svc.store.get_job(job.id).status == "succeeded"
    assert seen == {"attention": attention, "casts": {casts}}
    assert worker.base.model.config._attn_implementation == "sdpa"  # the shared base is as it was loaded


def test_default_targets_every_linear_but_the_head(settings):
    import json

    svc = PeftServe(settings)
    submit(svc, "all", toy_sentiment(48), epochs=1, target_modules=None)
    run_all(settings)
    version = svc.adapters.resolve("all")
    config = json.loads((version.path / "adapter_config.json").read_text())
    leaves = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert leaves == {"query", "key", "value", "dense"}  # "dense": attention out, FFN in/out, pooler
    _, probs = svc.engine.predict("all", ["good film"])  # the engine serves every targeted Linear
    assert len(svc.engine.cache.bases["tiny-bert"].bank.layers) == 13  # 2 layers x 6 + the pooler
