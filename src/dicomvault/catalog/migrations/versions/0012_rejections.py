"""IOCM rejections: instances a rejection note (Key Object Selection) rejected (ingest/iocm.py).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rejections",
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False, server_default="instance"),
        sa.Column("study_uid", sa.String(64), nullable=False, server_default=""),
        sa.Column("series_uid", sa.String(64), nullable=False, server_default=""),
        sa.Column("code", sa.String(16), nullable=False),
        sa.Column("meaning", sa.String(64), nullable=False, server_default=""),
        sa.Column("kos_uid", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False, server_default=""),
        sa.Column("rejected_at", sa.Float, nullable=False),
        sa.Column("delete_after", sa.Float, nullable=True),
    )
    op.create_index("ix_rejections_delete_after", "rejections", ["delete_after"])
    op.create_index("ix_rejections_kos", "rejections", ["kos_uid"])


def downgrade() -> None:
    op.drop_index("ix_rejections_kos", "rejections")
    op.drop_index("ix_rejections_delete_after", "rejections")
    op.drop_table("rejections")
