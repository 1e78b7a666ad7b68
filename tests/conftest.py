from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny import build_bert, build_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# API keys every test server is configured with (auth is on by default; see app/api/auth.py).
ADMIN_KEY = "test-admin-key-0123456789"
USER_KEY = "test-user-key-0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
USER_HEADERS = {"Authorization": f"Bearer {USER_KEY}"}


def auth_env() -> dict[str, str]:
    """Environment giving a server subprocess the test keys."""
    return {"PEFTSERVE_ADMIN_API_KEYS": ADMIN_KEY, "PEFTSERVE_API_KEYS": USER_KEY}


SHARED_DATA = Path(os.environ.get("PEFTSERVE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"tiny-bert": build_bert(root / "tiny-bert"), "tiny-llama": build_llama(root / "tiny-llama")}


def models_root(tiny_models: dict[str, Path]) -> Path:
    """The folder holding the tiny models: the allow-listed root for local base models."""
    roots = {p.parent for p in tiny_models.values()}
    return roots.pop() if len(roots) == 1 else Path("models")


def make_settings(root: Path, tiny_models: dict[str, Path], **overrides):
    from app.config import ModelSource, Settings

    values = dict(
        data_dir=root / "data",
        adapters_dir=root / "adapters",
        workers=0,
        models_root=models_root(tiny_models),
        models={name: ModelSource(kind="local", location=str(p)) for name, p in tiny_models.items()},
        poll_interval=0.1,
        heartbeat_interval=0.5,
        inference_dtype="float32",  # exact comparisons with plain peft; bf16 serving has its own test
        training_dtype="float32",  # the same on every machine; bf16 training has its own test
        admin_api_keys=[ADMIN_KEY],
        api_keys=[USER_KEY],
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(tmp_path: Path, tiny_models: dict[str, Path]):
    return make_settings(tmp_path, tiny_models)


def submit(service, adapter: str, records: list[dict], base_model: str = "tiny-bert", **hyper):
    from app.schemas import JobCreate

    # Tiny models learn the toy sets fast on their attention projections alone; the product default (every
    # Linear, lr 5e-4) is calibrated for real bases and has its own test.
    targets = {"tiny-bert": ["query", "value"], "tiny-llama": ["q_proj", "v_proj"]}.get(base_model)
    hp = {"epochs": 15, "batch_size": 8, "learning_rate": 1e-2, "early_stopping_patience": 0, **hyper}
    hp.setdefault("target_modules", targets)
    body = JobCreate(adapter=adapter, base_model=base_model, train={"records": records}, hyperparameters=hp)
    return service.submit_job(body)


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is absent (it lives in ../shared/data beside the checkout)")
    return path
