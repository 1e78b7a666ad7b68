"""A succeeded job's warnings (what to look at, what to do) and an uploaded dataset's notes (how it was read).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("result_warnings", sa.JSON))
    with op.batch_alter_table("datasets") as datasets:
        datasets.add_column(sa.Column("notes", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as datasets:
        datasets.drop_column("notes")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("result_warnings")
