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


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A real S3-compatible server on loopback for the session (moto in server mode), its AWS_* variables set
    in this process for the session."""
    from app.stores.local_s3 import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3"))
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(params=["local", "s3"])
def storage_url(request, tmp_path) -> str:
    """Shared storage for one test: a local folder, then a fresh prefix on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "storage")
    import uuid

    return request.getfixturevalue("s3").url(uuid.uuid4().hex)
