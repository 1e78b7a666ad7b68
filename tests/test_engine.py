"""The inference engine: adapters with different label sets on one base, LRU, versions, deletion."""

import pytest
import torch

from app.base_models.tiny import toy_sentiment, toy_topic
from app.errors import NotFound
from app.inference.engine import InferenceEngine
from app.jobs.worker import Worker
from app.schemas import EvaluateRequest, PredictRequest
from app.service import PeftServe
from tests.support import make_settings, submit

TEXTS = ["good film and a great cast", "awful plot", "goal match team", "the movie was dull and boring", "a"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models):
    settings = make_settings(tmp_path_factory.mktemp("engine"), tiny_models)
    svc = PeftServe(settings)
    submit(svc, "sent", toy_sentiment(80), epochs=2)
    submit(svc, "topic", toy_topic(90), epochs=2)
    submit(svc, "dec", toy_sentiment(60), base_model="tiny-llama", epochs=2)
    Worker(settings).run(burst=True)
    assert svc.adapters.names() == ["dec", "sent", "topic"]
    return settings, svc


def reference_probs(settings, ref: str, texts: list[str]) -> torch.Tensor:
    """What plain peft gives: a fresh base with the adapter's label count + PeftModel.from_pretrained."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from app.base_models.loading import load_tokenizer
    from app.base_models.registry import ModelRegistry

    svc = PeftServe(settings)
    version = svc.adapters.resolve(ref)
    resolved = ModelRegistry(settings.models, settings.model_cache_dir).resolve(version.meta["base_model"])
    tok = load_tokenizer(resolved)
    base = AutoModelForSequenceClassification.from_pretrained(resolved.path, num_labels=len(version.labels))
    base.config.pad_token_id = tok.pad_token_id
    model = PeftModel.from_pretrained(base, str(version.path)).eval()
    out = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding at all
            enc = tok([t], return_tensors="pt")
            out.append(torch.softmax(model(**enc).logits, -1)[0])
    return torch.stack(out)


@pytest.mark.parametrize("ref", ["sent", "topic", "dec"])
def test_engine_matches_plain_peft(trained, ref):
    settings, svc = trained
    _, probs = svc.engine.predict(ref, TEXTS)
    assert torch.allclose(probs, reference_probs(settings, ref, TEXTS), atol=1e-5)


def test_adapters_with_different_label_sets_share_one_base(trained):
    settings, svc = trained
    svc.engine.predict("sent", TEXTS)
    svc.engine.predict("topic", TEXTS)
    res = svc.engine.cache.resident
    assert res["sent@v1"].slot != res["topic@v1"].slot  # two slots of one base's bank
    assert len(svc.engine.cache.bases["tiny-bert"].bank.layers) == 4  # tiny BERT: query+value in 2 layers
    out = svc.predict(PredictRequest(adapter="topic", inputs=TEXTS))
    assert set(out.predictions[0].scores) == {"neg", "pos", "sport"}
    assert set(svc.predict(PredictRequest(adapter="sent", inputs="x")).predictions[0].scores) == {"neg", "pos"}


def test_lru_evicts_and_reloads_the_same_answers(trained):
    settings, svc = trained
    engine = InferenceEngine(svc.registry, svc.adapters, "cpu", "none", max_loaded=2)
    first = engine.predict("sent", TEXTS)[1]
    engine.predict("topic", TEXTS)
    engine.predict("dec", TEXTS)
    assert [r["adapter"] for r in engine.loaded()] == ["topic@v1", "dec@v1"]
    bank = engine.cache.bases["tiny-bert"].bank
    assert bank.free == [0, *range(2, bank.capacity)]  # sent's slot is free again: zeroed
    assert all(float(layer.A[0].abs().sum()) == 0 for layer in bank.layers.values())
    again = engine.predict("sent", TEXTS)[1]
    assert [r["adapter"] for r in engine.loaded()] == ["dec@v1", "sent@v1"]
    assert torch.allclose(first, again, atol=1e-6)


def test_new_version_is_served_and_deleted_is_not(trained, tmp_path, tiny_models):
    settings = make_settings(tmp_path, tiny_models)
    svc = PeftServe(settings)
    submit(svc, "v", toy_sentiment(40), epochs=1)
    Worker(settings).run(burst=True)
    assert svc.predict(PredictRequest(adapter="v", inputs="good")).adapter == "v@v1"
    submit(svc, "v", toy_topic(45), epochs=1)
    Worker(settings).run(burst=True)
    newest = svc.predict(PredictRequest(adapter="v", inputs="good"))
    assert newest.adapter == "v@v2" and set(newest.predictions[0].scores) == {"neg", "pos", "sport"}
    assert svc.predict(PredictRequest(adapter="v@v1", inputs="good")).adapter == "v@v1"
    assert svc.delete_adapter("v@v2") == ["v@v2"]
    assert svc.predict(PredictRequest(adapter="v", inputs="good")).adapter == "v@v1"
    svc.delete_adapter("v")
    assert svc.engine.loaded() == []
    with pytest.raises(NotFound):
        svc.predict(PredictRequest(adapter="v", inputs="good"))


def test_evaluate_reports_sklearn_metrics(trained):
    _, svc = trained
    records = toy_topic(30, seed=9)
    out = svc.evaluate(EvaluateRequest(adapter="topic", records=records))
    assert out.n == 30 and out.labels == ["neg", "pos", "sport"]
    assert sum(map(sum, out.confusion_matrix)) == 30
    diag = sum(out.confusion_matrix[i][i] for i in range(3))
    assert out.accuracy == pytest.approx(diag / 30)


def test_padding_and_batching_do_not_change_answers(trained):
    _, svc = trained
    texts = [f"{'good ' * (i % 7)}film {i}" for i in range(70)]
    together = svc.engine.predict("sent", texts)[1]
    alone = torch.cat([svc.engine.predict("sent", [t])[1] for t in texts])
    assert torch.allclose(together, alone, atol=1e-5)


def test_mixed_adapter_batch_equals_each_adapter_alone(trained):
    """Requests for adapters with different label sets, coalesced into one forward pass."""
    from app.inference.engine import _Request

    _, svc = trained
    engine = svc.engine
    alone = {ref: engine.predict(ref, TEXTS)[1] for ref in ("sent", "topic", "dec")}
    versions = {ref: svc.adapters.resolve(ref) for ref in alone}
    batch = [_Request(versions[ref], [t], None) for t in TEXTS for ref in ("sent", "topic", "sent", "dec")]
    before = engine.stats["batches"]
    out = engine._run(batch)
    assert engine.stats["batches"] == before + 1  # one call: at most one forward per base
    for r in batch:
        ref = r.version.name
        assert torch.allclose(out[id(r)][0], alone[ref][TEXTS.index(r.texts[0])], atol=1e-5)


def test_concurrent_clients_get_their_own_adapters_answers(trained):
    from concurrent.futures import ThreadPoolExecutor

    _, svc = trained
    engine = svc.engine
    refs = ["sent", "topic", "dec"]
    expected = {ref: engine.predict(ref, TEXTS)[1] for ref in refs}
    batches_before, rows_before = engine.stats["batches"], engine.stats["rows"]

    def call(i: int):
        ref = refs[i % 3]
        version, probs = engine.predict(ref, [TEXTS[i % len(TEXTS)]])
        return ref, i, version, probs

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(call, range(240)))
    for ref, i, version, probs in results:
        assert version.name == ref and probs.shape == (1, len(version.labels))
        assert torch.allclose(probs[0], expected[ref][i % len(TEXTS)], atol=1e-5)
    batches = engine.stats["batches"] - batches_before
    assert engine.stats["rows"] - rows_before == 240
    assert batches < 240  # coalesced: fewer forward passes than requests


def test_lru_bound_in_bytes(trained):
    _, svc = trained
    one = InferenceEngine(svc.registry, svc.adapters, "cpu", "none")
    one.predict("sent", TEXTS)
    size = one.loaded()[0]["bytes"]
    engine = InferenceEngine(svc.registry, svc.adapters, "cpu", "none", max_loaded_bytes=int(size * 1.5))
    engine.predict("sent", TEXTS)
    engine.predict("topic", TEXTS)
    assert [r["adapter"] for r in engine.loaded()] == ["topic@v1"]
    assert engine.stats["evictions"] == 1


def test_preload_and_unservable_adapters(trained, tmp_path):
    import shutil

    from app.errors import AdapterUnloadable

    _, svc = trained
    engine = InferenceEngine(svc.registry, svc.adapters, "cpu", "none")
    engine.preload(["topic", "nope"])  # a missing one is logged, not fatal
    assert [r["adapter"] for r in engine.loaded()] == ["topic@v1"]
    # A DoRA adapter (or any variant the engine cannot run) is refused with a clear error, not mis-served.
    src = svc.adapters.resolve("sent").path
    staging = svc.adapters.staging_dir()
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy(src / f, staging / f)
    cfg = (staging / "adapter_config.json").read_text().replace('"use_dora": false', '"use_dora": true')
    (staging / "adapter_config.json").write_text(cfg)
    meta = {k: v for k, v in svc.adapters.resolve("sent").meta.items() if k not in ("name", "version", "sha256")}
    svc.adapters.commit(staging, "dora", meta)
    with pytest.raises(AdapterUnloadable, match="DoRA"):
        engine.predict("dora", TEXTS)
    assert engine.predict("sent", TEXTS)[1].shape == (len(TEXTS), 2)  # the engine keeps serving


def test_an_adapter_from_another_base_revision_is_refused(trained):
    """The adapter records the hub commit its base came from; a server whose base is at another commit refuses
    it (409 naming both) instead of serving weights trained for other base weights."""
    import shutil

    from app.errors import AdapterUnloadable

    _, svc = trained
    engine = InferenceEngine(svc.registry, svc.adapters, "cpu", "none")
    src = svc.adapters.resolve("sent")
    staging = svc.adapters.staging_dir()
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy(src.path / f, staging / f)
    meta = {k: v for k, v in src.meta.items() if k not in ("name", "version", "sha256")}
    svc.adapters.commit(staging, "pinned", {**meta, "base_revision": "a" * 40})
    engine.cache.base("tiny-bert").base.revision = "b" * 40  # as if the registry pinned another commit
    with pytest.raises(AdapterUnloadable, match=f"revision {'a' * 40} .* revision {'b' * 40}"):
        engine.predict("pinned", TEXTS)
    engine.cache.base("tiny-bert").base.revision = "a" * 40
    assert engine.predict("pinned", TEXTS)[1].shape == (len(TEXTS), 2)
    engine.close()


def test_bf16_serving_agrees_with_fp32(trained):
    _, svc = trained
    texts = [f"{'good ' * (i % 5)}{'awful ' * (i % 3)}film {i}" for i in range(40)]
    fp32 = svc.engine.predict("topic", texts)[1]
    engine = InferenceEngine(svc.registry, svc.adapters, "cpu", "none", dtype=torch.bfloat16)
    bf16 = engine.predict("topic", texts)[1]
    assert engine.cache.bases["tiny-bert"].bank.dtype == torch.bfloat16
    assert (bf16 - fp32).abs().max() < 0.03
    assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean() >= 0.95


def test_buckets_cut_padding_only_where_it_pays():
    from app.inference.engine import buckets

    assert buckets([10] * 8, 64) == [(0, 8)]  # equal lengths: one pass
    assert buckets([5, 6, 7, 8, 30, 31, 32, 200], 64) == [(0, 4), (4, 7), (7, 8)]  # 4x8+64 + 3x32+64 + 200+64
    spans = buckets(sorted(range(1, 100, 3)), 16)
    assert spans[0][0] == 0 and spans[-1][1] == 33 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_a_caller_giving_up_does_not_stop_the_engine_and_close_is_prompt(trained):
    import time

    from app.inference.engine import _Request

    _, svc = trained
    engine = InferenceEngine(svc.registry, svc.adapters, "cpu", "none")
    engine.predict("sent", TEXTS)
    version = svc.adapters.resolve("sent")
    with engine._lock:  # hold the batch thread back while a request is queued and then abandoned
        gone = _Request(version, ["a"], None)
        engine._queue.put(gone)
        assert gone.future.cancel()  # what asyncio does to the future when an awaiting request is cancelled
        kept = _Request(version, ["b"], None)
        engine._queue.put(kept)
    assert kept.future.result(timeout=10).shape == (1, 2)
    assert engine.predict("sent", ["still serving"])[1].shape == (1, 2)
    t0 = time.monotonic()
    engine.close()
    assert time.monotonic() - t0 < 5 and engine._thread is None
    assert engine.predict("sent", ["after close"])[1].shape == (1, 2)  # a new batch thread starts
    assert engine.predict("sent", [])[1].shape == (0, 2)


def test_a_lone_adapter_is_merged_after_a_streak_and_answers_the_same(trained):
    from app.inference.engine import MERGE_AFTER

    settings, svc = trained
    engine = InferenceEngine(svc.registry, svc.adapters, "cpu", "none")
    first = engine.predict("sent", TEXTS[:1])[1]
    bank = engine.cache.bases["tiny-bert"].bank
    for _ in range(MERGE_AFTER - 2):
        engine.predict("sent", TEXTS[:1])
    engine.predict("topic", TEXTS[:1])  # another adapter breaks the streak
    for _ in range(MERGE_AFTER - 1):
        engine.predict("sent", TEXTS[:1])
    assert bank.merged is None and engine.stats["merges"] == 0
    engine.predict("sent", TEXTS[:1])
    sent = engine.cache.resident["sent@v1"].slot
    assert bank.merged == sent and engine.stats["merges"] == 1
    torch.testing.assert_close(engine.predict("sent", TEXTS[:1])[1], first, atol=1e-5, rtol=1e-5)
    merged_all = engine.predict("sent", TEXTS)[1]
    torch.testing.assert_close(merged_all, reference_probs(settings, "sent", TEXTS), atol=1e-5, rtol=1e-5)
    futures = engine.submit_each(["sent", "topic"], TEXTS)  # a mixed batch: the slots; the merge stays
    torch.testing.assert_close(futures[0][1].result(), merged_all, atol=1e-5, rtol=1e-5)
    assert bank.merged == sent
    engine.unload(["sent@v1"])
    assert bank.merged is None  # its slot was freed: the merged copy with it
    engine.close()


def test_merging_off_never_merges(trained):
    from app.inference.engine import MERGE_AFTER

    settings, svc = trained
    engine = InferenceEngine(svc.registry, svc.adapters, "cpu", "none", merged_adapter_bytes=0)
    for _ in range(MERGE_AFTER + 2):
        engine.predict("sent", TEXTS[:1])
    assert engine.cache.bases["tiny-bert"].bank.merged is None and engine.stats["merges"] == 0
    engine.close()
