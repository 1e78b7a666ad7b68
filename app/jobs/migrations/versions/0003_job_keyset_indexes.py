"""Composite indexes for the job listings' keyset pages and the claim: (created_at, id) and
(status, created_at, id), replacing the single-column ones on status and created_at. Measured with
bench/store_scale.py (100,000 jobs) before and after: README, "Scaling out".

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_created_id", "jobs", ["created_at", "id"])
    op.create_index("ix_jobs_status_created_id", "jobs", ["status", "created_at", "id"])
    op.drop_index("ix_jobs_created_at", "jobs")
    op.drop_index("ix_jobs_status", "jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.drop_index("ix_jobs_status_created_id", "jobs")
    op.drop_index("ix_jobs_created_id", "jobs")
