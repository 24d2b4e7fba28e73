"""Capacity rollups: versions and bytes per day of receipt and modality, and per study
(catalog/capacity.py), filled from the versions already indexed.

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def _counts() -> list[sa.Column]:
    return [sa.Column(name, sa.BigInteger, nullable=False, server_default="0")
            for name in ("instances", "versions", "bytes_original", "bytes_stored")]


def upgrade() -> None:
    op.create_table("capacity_daily", sa.Column("day", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("modality", sa.String(16), primary_key=True), *_counts())
    op.create_table("capacity_studies", sa.Column("study_uid", sa.String(64), primary_key=True), *_counts())
    day = ("CAST(FLOOR(v.received_at / 86400) AS INTEGER)" if op.get_bind().dialect.name == "postgresql"
           else "CAST(v.received_at / 86400 AS INTEGER)")  # SQLite truncates; receipt times are positive
    sums = "SUM(CASE WHEN v.version = 1 THEN 1 ELSE 0 END), COUNT(*), SUM(v.size_original), SUM(v.size_stored)"
    versions = ("FROM versions v JOIN instances i ON i.id = v.instance_pk JOIN series se ON se.id = i.series_pk"
                " JOIN studies st ON st.id = se.study_pk")
    columns = "instances, versions, bytes_original, bytes_stored"
    op.execute(f"INSERT INTO capacity_daily (day, modality, {columns})"
               f" SELECT {day}, se.modality, {sums} {versions} GROUP BY {day}, se.modality")
    op.execute(f"INSERT INTO capacity_studies (study_uid, {columns})"
               f" SELECT st.study_uid, {sums} {versions} GROUP BY st.study_uid")


def downgrade() -> None:
    op.drop_table("capacity_studies")
    op.drop_table("capacity_daily")
