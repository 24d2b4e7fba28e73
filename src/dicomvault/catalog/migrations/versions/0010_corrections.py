"""Corrections follow the newest version: patients, studies and series record the receipt time
of the version whose attributes they hold (catalog/db.py ``_FOLLOW``).

Existing rows get 0 ("older than anything"): their attributes came from some earlier version,
so the next version indexed under them replaces them, as it would have had it been followed.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TABLES = ("patients", "studies", "series")


def upgrade() -> None:
    for table in _TABLES:  # plain ALTER TABLE (no table copy: SQLite would trip on the foreign keys)
        op.add_column(table, sa.Column("attributes_at", sa.Float, nullable=False, server_default="0"))


def downgrade() -> None:
    for table in _TABLES:  # SQLite >= 3.35 drops a column in place
        op.drop_column(table, "attributes_at")
