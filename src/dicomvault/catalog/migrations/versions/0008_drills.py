"""Restore drills: one row per site per drill (jobs/drill/job.py), the history `status` shows.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drill_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False, server_default=""),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("studies", sa.Integer, nullable=False, server_default="0"),
        sa.Column("instances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("picks", sa.Text, nullable=False, server_default="[]"),
        sa.Column("failures", sa.Text, nullable=False, server_default="[]"),
    )
    op.create_index("ix_drill_runs_site_started", "drill_runs", ["site", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_drill_runs_site_started", "drill_runs")
    op.drop_table("drill_runs")
