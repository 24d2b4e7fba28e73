"""Restore / network-export jobs and their planned items; PACS reconciliation runs.

See catalog/schema.py for what the states mean (jobs/restore/job.py, jobs/reconcile/job.py).

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
    op.create_table(
        "restore_jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.Column("destination", sa.String(128), nullable=False),
        sa.Column("selection", sa.Text, nullable=False),
        sa.Column("ordering", sa.String(16), nullable=False),
        sa.Column("options", sa.Text, nullable=False, server_default="{}"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False, server_default=""),
        sa.Column("total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("total_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("runs", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("heartbeat_at", sa.Float, nullable=True),
        sa.Column("seconds_sending", sa.Float, nullable=False, server_default="0.0"),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_table(
        "restore_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("restore_jobs.id"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("tier", sa.Integer, nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("object_id", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("sent_syntax", sa.String(64), nullable=True),
        sa.Column("run", sa.Integer, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.UniqueConstraint("job_id", "sop_instance_uid", name="uq_restore_items_job_instance"),
    )
    op.create_table(
        "reconcile_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.Column("date_from", sa.String(8), nullable=False),
        sa.Column("date_to", sa.String(8), nullable=False),
        sa.Column("backfill", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False, server_default=""),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("pacs_studies", sa.Integer, nullable=False, server_default="0"),
        sa.Column("vault_studies", sa.Integer, nullable=False, server_default="0"),
        sa.Column("missing_in_vault", sa.Integer, nullable=False, server_default="0"),
        sa.Column("missing_in_pacs", sa.Integer, nullable=False, server_default="0"),
        sa.Column("backfilled_instances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("report", sa.Text, nullable=False, server_default="{}"),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_restore_jobs_state", "restore_jobs", ["state", "peer"])
    op.create_index("ix_restore_items_job_state_position", "restore_items", ["job_id", "state", "position"])
    op.create_index("ix_reconcile_runs_peer_started", "reconcile_runs", ["peer", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_reconcile_runs_peer_started", "reconcile_runs")
    op.drop_index("ix_restore_items_job_state_position", "restore_items")
    op.drop_index("ix_restore_jobs_state", "restore_jobs")
    op.drop_table("reconcile_runs")
    op.drop_table("restore_items")
    op.drop_table("restore_jobs")
