"""One error envelope for every 4xx/5xx: {"error": {"code", "message", "field"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import PeftServeError

log = logging.getLogger(__name__)


def envelope(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message, "field": field}})


def _loc_to_field(loc: tuple) -> str | None:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic puts the union member's type name in the location; it means nothing to a caller
    parts = [p for p in parts if not (isinstance(p, str) and (p[:1].isupper() or "[" in p or p.startswith("function")))]
    field = ""
    for p in parts:
        field += f"[{p}]" if isinstance(p, int) else (f".{p}" if field else str(p))
    return field or None


def install(app: FastAPI) -> None:
    @app.exception_handler(PeftServeError)
    async def _domain(_: Request, exc: PeftServeError) -> JSONResponse:
        return envelope(exc.status_code, exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = _loc_to_field(tuple(first.get("loc", ())))
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg, field = f"body is not valid JSON: {first.get('ctx', {}).get('error', msg)}", "body"
        extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return envelope(422, "invalid_request", f"{field or 'request'}: {msg}{extra}", field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "error")
        return envelope(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(500, "internal_error", "internal server error")
