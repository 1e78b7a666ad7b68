"""Every *ForSequenceClassification family the service claims (app.base_models.tiny.ARCHITECTURES) trains with
the default LoRA targets, is served exactly as plain transformers + peft serve the saved adapter, and is served
the same again by a fresh service: nothing the server draws at random may reach an answer.

Tiny bases saved as real hub bases are (backbone, *ForMaskedLM or *ForCausalLM), so every head, and any other
weight the checkpoint lacks (DistilBERT's pre_classifier, DeBERTa-v2's pooler, RoBERTa's classifier.dense), is
initialised newly on load: the adapter must bring all of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.base_models.tiny import ARCHITECTURES, PROBE_TEXTS, build_tiny, plain_peft_probs, toy_sentiment
from app.jobs.worker import Worker
from app.schemas import PredictRequest
from app.service import PeftServe
from tests.support import make_settings, submit

LONG = PROBE_TEXTS[-1]  # 180 words: over the tiny models' 128 tokens
TEXTS = PROBE_TEXTS  # one padded batch of one word to a dozen, and one text over the tiny models' 128 tokens
ATOL = 1e-5
EPOCHS = 3


def base_name(arch: str) -> str:
    return f"tiny-{arch}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box OpenMP threads spinning against
    other processes make each step many times slower (10-90x measured); one thread keeps this file fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def arch_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny architecture, built once into one folder (the models root)."""
    root = tmp_path_factory.mktemp("arch-models")
    return {base_name(arch): build_tiny(arch, root / base_name(arch)) for arch in ARCHITECTURES}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, arch_models: dict[str, Path]):
    """One adapter per architecture ("a-<arch>"), trained through the real worker with the product's default
    target modules; a job that fails is left failed (its tests say why)."""
    settings = make_settings(tmp_path_factory.mktemp("architectures"), arch_models)
    svc = PeftServe(settings)
    jobs = {
        arch: submit(
            svc, f"a-{arch}", toy_sentiment(120), base_model=base_name(arch), epochs=EPOCHS, target_modules=None
        ).id
        for arch in ARCHITECTURES
    }
    Worker(settings).run(burst=True)
    yield settings, svc, jobs, arch_models
    svc.close()


@pytest.fixture(scope="module")
def long_trained(tmp_path_factory: pytest.TempPathFactory, arch_models: dict[str, Path]):
    """One adapter per architecture trained with max_length far over the model's positions, on data with texts
    longer than the model takes: the service must cut them at what the model can take."""
    settings = make_settings(tmp_path_factory.mktemp("architectures-long"), arch_models)
    svc = PeftServe(settings)
    rows = toy_sentiment(40) + [{"text": LONG, "label": "pos"}, {"text": LONG.replace("good", "bad"), "label": "neg"}]
    jobs = {
        arch: submit(
            svc, f"l-{arch}", rows, base_model=base_name(arch), epochs=1, target_modules=None, max_length=1024
        ).id
        for arch in ARCHITECTURES
    }
    Worker(settings).run(burst=True)
    yield settings, svc, jobs, arch_models
    svc.close()


def adapter_of(trained, arch: str):
    """The architecture's saved adapter version; fails with the job's error if it did not train."""
    _, svc, jobs, _ = trained
    job = svc.store.get_job(jobs[arch])
    if job.status != "succeeded":
        pytest.fail(f"{arch}: training {job.status}: {job.error_code}: {job.error_message}")
    return svc.adapters.resolve(job.result_adapter)


def reference(trained, arch: str, texts: list[str] = TEXTS) -> torch.Tensor:
    _, _, _, models = trained
    version = adapter_of(trained, arch)
    return plain_peft_probs(models[base_name(arch)], version.path, len(version.labels), texts)


def assert_same(arch: str, got: torch.Tensor, want: torch.Tensor, what: str, texts: list[str] = TEXTS) -> None:
    """Per text: every probability within ATOL."""
    assert got.shape == want.shape, f"{arch}: {what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    bad = [
        f"  {t!r}: {got[i].tolist()} vs {want[i].tolist()} (max diff {(got[i] - want[i]).abs().max():.2e})"
        for i, t in enumerate(texts)
        if not torch.allclose(got[i], want[i], atol=ATOL, rtol=0)
    ]
    assert not bad, f"{arch}: {what} differ beyond {ATOL} on {len(bad)}/{len(texts)} texts:\n" + "\n".join(bad)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_trains_with_the_default_targets(trained, arch):
    settings, svc, jobs, _ = trained
    job = svc.store.get_job(jobs[arch])
    assert job.status == "succeeded", f"{arch}: {job.error_code}: {job.error_message}"
    version = svc.adapters.resolve(f"a-{arch}")
    assert version.labels == ["neg", "pos"] and version.meta["base_model"] == base_name(arch)
    assert job.hyperparameters.get("target_modules") is None  # the product default, not the tests' choice
    config = json.loads((version.path / "adapter_config.json").read_text())
    assert config["target_modules"], config  # LoRA went somewhere
    loss = version.meta["metrics"].get("train_loss")
    assert loss is not None and loss == loss and loss < 10, version.meta["metrics"]  # finite: it trained


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_serves_what_plain_peft_gives(trained, arch):
    _, svc, _, _ = trained
    version = adapter_of(trained, arch)
    _, probs = svc.engine.predict(version.ref, TEXTS)
    assert_same(arch, probs, reference(trained, arch), "service vs plain peft")
    # the HTTP-facing call gives the same numbers, by label
    out = svc.predict(PredictRequest(adapter=version.ref, inputs=TEXTS))
    by_label = torch.tensor([[p.scores[label] for label in version.labels] for p in out.predictions])
    assert_same(arch, by_label, probs, "PeftServe.predict vs the engine")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_fresh_service_gives_the_same_answers(trained, arch):
    settings, svc, _, _ = trained
    version = adapter_of(trained, arch)
    torch.manual_seed(11)
    _, first = svc.engine.predict(version.ref, TEXTS)
    torch.manual_seed(4321)  # anything the server drew at random for this base would now come out different
    fresh = PeftServe(settings)
    try:
        _, again = fresh.engine.predict(version.ref, TEXTS)
    finally:
        fresh.close()
    assert_same(arch, again, first, "a fresh service vs the first")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_max_length_over_the_models_positions_is_cut_to_what_it_takes(long_trained, arch):
    """max_length 1024 on a 128-token model: training and serving cut texts at what the model takes (RoBERTa's
    positions start after its pad id, so it takes 2 fewer tokens than max_position_embeddings says)."""
    _, svc, _, _ = long_trained
    version = adapter_of(long_trained, arch)
    _, probs = svc.engine.predict(version.ref, TEXTS)
    assert_same(arch, probs, reference(long_trained, arch), "service vs plain peft (texts cut at 128 tokens)")


def test_two_architectures_in_one_mixed_batch(trained):
    """Adapters on a GPT-2 and a RoBERTa base, interleaved in one engine call and in queued requests, each
    equal to its own plain peft result."""
    from app.inference.engine import _Request

    _, svc, _, _ = trained
    engine = svc.engine
    archs = ("gpt2", "roberta")
    versions = {arch: adapter_of(trained, arch) for arch in archs}
    want = {arch: reference(trained, arch) for arch in archs}
    batch = [_Request(versions[arch], [t], None) for t in TEXTS for arch in archs]
    before = engine.stats["batches"]
    out = engine._run(batch)
    assert engine.stats["batches"] == before + 1  # one call: one forward per base
    for arch in archs:
        got = [out[id(r)] for r in batch if r.version.ref == versions[arch].ref]
        assert all(not isinstance(g, BaseException) for g in got), got
        assert_same(arch, torch.cat(got), want[arch], "mixed batch vs plain peft")
    # the same through the queue: every request queued before any is awaited
    futures = {arch: engine.submit(versions[arch].ref, TEXTS)[1] for arch in archs}
    for arch in archs:
        assert_same(arch, futures[arch].result(timeout=60), want[arch], "queued mixed requests vs plain peft")


@pytest.mark.parametrize("arch", ["bert", "gpt2", "roberta", "deberta-v2", "qwen2"])
def test_exported_merged_model_predicts_what_the_server_predicts(trained, arch, tmp_path):
    """The way out: `peftserve export-merged` (app.base_models.merge) writes a plain transformers folder — LoRA
    merged (GPT-2's Conv1D too), the whole head in place, the labels in config.json."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from app.base_models.merge import export_merged

    settings, svc, _, _ = trained
    version = adapter_of(trained, arch)
    folder = export_merged(version, svc.registry.resolve(version.meta["base_model"]), tmp_path / "merged")
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert not any("lora" in n for n, _ in model.named_parameters())
    _, served = svc.engine.predict(version.ref, TEXTS)
    # cut where the server cuts: the adapter's max_length, at most what the model takes
    cut = svc.engine.cache.base(version.meta["base_model"]).base.max_tokens(
        version.meta["hyperparameters"]["max_length"]
    )
    with torch.no_grad():
        enc = [tok([t], return_tensors="pt", truncation=True, max_length=cut) for t in TEXTS]
        got = torch.stack([torch.softmax(model(**e).logits, -1)[0] for e in enc])
    assert_same(arch, got, served, "merged model vs the server", TEXTS)


def test_a_head_module_the_checkpoint_holds_starts_from_it(arch_models):
    """ModernBERT's MLM checkpoint holds `head` (dense + norm): a job starts from those weights, and only the
    logits layer is new; BERT's checkpoint holds no head module."""
    from safetensors.torch import load_file

    from app.base_models.loading import load_base, new_head
    from app.base_models.registry import ResolvedModel

    folder = arch_models[base_name("modernbert")]
    base = load_base(ResolvedModel("m", str(folder)), "none", "cpu")
    assert set(base.pretrained_heads) == {"head"}
    new_head(base, ["a", "b", "c"], seed=5)
    saved = load_file(folder / "model.safetensors")
    assert torch.equal(base.model.head.dense.weight, saved["head.dense.weight"])
    assert base.model.classifier.out_features == 3
    bert = load_base(ResolvedModel("b", str(arch_models[base_name("bert")])), "none", "cpu")
    assert bert.pretrained_heads == {}
