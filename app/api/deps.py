"""Dependencies as Annotated aliases; getters read app.state so tests can override them.

They are `async def` though they never await: FastAPI runs a plain `def` dependency in its threadpool, a
thread hop per dependency per request (a latency probe on a 2-core CPU measured 0.3 ms less server time per
/predict without the two); these only read app.state and hash a key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.auth import KeyRing, Scope
from app.errors import Forbidden, Unauthorized
from app.service import PeftServe


async def get_service(request: Request) -> PeftServe:
    return request.app.state.service


ServiceDep = Annotated[PeftServe, Depends(get_service)]

_bearer = HTTPBearer(auto_error=False, description="an API key: PEFTSERVE_ADMIN_API_KEYS or PEFTSERVE_API_KEYS")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _check(request: Request, creds: HTTPAuthorizationCredentials | None, needed: Scope) -> None:
    keys: KeyRing = request.app.state.keys
    if not keys.enabled:
        return
    if creds is None:
        raise Unauthorized("missing API key: send the header Authorization: Bearer <key>", field="Authorization")
    scope = keys.scope_of(creds.credentials)
    if scope is None:
        raise Unauthorized("invalid API key", field="Authorization")
    if not keys.allows(scope, needed):
        raise Forbidden("this key may predict, evaluate and read; this call needs an admin key", field="Authorization")


async def use_access(request: Request, creds: Credentials) -> None:
    """Predict, evaluate: any configured key."""
    _check(request, creds, "use")


async def method_access(request: Request, creds: Credentials) -> None:
    """Reads (GET) take any key; changes (POST, DELETE) an admin key."""
    _check(request, creds, "use" if request.method in ("GET", "HEAD") else "admin")
