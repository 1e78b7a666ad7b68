"""Several jobs trained together on one base (app/training/fused.py), on the tiny BERT built from config: each
job starts exactly as it would alone, its rows go through its own LoRA layers and head, it saves what peft
saves, it leaves alone when it ends or is stopped, a checkpoint of either kind resumes in the other, and the
base is left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.base_models.loading import LoadedBase, load_base, new_head
from app.base_models.registry import ResolvedModel
from app.base_models.tiny import toy_multilabel, toy_sentiment, toy_topic
from app.errors import JobInterrupted
from app.stores.blobs import Blobs
from app.training.batches import collate, encode
from app.training.checkpoint import Checkpoints
from app.training.config import Hyperparameters
from app.training.data import split_validation
from app.training.dropout import CheapDropout
from app.training.fused import FusedTraining
from app.training.loop import TrainResult
from app.training.trainer import seed_everything, train_adapter, with_lora


class Recorder:
    """A Reporter that keeps what it is told and asks for a stop from a given step on."""

    def __init__(self, stop_at: int | None = None, reason: str = "cancelled"):
        self.stop_at, self.reason = stop_at, reason
        self.steps: list[int] = []
        self.points: list[dict] = []
        self.events: list[str] = []

    def progress(self, step: int, total_steps: int, epoch: float) -> str | None:
        self.steps.append(step)
        return self.reason if self.stop_at is not None and step >= self.stop_at else None

    def metrics(self, points: list[dict]) -> None:
        self.points += points

    def event(self, message: str, data: dict | None = None) -> None:
        self.events.append(message)

    def rewind(self, step: int) -> None:
        self.points = [p for p in self.points if p["step"] <= step]


@pytest.fixture
def base(tiny_models) -> LoadedBase:
    return load_base(ResolvedModel("tiny-bert", str(tiny_models["tiny-bert"])), "none", "cpu")


def frozen(base: LoadedBase) -> dict[str, torch.Tensor]:
    """The base's weights outside its head."""
    return {k: v.clone() for k, v in base.model.state_dict().items() if not k.startswith(tuple(base.heads))}


def job(rows: list[dict], **hp) -> dict:
    """A job's inputs; the toy settings of tests/support.py's `submit` (the tiny model learns the toy sets fast
    on its attention projections) unless `hp` says otherwise."""
    train, val = split_validation(rows, 0.2, 0)
    labels = sorted({r["label"] for r in rows})
    toy = {"batch_size": 8, "learning_rate": 1e-2, "early_stopping_patience": 0, "target_modules": ["query", "value"]}
    return {"train_rows": train, "val_rows": val, "labels": labels, "hp": Hyperparameters(**{**toy, **hp})}


def run_all(fused: FusedTraining, limit: int = 10_000) -> dict[str, TrainResult | BaseException]:
    ended: dict[str, TrainResult | BaseException] = {}
    for _ in range(limit):
        if not fused.members:
            return ended
        ended.update(fused.step())
    raise AssertionError("the group did not finish")


def batch_of(base: LoadedBase, rows: list[dict], labels: list[str]) -> dict[str, torch.Tensor]:
    data = encode(base.tokenizer, rows, {label: i for i, label in enumerate(labels)}, 64)
    batch = collate(data, list(range(len(rows))), base.tokenizer.pad_token_id or 0, "cpu")
    return {k: v for k, v in batch.items() if k != "labels"}


def alone_logits(base: LoadedBase, spec: dict, batch: dict) -> torch.Tensor:
    """The logits of the job's untrained adapter built as a job alone builds it (same seed)."""
    seed_everything(spec["hp"].seed)
    new_head(base, spec["labels"], spec["hp"].seed)
    model = with_lora(base, spec["hp"])
    model.eval()
    with torch.no_grad():
        out = model(**batch).logits
    base.model = model.unload()
    return out


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
def test_each_job_starts_as_alone_and_rows_go_through_their_own_job(tiny_models, tmp_path, model):
    base = load_base(ResolvedModel(model, str(tiny_models[model])), "none", "cpu")
    attention = ["query", "value"] if model == "tiny-bert" else ["q_proj", "v_proj"]
    # every Linear at rank 16 beside attention at rank 4: rows of the second job skip the layers it leaves alone
    sent = job(toy_sentiment(40), seed=1, target_modules=None)
    topic = job(toy_topic(40), seed=2, lora_r=4, lora_alpha=8, target_modules=attention)
    rows = sent["train_rows"][:3] + topic["train_rows"][:4]
    batch = batch_of(base, rows, sorted({r["label"] for r in rows}))
    want_sent = alone_logits(base, sent, batch)
    want_topic = alone_logits(base, topic, batch)
    before = frozen(base)
    with FusedTraining(base) as fused:
        fused.join("s", **sent, out_dir=tmp_path / "s", reporter=Recorder())
        fused.join("t", **topic, out_dir=tmp_path / "t", reporter=Recorder())
        loras = [lora for layer in fused.layers.values() for lora in layer.jobs.values()]
        assert loras and all(isinstance(lora.dropout, CheapDropout) for lora in loras)  # on CPU, as a job alone
        base.model.eval()
        with torch.no_grad():
            alone_s = fused.members["s"].view(**batch).logits
            with fused.routed([("s", 0, 3), ("t", 3, 7)]):  # a mixed batch: rows 0-2 job s, 3-6 job t
                mixed = base.model(**batch).logits
    assert alone_s.shape == (7, 2) and mixed.shape == (7, 3)
    torch.testing.assert_close(alone_s, want_sent)
    torch.testing.assert_close(mixed[:3, :2], want_sent[:3])
    torch.testing.assert_close(mixed[3:], want_topic[3:])
    assert frozen(base).keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in frozen(base).items())
    assert not any("lora" in name for name, _ in base.model.named_modules())
    assert not any(isinstance(m, CheapDropout) for m in base.model.modules())


def test_jobs_train_together_and_save_what_peft_saves(base, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    sent, topic = job(toy_sentiment(200), epochs=15), job(toy_topic(200), epochs=15, lora_dropout=0.0)
    reporters = {"s": Recorder(), "t": Recorder()}
    with FusedTraining(base) as fused:
        fused.join("s", **sent, out_dir=tmp_path / "s", reporter=reporters["s"])
        fused.join("t", **topic, out_dir=tmp_path / "t", reporter=reporters["t"])
        ended = run_all(fused)
    assert set(ended) == {"s", "t"} and all(isinstance(r, TrainResult) for r in ended.values()), ended
    for key, spec in (("s", sent), ("t", topic)):
        result = ended[key]
        assert result.metrics["accuracy"] >= 0.75, (key, result.metrics)
        assert result.metrics["steps"] == 15 * -(-len(spec["train_rows"]) // 8)
        assert [p["epoch"] for p in reporters[key].points if p["kind"] == "eval"] == [float(e) for e in range(1, 16)]
    # what the fused job saved is what a job alone saves: the same files, weight names and shapes, config
    alone = train_adapter(base, **sent, out_dir=tmp_path / "alone", reporter=Recorder())
    assert abs(alone.metrics["accuracy"] - ended["s"].metrics["accuracy"]) <= 0.15
    # without dropout (the tiny model has none of its own) a job trained together is the job trained alone
    topic_alone = train_adapter(base, **topic, out_dir=tmp_path / "topic-alone", reporter=Recorder())
    assert ended["t"].metrics["train_loss"] == pytest.approx(topic_alone.metrics["train_loss"], abs=1e-5)
    assert ended["t"].metrics["accuracy"] == topic_alone.metrics["accuracy"]
    weights = ["adapter_config.json", "adapter_model.safetensors"]  # (peft also writes a README model card)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == weights
    fused_w, alone_w = (
        load_file(tmp_path / "s" / "adapter_model.safetensors"),
        load_file(tmp_path / "alone" / "adapter_model.safetensors"),
    )
    assert {k: v.shape for k, v in fused_w.items()} == {k: v.shape for k, v in alone_w.items()}
    assert json.loads((tmp_path / "s" / "adapter_config.json").read_text()) == json.loads(
        (tmp_path / "alone" / "adapter_config.json").read_text()
    )
    # and peft loads it and predicts what the run measured on its validation rows
    model = AutoModelForSequenceClassification.from_pretrained(base.model.config._name_or_path, num_labels=3)
    model = PeftModel.from_pretrained(model, str(tmp_path / "t")).eval()
    val = topic["val_rows"]
    with torch.no_grad():
        pred = model(**batch_of(base, val, topic["labels"])).logits.argmax(-1).tolist()
    gold = [topic["labels"].index(r["label"]) for r in val]
    assert sum(p == g for p, g in zip(pred, gold, strict=True)) / len(val) == pytest.approx(
        ended["t"].metrics["accuracy"]
    )


def test_a_stopped_job_leaves_and_the_others_go_on(base, tmp_path):
    before = frozen(base)
    sent, topic = job(toy_sentiment(200), epochs=15), job(toy_topic(96), epochs=15)
    with FusedTraining(base) as fused:
        fused.join("s", **sent, out_dir=tmp_path / "s", reporter=Recorder())
        fused.join("t", **topic, out_dir=tmp_path / "t", reporter=Recorder(stop_at=3))
        ended = run_all(fused)
    assert isinstance(ended["t"], JobInterrupted) and ended["t"].reason == "cancelled"
    assert not (tmp_path / "t").exists()
    assert isinstance(ended["s"], TrainResult) and ended["s"].metrics["accuracy"] >= 0.75
    assert frozen(base).keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in frozen(base).items())


def test_a_job_joins_mid_way(base, tmp_path):
    sent, topic = job(toy_sentiment(200), epochs=15), job(toy_topic(200), epochs=15)
    with FusedTraining(base) as fused:
        fused.join("s", **sent, out_dir=tmp_path / "s", reporter=Recorder())
        for _ in range(10):
            assert not fused.step()
        fused.join("t", **topic, out_dir=tmp_path / "t", reporter=Recorder())
        ended = run_all(fused)
    assert all(isinstance(ended[k], TrainResult) and ended[k].metrics["accuracy"] >= 0.75 for k in "st"), ended


@pytest.mark.parametrize("paused_in", ["fused", "alone"])
def test_a_checkpoint_resumes_in_the_other_kind_of_run(base, tmp_path, paused_in):
    spec = job(toy_sentiment(200), epochs=15)
    ckpt = Checkpoints(Blobs(tmp_path / "ckpt"), every_steps=100)
    first = Recorder(stop_at=5, reason="paused")
    if paused_in == "fused":
        with FusedTraining(base) as fused:
            fused.join("s", **spec, out_dir=tmp_path / "out", reporter=first, checkpoints=ckpt)
            fused.join("t", **job(toy_topic(96)), out_dir=tmp_path / "t", reporter=Recorder())
            ended = run_all(fused)
        assert isinstance(ended["s"], JobInterrupted)
    else:
        with pytest.raises(JobInterrupted):
            train_adapter(base, **spec, out_dir=tmp_path / "out", reporter=first, checkpoints=ckpt)
    assert ckpt.exists()
    second = Recorder()
    if paused_in == "fused":
        result = train_adapter(base, **spec, out_dir=tmp_path / "out", reporter=second, checkpoints=ckpt)
    else:
        with FusedTraining(base) as fused:
            fused.join("s", **spec, out_dir=tmp_path / "out", reporter=second, checkpoints=ckpt)
            result = run_all(fused)["s"]
    assert isinstance(result, TrainResult), result
    assert any(e.startswith("Resumed from the checkpoint at step") for e in second.events), second.events
    assert result.metrics["resumed_from_steps"] and result.metrics["accuracy"] >= 0.75
    assert (Path(tmp_path / "out") / "adapter_model.safetensors").exists()


def test_a_worker_trains_queued_jobs_on_one_base_together(tmp_path, tiny_models):
    from app.jobs.worker import Worker
    from app.service import PeftServe
    from tests.support import make_settings, submit

    settings = make_settings(tmp_path, tiny_models, fused_jobs=3)
    svc = PeftServe(settings)
    # No dropout: jobs together draw their dropout masks from one stream, so with it each job's result would
    # depend on when the others joined (a wall-clock matter here); the tiny bases have none of their own.
    jobs = [
        submit(svc, "sent", toy_sentiment(200), lora_dropout=0.0),
        submit(svc, "topic", toy_topic(200), lora_dropout=0.0),
        submit(svc, "llama", toy_sentiment(64), base_model="tiny-llama", epochs=2),  # another base: its own turn
        submit(svc, "sent2", toy_sentiment(200, seed=1), lora_dropout=0.0),
        submit(svc, "bad", toy_sentiment(40), target_modules=["nowhere"]),  # fails at joining; the others go on
    ]
    assert Worker(settings).run(burst=True) == 5
    done = {j.adapter: svc.store.get_job(j.id) for j in jobs}
    assert done["bad"].status == "failed" and done["bad"].error_code == "invalid_hyperparameters"
    for name in ("sent", "topic", "sent2", "llama"):
        assert done[name].status == "succeeded", (name, done[name].error_message)
        assert done[name].result_adapter == f"{name}@v1"
    for name in ("sent", "topic", "sent2"):
        assert done[name].result_metrics["accuracy"] >= 0.75, (name, done[name].result_metrics)
        files = sorted(p.name for p in (settings.adapters_dir / name / "v1").iterdir())
        assert files == ["adapter_config.json", "adapter_model.safetensors", "peftserve.json"]
    together = {
        name: next(e.message for e in svc.store.events(done[name].id) if e.message.startswith("Training "))
        for name in ("sent", "topic", "sent2", "llama")
    }
    assert together["sent"].endswith("together with 0 other job(s) on this worker")
    assert together["topic"].endswith("together with 1 other job(s) on this worker")  # joined between steps
    assert together["sent2"].endswith("together with 2 other job(s) on this worker")
    assert together["llama"].endswith("together with 0 other job(s) on this worker")
    # each serves what it learned, through the engine (its own head and label set)
    _, probs = svc.engine.predict("topic", ["a thrilling match and a great goal"])
    assert probs.shape == (1, 3)


def test_a_step_pads_jobs_of_alike_lengths_together_and_long_ones_apart(base):
    from types import SimpleNamespace

    fused = FusedTraining(base)
    widths = {"short1": 12, "long": 120, "short2": 14, "mid": 16}
    for key, width in widths.items():  # each job's batch: 16 rows, the longest `width` tokens
        features = [{"input_ids": [1] * width}] * 16
        fused.members[key] = SimpleNamespace(run=SimpleNamespace(train=SimpleNamespace(features=features)))
    groups = fused._groups({key: list(range(16)) for key in widths})
    fused.members.clear()
    fused.close()
    assert groups == [["short1", "short2", "mid"], ["long"]]


def test_a_quantized_base_trains_a_multi_label_job_beside_a_single_label_one(tmp_path, tiny_models):
    import bitsandbytes as bnb

    from app.jobs.worker import Worker
    from app.schemas import PredictRequest
    from app.service import PeftServe
    from tests.support import make_settings, submit

    settings = make_settings(tmp_path, tiny_models, quantization="nf4", fused_jobs=2)
    svc = PeftServe(settings)
    jobs = [submit(svc, "sent", toy_sentiment(96), epochs=4), submit(svc, "tags", toy_multilabel(96), epochs=4)]
    worker = Worker(settings)
    assert worker.run(burst=True) == 2
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in worker.base.model.modules())
    for j in jobs:
        done = svc.store.get_job(j.id)
        assert done.status == "succeeded", done.error_message
        assert any(e.message.endswith("other job(s) on this worker") for e in svc.store.events(j.id))
    meta = svc.adapters.resolve("tags").meta
    assert meta["multi_label"] and len(meta["thresholds"]) == 3 and "f1_micro" in meta["metrics"]
    out = svc.predict(PredictRequest(adapter="tags", inputs=["a great goal in the match"]))
    assert set(out.predictions[0].scores) == {"negative", "positive", "sport"}
