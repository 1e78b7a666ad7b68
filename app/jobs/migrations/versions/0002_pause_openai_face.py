"""Pause and resume, the OpenAI face's job fields, dataset sizes, datasets listed by time.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("pause_requested", sa.Boolean))  # NULL on older rows reads as "not asked"
        jobs.add_column(sa.Column("suffix", sa.String(64)))
        jobs.add_column(sa.Column("user_metadata", sa.JSON))
    with op.batch_alter_table("datasets") as datasets:
        datasets.add_column(sa.Column("size_bytes", sa.Integer))
    op.create_index("ix_datasets_created_at", "datasets", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_datasets_created_at", "datasets")
    with op.batch_alter_table("datasets") as datasets:
        datasets.drop_column("size_bytes")
    with op.batch_alter_table("jobs") as jobs:
        for column in ("user_metadata", "suffix", "pause_requested"):
            jobs.drop_column(column)
