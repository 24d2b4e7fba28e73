"""Alerts that leave the building: one row per alert occurrence (jobs/alerts/engine.py) and the
state of each delivery channel (webhook, e-mail, syslog) for `status`.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("raised_at", sa.Float, nullable=False),
        sa.Column("last_sent_at", sa.Float, nullable=True),
        sa.Column("reminders", sa.Integer, nullable=False, server_default="0"),
        sa.Column("acknowledged_by", sa.String(256), nullable=True),
        sa.Column("acknowledged_at", sa.Float, nullable=True),
        sa.Column("ack_note", sa.Text, nullable=False, server_default=""),
        sa.Column("resolved_at", sa.Float, nullable=True),
    )
    op.create_index("ix_alerts_key_resolved", "alerts", ["key", "resolved_at"])
    op.create_table(
        "alert_channels",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("failing_since", sa.Float, nullable=True),
        sa.Column("last_ok_at", sa.Float, nullable=True),
        sa.Column("pending", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_channels")
    op.drop_index("ix_alerts_key_resolved", "alerts")
    op.drop_table("alerts")
