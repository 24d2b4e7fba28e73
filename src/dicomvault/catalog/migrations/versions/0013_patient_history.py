"""HL7 ADT patient updates (ingest/adt.py): the history of every applied change, and merged
patients (``merged_into``: a merged-away patient answers no query; instances that still name
it are filed under the survivor).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("patients", sa.Column("merged_into", sa.Integer, nullable=True))  # plain ALTER (no copy)
    op.create_table(
        "patient_history",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("patient_pk", sa.Integer, sa.ForeignKey("patients.id"), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(64), nullable=False, server_default=""),
        sa.Column("prior_patient_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("prior_issuer", sa.String(64), nullable=False, server_default=""),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("sender", sa.String(256), nullable=False),
        sa.Column("control_id", sa.String(64), nullable=False),
        sa.Column("address", sa.String(128), nullable=False, server_default=""),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("old_values", sa.Text, nullable=False, server_default="{}"),
        sa.Column("new_values", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("ix_patient_history_message", "patient_history", ["sender", "control_id"])
    op.create_index("ix_patient_history_patient", "patient_history", ["patient_id"])
    op.create_index("ix_patient_history_prior", "patient_history", ["prior_patient_id"])


def downgrade() -> None:
    op.drop_index("ix_patient_history_prior", "patient_history")
    op.drop_index("ix_patient_history_patient", "patient_history")
    op.drop_index("ix_patient_history_message", "patient_history")
    op.drop_table("patient_history")
    op.drop_column("patients", "merged_into")
