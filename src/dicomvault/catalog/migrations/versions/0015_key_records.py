"""Key records: which site-key generation and recovery key wrap each study key, and whether
the study's objects carry their key themselves (sealed before key records: not shreddable).

Revision ID: 0015
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study_keys") as batch:
        batch.add_column(sa.Column("kek_id", sa.String(16), nullable=False, server_default=""))
        batch.add_column(sa.Column("recovery_id", sa.String(16), nullable=False, server_default=""))
        # Every key made before this revision is also inside its objects' headers.
        batch.add_column(sa.Column("embedded", sa.Boolean, nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("study_keys") as batch:
        batch.drop_column("embedded")
        batch.drop_column("recovery_id")
        batch.drop_column("kek_id")
