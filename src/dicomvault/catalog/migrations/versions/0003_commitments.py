"""Storage commitment: persisted N-ACTION requests and their per-instance decisions.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "commitment_requests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("transaction_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("called_ae", sa.String(16), nullable=False, server_default=""),
        sa.Column("peer_address", sa.String(64), nullable=False, server_default=""),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.Column("delivered_at", sa.Float, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_commitment_requests_state", "commitment_requests", ["state", "next_attempt_at"])
    op.create_table(
        "commitment_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("request_pk", sa.Integer, sa.ForeignKey("commitment_requests.id"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.UniqueConstraint("request_pk", "sop_instance_uid", name="uq_commitment_items_request_instance"),
    )
    op.create_index("ix_commitment_items_request_state", "commitment_items", ["request_pk", "state"])


def downgrade() -> None:
    op.drop_table("commitment_items")
    op.drop_table("commitment_requests")
