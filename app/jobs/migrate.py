"""The job store's schema, kept by Alembic migrations (app/jobs/migrations/versions/), run by every process
that opens the store, one at a time (a PostgreSQL advisory lock; a lock file beside a SQLite database).

A new database gets the tables as the models define them, stamped at the newest revision (a test checks the
migrations arrive at the same schema). A database from before migrations (tables, no alembic_version) is first
brought to the baseline: the nullable
columns its release lacked are added in place, then it is stamped at 0001 and upgraded like any other. Every
job, metric point and event it holds is kept.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from app.jobs.baseline import BASELINE
from app.jobs.tables import Base

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
LOCK_ID = 0x7065667473657276  # "peftserv": the advisory lock migrations take on PostgreSQL


def migrate(engine: Engine) -> str:
    """Bring the database to the newest revision; returns it."""
    with _exclusive(engine) as conn:
        tables = set(inspect(conn).get_table_names())
        config = _config(conn)
        if not tables:  # a new database: the tables as the models define them, at the newest revision
            Base.metadata.create_all(conn)
            command.stamp(config, "head")
            return head()
        if "jobs" in tables and "alembic_version" not in tables:
            _add_baseline_columns(conn)
            command.stamp(config, "0001")
        command.upgrade(config, "head")
    return head()


def head() -> str:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head() or ""


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _config(conn: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


@contextmanager
def _exclusive(engine: Engine) -> Iterator[Connection]:
    """One transaction, held by one process at a time."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with open(f"{engine.url.database}.migrate.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with engine.begin() as conn:
                    yield conn
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": LOCK_ID})
        yield conn


def _add_baseline_columns(conn: Connection) -> None:
    """An unversioned database from an older release lacks some nullable columns of the baseline: add them."""
    found = inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    for table in BASELINE.sorted_tables:
        have = {c["name"] for c in found.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}"))
