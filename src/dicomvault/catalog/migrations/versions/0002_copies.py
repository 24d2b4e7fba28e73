"""Copies: where every object lives, the replication outbox, and replica site reachability.

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
    op.create_table(
        "copies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("object_id", sa.String(64), nullable=False),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("owed_since", sa.Float, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("copied_at", sa.Float, nullable=True),
        sa.Column("verified_at", sa.Float, nullable=True),
        sa.UniqueConstraint("object_id", "site", name="uq_copies_object_site"),
    )
    op.create_index("ix_copies_site_state_next", "copies", ["site", "state", "next_attempt_at"])
    op.create_index("ix_copies_site_verified", "copies", ["site", "verified_at"])
    op.create_table(
        "site_state",
        sa.Column("site", sa.String(64), primary_key=True),
        sa.Column("reachable", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("changed_at", sa.Float, nullable=False),
    )
    # Objects stored before copies were tracked live on the primary, written durably.
    op.execute(
        sa.text(
            "INSERT INTO copies (object_id, site, state, size, owed_since, attempts, next_attempt_at,"
            " copied_at, verified_at) SELECT object_id, 'primary', 'verified', size_stored, received_at, 0, 0,"
            " received_at, received_at FROM versions"
        )
    )


def downgrade() -> None:
    op.drop_table("site_state")
    op.drop_table("copies")
