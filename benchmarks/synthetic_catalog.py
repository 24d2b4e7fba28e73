"""A synthetic catalog at scale, for benchmarks that read it (capacity, status).

    from benchmarks.synthetic_catalog import fill
    fill("sqlite:////tmp/big.sqlite3", instances=1_000_000, days=120, sites=("primary", "offsite"))

Bulk SQLAlchemy Core inserts into the real schema (the catalog migrates it first): patients,
study keys, studies (Study Date = arrival day), series (modalities CT, MR, CR, US, MG in turn),
instances, one version each (sizes by modality, received_at spread evenly over the last
``days`` days, oldest first), a verified copy per site, a keep-until row per study (the
default "forever") and the capacity rollup recomputed from the versions. Nothing here goes
through ingest: it is a fixture, not a measurement of it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone

from sqlalchemy import insert

from dicomvault.catalog import Catalog, capacity
from dicomvault.catalog import schema as t

MODALITIES = ("CT", "MR", "CR", "US", "MG")
# (original bytes, stored bytes) of one instance per modality: CT/MR slices compress about 2:1.
SIZES = {"CT": (525_000, 260_000), "MR": (135_000, 70_000), "CR": (8_000_000, 5_200_000),
         "US": (900_000, 800_000), "MG": (30_000_000, 16_000_000)}
SERIES_PER_STUDY, INSTANCES_PER_SERIES, STUDIES_PER_PATIENT = 4, 12, 3
CHUNK = 50_000


def fill(url: str, instances: int = 1_000_000, days: float = 120.0, sites: Sequence[str] = ("primary", "offsite"),
         now: float | None = None) -> Catalog:
    """Fill an empty catalog at ``url``; returns it open. Deterministic for a given ``now``."""
    now = time.time() if now is None else now
    catalog = Catalog(url)
    per_study = SERIES_PER_STUDY * INSTANCES_PER_SERIES
    studies = -(-instances // per_study)
    patients = -(-studies // STUDIES_PER_PATIENT)
    span = days * 86400.0
    with catalog.write_engine.begin() as conn:
        conn.execute(insert(t.patients), [
            {"id": p + 1, "patient_id": f"P{p:07d}", "issuer": "", "patient_name": f"SYNTH^{p}", "birth_date": "19700101",
             "sex": "O"} for p in range(patients)])
        conn.execute(insert(t.study_keys), [
            {"key_id": f"k{s:08d}", "study_uid": f"2.25.{s + 1}", "wrapped_site": b"s", "wrapped_recovery": b"r",
             "created_at": now, "kek_id": "", "recovery_id": "", "embedded": False} for s in range(studies)])
        study_rows, retention_rows = [], []
        for s in range(studies):
            arrived = now - span + span * (s * per_study) / instances
            day = datetime.fromtimestamp(arrived, timezone.utc).strftime("%Y%m%d")
            study_rows.append({"id": s + 1, "study_uid": f"2.25.{s + 1}", "patient_pk": s // STUDIES_PER_PATIENT + 1,
                               "patient_name": f"SYNTH^{s // STUDIES_PER_PATIENT}", "study_date": day,
                               "study_time": "120000", "accession_number": f"A{s}", "study_id": str(s),
                               "study_description": "synthetic", "referring_physician": "", "created_at": arrived,
                               "updated_at": arrived, "attributes_at": arrived})
            retention_rows.append({"study_uid": f"2.25.{s + 1}", "keep_until": None, "rule": "default",
                                   "rules_hash": "", "computed_at": now})
        conn.execute(insert(t.studies), study_rows)
        conn.execute(insert(t.study_retention), retention_rows)
        conn.execute(insert(t.series), [
            {"id": se + 1, "series_uid": f"2.25.{s + 1}.{se % SERIES_PER_STUDY + 1}", "study_pk": s + 1,
             "modality": MODALITIES[s % len(MODALITIES)], "series_number": str(se % SERIES_PER_STUDY + 1),
             "series_description": "", "body_part": "", "attributes_at": 0.0}
            for s in range(studies) for se in range(s * SERIES_PER_STUDY, (s + 1) * SERIES_PER_STUDY)])
    for start in range(0, instances, CHUNK):
        with catalog.write_engine.begin() as conn:
            rows_i, rows_v, rows_c = [], [], []
            for n in range(start, min(start + CHUNK, instances)):
                series_pk, study = n // INSTANCES_PER_SERIES + 1, n // per_study
                original, stored = SIZES[MODALITIES[study % len(MODALITIES)]]
                received = now - span + span * n / instances
                object_id = f"{n:064x}"
                rows_i.append({"id": n + 1, "sop_instance_uid": f"2.25.{study + 1}.{n}", "series_pk": series_pk,
                               "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "instance_number": str(n % 12 + 1)})
                rows_v.append({"id": n + 1, "instance_pk": n + 1, "version": 1, "object_id": object_id,
                               "sha256": "0" * 64, "dataset_sha256": object_id, "size_original": original,
                               "size_stored": stored, "transfer_syntax_uid": "1.2.840.10008.1.2.1", "codec": "zstd",
                               "key_id": f"k{study:08d}", "received_at": received, "source": "synthetic"})
                rows_c.extend({"object_id": object_id, "site": site, "state": "verified", "size": stored,
                               "owed_since": received, "attempts": 0, "next_attempt_at": 0.0, "copied_at": received,
                               "verified_at": received} for site in sites)
            conn.execute(insert(t.instances), rows_i)
            conn.execute(insert(t.versions), rows_v)
            conn.execute(insert(t.copies), rows_c)
    with catalog.write_engine.begin() as conn:  # the capacity rollup ingest would have kept
        capacity.rebuild_rollup(conn)
    if catalog.is_sqlite:
        with catalog.write_engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    return catalog
