"""Initial catalog: patients, studies, series, instances, versions, study keys, audit log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(64), nullable=False),
        sa.Column("patient_name", sa.String(324), nullable=False),
        sa.Column("birth_date", sa.String(8), nullable=False),
        sa.Column("sex", sa.String(16), nullable=False),
        sa.UniqueConstraint("patient_id", "issuer", name="uq_patients_id_issuer"),
    )
    op.create_index("ix_patients_name", "patients", ["patient_name"])
    op.create_table(
        "study_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("study_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("wrapped_site", sa.LargeBinary, nullable=False),
        sa.Column("wrapped_recovery", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("patient_pk", sa.Integer, sa.ForeignKey("patients.id"), nullable=False),
        sa.Column("patient_name", sa.String(324), nullable=False),
        sa.Column("study_date", sa.String(8), nullable=False),
        sa.Column("study_time", sa.String(16), nullable=False),
        sa.Column("accession_number", sa.String(64), nullable=False),
        sa.Column("study_id", sa.String(16), nullable=False),
        sa.Column("study_description", sa.String(256), nullable=False),
        sa.Column("referring_physician", sa.String(324), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_studies_patient", "studies", ["patient_pk"])
    op.create_index("ix_studies_date", "studies", ["study_date"])
    op.create_index("ix_studies_accession", "studies", ["accession_number"])
    op.create_table(
        "series",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("series_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("study_pk", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("series_number", sa.String(12), nullable=False),
        sa.Column("series_description", sa.String(256), nullable=False),
        sa.Column("body_part", sa.String(64), nullable=False),
    )
    op.create_index("ix_series_study", "series", ["study_pk"])
    op.create_index("ix_series_modality", "series", ["modality"])
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("series_pk", sa.Integer, sa.ForeignKey("series.id"), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.String(12), nullable=False),
    )
    op.create_index("ix_instances_series", "instances", ["series_pk"])
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("instance_pk", sa.Integer, sa.ForeignKey("instances.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("object_id", sa.String(64), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("dataset_sha256", sa.String(64), nullable=False),
        sa.Column("size_original", sa.BigInteger, nullable=False),
        sa.Column("size_stored", sa.BigInteger, nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("codec", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(32), sa.ForeignKey("study_keys.key_id"), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.UniqueConstraint("instance_pk", "dataset_sha256", name="uq_versions_instance_content"),
        sa.UniqueConstraint("instance_pk", "version", name="uq_versions_instance_version"),
    )
    op.create_index("ix_versions_received", "versions", ["received_at"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
    )
    op.create_index("ix_audit_ts", "audit_log", ["ts"])
    op.create_index("ix_audit_action", "audit_log", ["action"])


def downgrade() -> None:
    for table in ("audit_log", "versions", "instances", "series", "studies", "study_keys", "patients"):
        op.drop_table(table)
