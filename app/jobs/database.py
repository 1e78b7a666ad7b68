"""The job store's connection to its database: the engine (SQLite's pragmas; a pool that pings PostgreSQL
connections before use) and the retries that let every store call ride out a database that is away for a
moment (a restart, a dropped connection), turning a longer outage into StoreUnavailable (a 503 on the API)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from app.errors import StoreUnavailable

log = logging.getLogger(__name__)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def transient(error: DBAPIError, dialect: str) -> bool:
    """A database that is away for a moment (restarting, a dropped connection; SQLite: locked past its busy
    timeout), as opposed to a query it refuses."""
    if isinstance(error, InterfaceError) or error.connection_invalidated:
        return True
    if isinstance(error, OperationalError):
        return dialect != "sqlite" or "locked" in str(error.orig)
    return False


def resilient(method: Callable[..., Any]) -> Callable[..., Any]:
    """Retry a store call while the database is away, with doubling pauses, for the store's `retry_seconds`;
    then StoreUnavailable (a 503 on the API)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        deadline, pause = time.monotonic() + self.retry_seconds, 0.1
        while True:
            try:
                return method(self, *args, **kwargs)
            except DBAPIError as e:
                if not transient(e, self.engine.dialect.name):
                    raise
                if time.monotonic() + pause > deadline:
                    raise StoreUnavailable("the job database is unavailable; try again shortly") from e
                log.warning(
                    "job store: %s failed (%s); retrying in %.1f s", method.__name__, type(e.orig).__name__, pause
                )
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    return call


def every_call_resilient(cls: type) -> type:
    """Make every public method of a store class `resilient` (the class has `engine` and `retry_seconds`), but
    those marked `retries_inside` (they retry an idempotent part of themselves)."""
    for name, value in list(vars(cls).items()):
        skip = name.startswith("_") or name in ("session", "close") or getattr(value, "retries_inside", False)
        if callable(value) and not skip:
            setattr(cls, name, resilient(value))
    return cls
