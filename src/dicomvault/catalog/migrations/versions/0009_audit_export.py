"""ATNA audit export: where each export of the audit log stands (audit/forward.py).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_export",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("last_id", sa.Integer, nullable=False, server_default="0"),
        sa.Column("sent_at", sa.Float, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("error_at", sa.Float, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("audit_export")
