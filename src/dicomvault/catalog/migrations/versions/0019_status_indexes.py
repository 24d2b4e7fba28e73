"""Indexes that keep `status` (archive_status) cheap at 10^6 instances: per-site copy totals
and proof ages read from a covering index, the newest copy error from a partial index, and the
archive's byte totals from a covering index over versions (benchmarks/status_scale.py).

Revision ID: 0019
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_copies_site_state_verified_size", "copies", ["site", "state", "verified_at", "size"])
    op.create_index("ix_copies_site_errors", "copies", ["site", "next_attempt_at"],
                    sqlite_where=sa.text("last_error IS NOT NULL"),
                    postgresql_where=sa.text("last_error IS NOT NULL"))
    op.create_index("ix_versions_sizes", "versions", ["size_original", "size_stored"])


def downgrade() -> None:
    for name, table in (("ix_versions_sizes", "versions"), ("ix_copies_site_errors", "copies"),
                        ("ix_copies_site_state_verified_size", "copies")):
        op.drop_index(name, table_name=table)
