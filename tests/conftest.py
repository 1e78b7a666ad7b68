from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny import build_bert, build_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(os.environ.get("PEFTSERVE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"tiny-bert": build_bert(root / "tiny-bert"), "tiny-llama": build_llama(root / "tiny-llama")}


@pytest.fixture
def settings(tmp_path: Path, tiny_models: dict[str, Path]):
    from app.config import ModelSource, Settings

    return Settings(
        data_dir=tmp_path / "data",
        adapters_dir=tmp_path / "adapters",
        workers=0,
        models={name: ModelSource(kind="local", location=str(p)) for name, p in tiny_models.items()},
        poll_interval=0.1,
        heartbeat_interval=0.5,
        _env_file=None,
    )


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is absent (it lives in ../shared/data beside the checkout)")
    return path
