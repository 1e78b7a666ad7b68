"""The inference engine: adapters with different label sets on one base, LRU, versions, deletion."""

import pytest
import torch

from app.errors import NotFound
from app.inference.engine import InferenceEngine
from app.jobs.worker import Worker
from app.schemas import EvaluateRequest, PredictRequest
from app.service import PeftServe
from tests.conftest import make_settings, submit
from tests.tiny import toy_sentiment, toy_topic

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

    from app.models.loading import load_tokenizer
    from app.models.registry import ModelRegistry

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
    slot = svc.engine._slots["tiny-bert"]
    assert len(slot.peft.peft_config) >= 2  # both LoRA adapters in one model
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
    assert "a0" not in engine._slots["tiny-bert"].peft.peft_config  # deleted from peft too
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
