"""Key records: which site-key generation and recovery key wrap each study key, and whether
the study's objects carry their key themselves (sealed before key records: not shreddable).

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:  # plain ALTER TABLE (no table copy: SQLite would trip on the foreign keys)
    op.add_column("study_keys", sa.Column("kek_id", sa.String(16), nullable=False, server_default=""))
    op.add_column("study_keys", sa.Column("recovery_id", sa.String(16), nullable=False, server_default=""))
    # Every key made before this revision is also inside its objects' headers.
    op.add_column("study_keys", sa.Column("embedded", sa.Boolean, nullable=False, server_default=sa.true()))


def downgrade() -> None:  # SQLite >= 3.35 drops a column in place
    for column in ("embedded", "recovery_id", "kek_id"):
        op.drop_column("study_keys", column)
