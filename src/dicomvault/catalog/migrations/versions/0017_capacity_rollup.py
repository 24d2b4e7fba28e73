"""Capacity rollup: versions and bytes per day of receipt and modality (catalog/capacity.py),
filled from the versions already indexed.

Revision ID: 0017
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "capacity_daily",
        sa.Column("day", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("modality", sa.String(16), primary_key=True),
        sa.Column("instances", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("versions", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_original", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_stored", sa.BigInteger, nullable=False, server_default="0"),
    )
    day = ("CAST(FLOOR(v.received_at / 86400) AS INTEGER)" if op.get_bind().dialect.name == "postgresql"
           else "CAST(v.received_at / 86400 AS INTEGER)")  # SQLite truncates; receipt times are positive
    op.execute(
        "INSERT INTO capacity_daily (day, modality, instances, versions, bytes_original, bytes_stored)"
        f" SELECT {day}, se.modality, SUM(CASE WHEN v.version = 1 THEN 1 ELSE 0 END), COUNT(*),"
        " SUM(v.size_original), SUM(v.size_stored)"
        " FROM versions v JOIN instances i ON i.id = v.instance_pk JOIN series se ON se.id = i.series_pk"
        f" GROUP BY {day}, se.modality")


def downgrade() -> None:
    op.drop_table("capacity_daily")
