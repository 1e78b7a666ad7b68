"""The error envelope of every 4xx/5xx, one per face of the API: the native routes answer
`{"error": {"code", "message", "field"}}`; the OpenAI-compatible routes under /v1 answer OpenAI's
`{"error": {"message", "type", "param", "code"}}` with its status codes (a bad value is a 400 there, not a 422),
so the official SDK raises its own error classes. Handlers pick the envelope by the request's path."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import PeftServeError
from app.suggest import hint

log = logging.getLogger(__name__)


def envelope(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    headers = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if status == 401 else {})}
    return JSONResponse(
        status_code=status, content={"error": {"code": code, "message": message, "field": field}}, headers=headers
    )


OPENAI_PREFIX = "/v1/"
# OpenAI's error `type` by status (4xx not listed: invalid_request_error), and its `code` for ours where it has one.
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_OPENAI_CODES = {"unauthorized": "invalid_api_key", "forbidden": "insufficient_permissions"}


def openai_envelope(
    status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """OpenAI's error body. `x-should-retry: false` on a 4xx: the SDK would otherwise retry a 409 twice."""
    status = 400 if status == 422 else status
    kind = "server_error" if status >= 500 else _OPENAI_TYPES.get(status, "invalid_request_error")
    headers = {**(headers or {}), "x-should-retry": "true" if status >= 500 else "false"}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    body = {"error": {"message": message, "type": kind, "param": param, "code": _OPENAI_CODES.get(code, code)}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def error_response(
    path: str, status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error in the envelope of the face `path` belongs to."""
    if path.startswith(OPENAI_PREFIX):
        return openai_envelope(status, code, message, field, headers)
    return envelope(status, code, message, field, headers)


# pydantic puts a union member's type in the location ("str", "list[str]", "function-after[...]", a model
# class name); it means nothing to a caller, so it is left out of `field`.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "bytes"}


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and (part in _TYPE_TAGS or part[:1].isupper() or not part.isidentifier())


def _loc_to_field(loc: tuple, error_type: str = "") -> str | None:
    source, parts = (
        (loc[0], list(loc[1:])) if loc and loc[0] in ("body", "query", "path", "header") else ("", list(loc))
    )
    keep_last = error_type == "extra_forbidden"  # there the last part is the client's own (unknown) key
    kept = [p for i, p in enumerate(parts) if not _is_type_tag(p) or (keep_last and i == len(parts) - 1)]
    field = ""
    for p in kept:
        field += f"[{p}]" if isinstance(p, int) else (f".{p}" if field else str(p))
    return field or (source or None)


def _field_names(request: Request, loc: tuple) -> list[str]:
    """The field names the request body's model accepts at `loc` (("body", "hyperparameters") -> the
    hyperparameters' names), found by walking the route's body model; [] where that isn't a model."""
    route = request.scope.get("route")
    body = getattr(route, "body_field", None)
    if body is None or not loc or loc[0] != "body":
        return []
    model = getattr(body.field_info, "annotation", None)
    for part in loc[1:]:
        if _is_type_tag(part):
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        model = _model_of(fields[part].annotation)
    fields = getattr(model, "model_fields", None) or {}
    return [f.alias or name for name, f in fields.items()]


def _methods_of(request: Request) -> list[str]:
    """Every method the API document lists for this request's path (Starlette's 405 names only the first
    matching route's, and each route of a path here is one method)."""
    table = getattr(request.app.state, "methods_by_path", None)
    if table is None:
        table = request.app.state.methods_by_path = [
            (re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)) + "$"), sorted(m.upper() for m in ops))
            for path, ops in sorted(request.app.openapi().get("paths", {}).items(), key=lambda p: p[0].count("{"))
        ]  # literal paths first: /adapters/loaded before /adapters/{name}
    return next((methods for pattern, methods in table if pattern.match(request.url.path)), [])


def _model_of(annotation: Any) -> Any:
    """A field's model, through `X | None` and the like."""
    if hasattr(annotation, "model_fields"):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if hasattr(arg, "model_fields"):
            return arg
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(PeftServeError)
    async def _domain(request: Request, exc: PeftServeError) -> JSONResponse:
        return error_response(request.url.path, exc.status_code, exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        # For a union (`str | list[str]`) each member reports; the deepest location is the useful one.
        # An unknown name first: a typo (`hyperparameter`) explains the "Field required" beside it.
        rank = lambda e: (e.get("type") == "extra_forbidden", len(e.get("loc", ())))  # noqa: E731
        first = max(errors, key=rank) if errors else {"loc": (), "msg": "invalid request"}
        field = _loc_to_field(tuple(first.get("loc", ())), first.get("type", ""))
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg, field = f"body is not valid JSON: {first.get('ctx', {}).get('error', msg)}", "body"
        elif first.get("type") == "extra_forbidden":
            loc = tuple(first.get("loc", ()))
            names = _field_names(request, loc[:-1])
            msg = "unknown parameter (not part of this API)" + (hint(str(loc[-1]), names) if names else "")
        extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return error_response(request.url.path, 422, "invalid_request", f"{field or 'request'}: {msg}{extra}", field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI could not parse the body at all
            return error_response(request.url.path, 422, "invalid_request", f"body: {exc.detail}", "body")
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "error")
        message, field = str(exc.detail), None
        if exc.status_code == 404 and exc.detail == "Not Found":  # no route: the path itself is what is wrong
            # (an encoded '/' in a name, e.g. /adapters/..%2Fx, makes the path another route's, or none)
            message, field = f"no endpoint at {request.url.path!r}; see /docs for the API", "path"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the first matching route's methods; the path has them all
            allowed = ", ".join(_methods_of(request)) or headers.get("Allow", "")
            headers["Allow"] = allowed
            message, field = f"{request.method} is not allowed on {request.url.path!r}; allowed: {allowed}", "method"
        return error_response(request.url.path, exc.status_code, code, message, field, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, 500, "internal_error", "internal server error")


class UploadLimit:
    """ASGI middleware: an upload whose Content-Length is over the limit gets its 413 before the body is read
    (Starlette spools a multipart body to disk before the route runs). The route still checks the bytes."""

    def __init__(self, app: Any, paths: tuple[str, ...], max_bytes: int, slack: int = 1 << 20):
        self.app, self.paths, self.max_bytes = app, paths, max_bytes
        self.limit = max_bytes + slack  # slack: the multipart framing around the file

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                response = error_response(
                    scope["path"],
                    413,
                    "payload_too_large",
                    f"upload is over the limit of {self.max_bytes} bytes",
                    "file",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
