"""API keys: 401 without or with a wrong key, 403 for a use key on an admin route, open /health, refusal to
start without keys, hashed keys, constant-time comparison over SHA-256 digests."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.api.auth import KeyRing
from app.config import Settings
from app.main import create_app
from tests.support import ADMIN_HEADERS, ADMIN_KEY, USER_HEADERS, make_settings


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def assert_auth_error(r, status: int) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if r.request.url.path.startswith("/v1/"):  # the OpenAI face: OpenAI's envelope, its codes
        assert err["code"] == ("invalid_api_key" if status == 401 else "insufficient_permissions")
        assert err["type"] == ("authentication_error" if status == 401 else "permission_error")
        assert err["param"] == "Authorization" and err["message"]
    else:
        assert err["code"] == ("unauthorized" if status == 401 else "forbidden")
        assert err["field"] == "Authorization" and err["message"]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


# Open without a key: liveness, the API's documents, the static dashboard (its page asks for a key).
OPEN = {"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/ui"}
# A plausible value for each path parameter (any other name gets "x").
PATH_VALUES = {"job_id": "job_x", "dataset_id": "ds_x", "name": "x"}
ANY_KEY = {"/predict", "/evaluate", "/v1/chat/completions"}  # changes by method, but any key may call these


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every API route of the app, path parameters filled in; open ones left out."""
    app = create_app(make_settings(Path("never-created"), {}))  # routes only: the lifespan never runs
    try:  # FastAPI >= 0.13x keeps included routers nested in app.routes; older versions list their routes flat
        from fastapi.routing import iter_route_contexts

        routes = list(iter_route_contexts(app.routes))
    except ImportError:
        routes = list(app.routes)
    found = set()
    for route in routes:
        if not isinstance(getattr(route, "original_route", route), APIRoute) or route.path in OPEN:
            continue
        path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: PATH_VALUES.get(m.group(1), "x"), route.path)
        found |= {(method, path) for method in route.methods if method != "HEAD"}
    return sorted(found, key=lambda r: (r[1], r[0]))


ROUTES = app_routes()
ADMIN_ONLY = [(m, p) for m, p in ROUTES if m not in ("GET", "HEAD") and p not in ANY_KEY]
USE_KEY_OK = [r for r in ROUTES if r not in ADMIN_ONLY]


def route_id(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1]}"


def test_routes_are_found():
    """The list above comes from the app: it holds the routes known today (a new one joins by itself)."""
    known = {
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", "/jobs/job_x"),
        ("POST", "/jobs/job_x/cancel"),
        ("GET", "/jobs/job_x/metrics"),
        ("GET", "/jobs/job_x/events"),
        ("GET", "/adapters"),
        ("GET", "/adapters/loaded"),
        ("GET", "/adapters/x"),
        ("DELETE", "/adapters/x"),
        ("POST", "/datasets"),
        ("GET", "/datasets/ds_x"),
        ("POST", "/predict"),
        ("POST", "/evaluate"),
        ("GET", "/metrics"),
    }
    assert known <= set(ROUTES), known - set(ROUTES)
    assert {("POST", "/jobs"), ("POST", "/jobs/job_x/cancel"), ("DELETE", "/adapters/x"), ("POST", "/datasets")} <= set(
        ADMIN_ONLY
    )
    assert not any(p in OPEN or p.startswith("/ui") for _, p in ROUTES)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[route_id(r) for r in ROUTES])
def test_every_route_but_health_needs_a_key(client, method, path):
    assert_auth_error(client.request(method, path), 401)
    assert_auth_error(client.request(method, path, headers={"Authorization": "Bearer wrong-key-000000000"}), 401)
    assert_auth_error(client.request(method, path, headers={"Authorization": f"Basic {ADMIN_KEY}"}), 401)


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY, ids=[route_id(r) for r in ADMIN_ONLY])
def test_use_key_on_an_admin_route_is_403(client, method, path):
    assert_auth_error(client.request(method, path, headers=USER_HEADERS), 403)
    # an admin key gets past auth: whatever the answer (404 for job_x, 422 for no body), it is not about the key
    assert client.request(method, path, headers=ADMIN_HEADERS).status_code not in (401, 403)


@pytest.mark.parametrize(("method", "path"), USE_KEY_OK, ids=[route_id(r) for r in USE_KEY_OK])
def test_use_key_passes_auth_on_reads_predict_and_evaluate(client, method, path):
    for headers in (USER_HEADERS, ADMIN_HEADERS):
        r = client.request(method, path, headers=headers)
        assert r.status_code not in (401, 403), (headers, r.status_code, r.text)


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
    for path in sorted(OPEN) + ["/ui/"]:  # every route left out above answers without a key
        assert client.get(path).status_code == 200, path
    assert client.get("/metrics", headers=USER_HEADERS).status_code == 200  # a use key may scrape


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
