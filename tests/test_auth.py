"""API keys: 401 without or with a wrong key, 403 for a use key on an admin route, open /health, refusal to
start without keys, hashed keys, constant-time comparison over SHA-256 digests."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from app.api.auth import KeyRing
from app.config import Settings
from app.main import create_app
from tests.conftest import ADMIN_HEADERS, ADMIN_KEY, USER_HEADERS, make_settings


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def assert_auth_error(r, status: int) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == ("unauthorized" if status == 401 else "forbidden")
    assert err["field"] == "Authorization" and err["message"]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


ROUTES = [
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/job_x"),
    ("POST", "/jobs/job_x/cancel"),
    ("GET", "/jobs/job_x/metrics"),
    ("GET", "/jobs/job_x/events"),
    ("GET", "/adapters"),
    ("GET", "/adapters/loaded"),
    ("DELETE", "/adapters/x"),
    ("POST", "/datasets"),
    ("GET", "/datasets/x"),
    ("POST", "/predict"),
    ("POST", "/evaluate"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_but_health_needs_a_key(client, method, path):
    assert_auth_error(client.request(method, path), 401)
    assert_auth_error(client.request(method, path, headers={"Authorization": "Bearer wrong-key-000000000"}), 401)
    assert_auth_error(client.request(method, path, headers={"Authorization": f"Basic {ADMIN_KEY}"}), 401)


ADMIN_ONLY = [("POST", "/jobs"), ("POST", "/jobs/job_x/cancel"), ("DELETE", "/adapters/x"), ("POST", "/datasets")]


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY)
def test_use_key_on_an_admin_route_is_403(client, method, path):
    assert_auth_error(client.request(method, path, headers=USER_HEADERS), 403)


def test_use_key_reads_predicts_and_evaluates(client):
    assert client.get("/jobs", headers=USER_HEADERS).status_code == 200
    assert client.get("/adapters", headers=USER_HEADERS).status_code == 200
    # past auth: the request itself is judged (unknown adapter), not the key
    r = client.post("/predict", json={"adapter": "nope", "inputs": "hi"}, headers=USER_HEADERS)
    assert r.status_code == 404 and r.json()["error"]["field"] == "adapter"
    r = client.post(
        "/evaluate", json={"adapter": "nope", "records": [{"text": "a", "label": "x"}]}, headers=USER_HEADERS
    )
    assert r.status_code == 404
    assert client.get("/jobs", headers=ADMIN_HEADERS).status_code == 200


def test_health_and_docs_stay_open(client):
    assert client.get("/health").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_openapi_declares_bearer_auth(client):
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values())
    assert "security" in spec["paths"]["/jobs"]["post"] and "security" not in spec["paths"]["/health"]["get"]


def test_no_key_configured_refuses_to_start(tmp_path, tiny_models):
    settings = make_settings(tmp_path, tiny_models, admin_api_keys=[], api_keys=[])
    with pytest.raises(RuntimeError, match="PEFTSERVE_ADMIN_API_KEYS"):
        create_app(settings)
    # switched off explicitly (local development): it starts and serves without a key
    with TestClient(create_app(make_settings(tmp_path, tiny_models, admin_api_keys=[], auth=False))) as c:
        assert c.get("/jobs").status_code == 200


def test_serve_command_refuses_without_keys(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PEFTSERVE_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert b"PEFTSERVE_AUTH=false" in proc.stderr and b"Traceback" not in proc.stderr


def test_keys_from_environment_comma_separated_and_hashed(monkeypatch):
    hashed = "sha256:" + hashlib.sha256(b"second-admin-key-xyz").hexdigest()
    monkeypatch.setenv("PEFTSERVE_ADMIN_API_KEYS", f" first-admin-key-xyz , {hashed}")
    monkeypatch.setenv("PEFTSERVE_API_KEYS", "a-reader-key-123456")
    s = Settings(_env_file=None)
    assert s.admin_api_keys == ["first-admin-key-xyz", hashed]
    ring = KeyRing.from_settings(s)
    assert ring.scope_of("first-admin-key-xyz") == "admin"
    assert ring.scope_of("second-admin-key-xyz") == "admin"  # matched through its digest
    assert ring.scope_of(hashed) is None  # the digest itself is not a key
    assert ring.scope_of("a-reader-key-123456") == "use"
    assert ring.scope_of("") is None and ring.scope_of("first-admin-key-xy") is None


def test_key_lists_are_trimmed_and_digests_normalised(monkeypatch):
    digest = hashlib.sha256(b"an-upper-case-digest-key").hexdigest()
    monkeypatch.setenv("PEFTSERVE_ADMIN_API_KEYS", f'[" json-listed-key-1234 ", "SHA256:{digest.upper()}"]')
    ring = KeyRing.from_settings(Settings(_env_file=None))
    assert ring.scope_of("json-listed-key-1234") == "admin"
    assert ring.scope_of("an-upper-case-digest-key") == "admin"  # SHA256:<HEX> is a digest, not a plain key


@pytest.mark.parametrize("value", ["short", "sha256:abcd", "sha256:" + "z" * 64])
def test_weak_or_malformed_keys_are_refused(monkeypatch, value):
    monkeypatch.setenv("PEFTSERVE_API_KEYS", value)
    with pytest.raises(ValueError, match="API key"):
        Settings(_env_file=None)
