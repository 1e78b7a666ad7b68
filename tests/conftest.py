"""Fixtures only; the helpers the tests share are in tests/support.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.base_models.tiny import build_bert, build_llama
from tests.support import make_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"tiny-bert": build_bert(root / "tiny-bert"), "tiny-llama": build_llama(root / "tiny-llama")}


@pytest.fixture
def settings(tmp_path: Path, tiny_models: dict[str, Path]):
    return make_settings(tmp_path, tiny_models)


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on loopback for the session (app/jobs/local_postgres.py)."""
    pytest.importorskip("psycopg", reason="psycopg is a dev dependency: make install")
    from app.jobs.local_postgres import start

    server = start()
    if server is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A fresh job-store database: SQLite in the test's folder, then a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return request.getfixturevalue("postgres").new_database()
