"""Retention and legal hold: each study's keep-until date and the legal holds.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_retention",
        sa.Column("study_uid", sa.String(64), primary_key=True),
        sa.Column("keep_until", sa.String(10), nullable=True),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("rules_hash", sa.String(32), nullable=False),
        sa.Column("computed_at", sa.Float, nullable=False),
    )
    op.create_index("ix_study_retention_keep_until", "study_retention", ["keep_until"])
    op.create_index("ix_study_retention_hash", "study_retention", ["rules_hash"])
    op.create_table(
        "legal_holds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("released_at", sa.Float, nullable=True),
        sa.Column("released_by", sa.String(256), nullable=True),
        sa.Column("release_reason", sa.Text, nullable=True),
    )
    op.create_index("ix_legal_holds_target", "legal_holds", ["scope", "target", "released_at"])


def downgrade() -> None:
    op.drop_table("legal_holds")
    op.drop_table("study_retention")
