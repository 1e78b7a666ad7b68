"""Alembic's environment for the job store: run on the connection app/jobs/migrate.py hands over (never from
an alembic.ini: the server migrates its own database at start-up)."""

from alembic import context

from app.jobs.tables import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite"
)
with context.begin_transaction():
    context.run_migrations()
