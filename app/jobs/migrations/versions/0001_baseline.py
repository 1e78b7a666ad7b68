"""The job store as the releases before migrations made it (SQLAlchemy's create_all of the tables then).

A database from those releases has these tables and no alembic_version; app/jobs/migrate.py adds the nullable
columns an even older one lacks (app/jobs/baseline.py lists them), stamps it at this revision, then upgrades.

Revision ID: 0001
Revises:
"""

from alembic import op

from app.jobs.baseline import BASELINE

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    BASELINE.create_all(op.get_bind())


def downgrade() -> None:
    BASELINE.drop_all(op.get_bind())
