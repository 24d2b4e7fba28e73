"""Deletions: the deletion record and each site's outcome (jobs/retention/delete.py).

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deletions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("why", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False, server_default=""),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("instances", sa.Integer, nullable=False),
        sa.Column("versions", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sop_uids", sa.Text, nullable=False, server_default="[]"),
        sa.Column("objects", sa.Text, nullable=False, server_default="[]"),
        sa.Column("completed_at", sa.Float, nullable=True),
        sa.Column("key_id", sa.String(32), nullable=False, server_default=""),
        sa.Column("key_embedded", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_deletions_created", "deletions", ["created_at"])
    op.create_index("ix_deletions_study", "deletions", ["study_uid"])
    op.create_table(
        "deletion_sites",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("deletion_id", sa.Integer, sa.ForeignKey("deletions.id"), nullable=False),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("objects", sa.Integer, nullable=False, server_default="0"),
        sa.Column("deleted", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked", sa.Integer, nullable=False, server_default="0"),
        sa.Column("missing", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("deletion_id", "site", name="uq_deletion_sites_deletion_site"),
    )
    op.create_index("ix_deletion_sites_state", "deletion_sites", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_deletion_sites_state", "deletion_sites")
    op.drop_table("deletion_sites")
    op.drop_index("ix_deletions_study", "deletions")
    op.drop_index("ix_deletions_created", "deletions")
    op.drop_table("deletions")
