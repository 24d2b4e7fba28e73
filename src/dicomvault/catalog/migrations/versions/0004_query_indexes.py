"""Query indexes for C-FIND / QIDO-RS (catalog/query.py).

- studies (study_date, study_time, study_uid) replaces the plain study_date index: date
  ranges and the newest-first study order come from one index scan;
- studies.patient_name: exact and prefix-wildcard PatientName matching (pattern ops on
  PostgreSQL so LIKE 'SMI%' can use it);
- series (study_pk, modality) replaces series (study_pk): ModalitiesInStudy per study from
  the index alone;
- instances (series_pk, sop_class_uid) replaces instances (series_pk): instance counts and
  SOPClassesInStudy from the index alone, with no extra index entry written per ingest.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_studies_date_time_uid", "studies", ["study_date", "study_time", "study_uid"])
    op.drop_index("ix_studies_date", table_name="studies")
    op.create_index(
        "ix_studies_patient_name", "studies", ["patient_name"], postgresql_ops={"patient_name": "varchar_pattern_ops"}
    )
    op.create_index("ix_series_study_modality", "series", ["study_pk", "modality"])
    op.drop_index("ix_series_study", table_name="series")
    op.create_index("ix_instances_series_class", "instances", ["series_pk", "sop_class_uid"])
    op.drop_index("ix_instances_series", table_name="instances")


def downgrade() -> None:
    op.create_index("ix_instances_series", "instances", ["series_pk"])
    op.drop_index("ix_instances_series_class", table_name="instances")
    op.create_index("ix_series_study", "series", ["study_pk"])
    op.drop_index("ix_series_study_modality", table_name="series")
    op.drop_index("ix_studies_patient_name", table_name="studies")
    op.create_index("ix_studies_date", "studies", ["study_date"])
    op.drop_index("ix_studies_date_time_uid", table_name="studies")
