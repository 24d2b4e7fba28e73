"""Site quarantine: sites taken out of service after a mass-damage (ransomware) signature.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "site_quarantine",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("since", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("cleared_at", sa.Float, nullable=True),
        sa.Column("cleared_by", sa.String(256), nullable=True),
    )
    op.create_index("ix_site_quarantine_site", "site_quarantine", ["site", "cleared_at"])


def downgrade() -> None:
    op.drop_index("ix_site_quarantine_site", "site_quarantine")
    op.drop_table("site_quarantine")
