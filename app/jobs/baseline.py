"""The job store's tables as the releases before migrations made them (SQLAlchemy's create_all then): what
migration 0001 creates, and what app/jobs/migrate.py brings an older, unversioned database up to."""

import sqlalchemy as sa

At = sa.DateTime(timezone=True)
BASELINE = sa.MetaData()

sa.Table(
    "jobs",
    BASELINE,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("adapter", sa.String(64), nullable=False),
    sa.Column("base_model", sa.String(64), nullable=False),
    sa.Column("hyperparameters", sa.JSON, nullable=False),
    sa.Column("train_dataset", sa.String(40), nullable=False),
    sa.Column("validation_dataset", sa.String(40)),
    sa.Column("validation_split", sa.Double, nullable=False),
    sa.Column("created_at", At, nullable=False, index=True),
    sa.Column("started_at", At),
    sa.Column("finished_at", At),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("total_steps", sa.Integer, nullable=False),
    sa.Column("epoch", sa.Double, nullable=False),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("result_adapter", sa.String(80)),
    sa.Column("result_metrics", sa.JSON),
    sa.Column("worker_id", sa.String(80)),
    sa.Column("heartbeat_at", At),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("estimated_finish", At),
    sa.Column("samples_per_second", sa.Double),
    sa.Column("webhook_url", sa.String(2048)),
    sa.Column("init_from", sa.String(80)),
)
sa.Table(
    "metric_points",
    BASELINE,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("epoch", sa.Double, nullable=False),
    sa.Column("values", sa.JSON, nullable=False),
    sa.Column("created_at", At, nullable=False),
    sa.Index("ix_metric_job_kind_step", "job_id", "kind", "step"),
)
sa.Table(
    "job_events",
    BASELINE,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", At, nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.JSON),
    sa.Index("ix_event_job_id", "job_id", "id"),
)
sa.Table(
    "webhook_deliveries",
    BASELINE,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("created_at", At, nullable=False),
    sa.Column("next_attempt_at", At, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("delivered", sa.Boolean, nullable=False),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Index("ix_webhook_due", "delivered", "next_attempt_at"),
)
sa.Table(
    "datasets",
    BASELINE,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("filename", sa.String(255)),
    sa.Column("n_records", sa.Integer, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("multi_label", sa.Boolean),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", At, nullable=False),
)
