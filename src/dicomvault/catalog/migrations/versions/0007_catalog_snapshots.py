"""Catalog snapshots: which encrypted catalog snapshot went to which site, and when.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_snapshots",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("row_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("audit_head", sa.String(64), nullable=False, server_default=""),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_catalog_snapshots_site", "catalog_snapshots", ["site", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_catalog_snapshots_site", "catalog_snapshots")
    op.drop_table("catalog_snapshots")
