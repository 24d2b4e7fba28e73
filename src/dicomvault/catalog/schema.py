"""Catalog tables (SQLAlchemy Core). Changes go through an Alembic migration in ``migrations/``."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)

metadata = MetaData()

patients = Table(
    "patients",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_id", String(64), nullable=False, default=""),
    Column("issuer", String(64), nullable=False, default=""),
    Column("patient_name", String(324), nullable=False, default=""),
    Column("birth_date", String(8), nullable=False, default=""),
    Column("sex", String(16), nullable=False, default=""),
    # Receipt time of the version whose attributes the row holds (migration 0010; see
    # catalog/db.py ``_FOLLOW``): a version received later replaces them, an earlier one never.
    Column("attributes_at", Float, nullable=False, server_default="0"),
    # An HL7 A40 merged this patient into that one (migration 0013): it answers no query, and an
    # instance that still names it is filed under the survivor (catalog/db.py ``_PATIENT_PK``).
    Column("merged_into", Integer, nullable=True),
    UniqueConstraint("patient_id", "issuer", name="uq_patients_id_issuer"),
)
Index("ix_patients_name", patients.c.patient_name)

study_keys = Table(
    "study_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("wrapped_site", LargeBinary, nullable=False),
    Column("wrapped_recovery", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("kek_id", String(16), nullable=False, server_default=""),  # site-key generation that wraps it
    Column("recovery_id", String(16), nullable=False, server_default=""),  # recovery key it is wrapped for
    # True: the study's objects carry this key in their headers (sealed before key records), so
    # deleting the key records cannot shred copies a write-once site keeps.
    Column("embedded", Boolean, nullable=False, server_default=true()),
)

studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("patient_pk", Integer, ForeignKey("patients.id"), nullable=False),
    Column("patient_name", String(324), nullable=False, default=""),
    Column("study_date", String(8), nullable=False, default=""),
    Column("study_time", String(16), nullable=False, default=""),
    Column("accession_number", String(64), nullable=False, default=""),
    Column("study_id", String(16), nullable=False, default=""),
    Column("study_description", String(256), nullable=False, default=""),
    Column("referring_physician", String(324), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("attributes_at", Float, nullable=False, server_default="0"),  # as patients.attributes_at
)
Index("ix_studies_patient", studies.c.patient_pk)
Index("ix_studies_accession", studies.c.accession_number)
# Query indexes (migration 0004, see catalog/query.py): the date index also yields the
# C-FIND/QIDO study order (date, time, uid) without a sort; the name index serves exact and
# prefix-wildcard PatientName matching (GLOB on SQLite, LIKE with pattern ops on PostgreSQL).
Index("ix_studies_date_time_uid", studies.c.study_date, studies.c.study_time, studies.c.study_uid)
# Its PostgreSQL varchar_pattern_ops are declared in migration 0004 only (the DDL comes from
# migrations, never from this metadata): a postgresql_* argument here would make every
# command import SQLAlchemy's PostgreSQL dialect (~30-60 ms) just to validate it.
Index("ix_studies_patient_name", studies.c.patient_name)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_uid", String(64), nullable=False, unique=True),
    Column("study_pk", Integer, ForeignKey("studies.id"), nullable=False),
    Column("modality", String(16), nullable=False, default=""),
    Column("series_number", String(12), nullable=False, default=""),
    Column("series_description", String(256), nullable=False, default=""),
    Column("body_part", String(64), nullable=False, default=""),
    Column("attributes_at", Float, nullable=False, server_default="0"),  # as patients.attributes_at
)
# Covers ModalitiesInStudy (matching and the computed value) per study (migration 0004).
Index("ix_series_study_modality", series.c.study_pk, series.c.modality)
Index("ix_series_modality", series.c.modality)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("series_pk", Integer, ForeignKey("series.id"), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", String(12), nullable=False, default=""),
)
# Covers per-series instance counts and SOPClassesInStudy without touching the table rows
# (migration 0004; replaces the plain series_pk index, so ingest writes no extra entry).
Index("ix_instances_series_class", instances.c.series_pk, instances.c.sop_class_uid)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_pk", Integer, ForeignKey("instances.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("object_id", String(64), nullable=False, unique=True),
    Column("sha256", String(64), nullable=False),
    Column("dataset_sha256", String(64), nullable=False),
    Column("size_original", BigInteger, nullable=False),
    Column("size_stored", BigInteger, nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("codec", String(16), nullable=False),
    Column("key_id", String(32), ForeignKey("study_keys.key_id"), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("source", String(256), nullable=False, default=""),
    UniqueConstraint("instance_pk", "dataset_sha256", name="uq_versions_instance_content"),
    UniqueConstraint("instance_pk", "version", name="uq_versions_instance_version"),
)
Index("ix_versions_received", versions.c.received_at)
Index("ix_versions_sizes", versions.c.size_original, versions.c.size_stored)  # byte totals (0019)

# Capacity rollups (catalog/capacity.py, migration 0017): per UTC day of receipt and modality,
# and per study, the versions indexed (and the instances they began), their original and stored
# bytes. Kept by ``Catalog.add_version`` and the deletion engine in their own transactions, so
# the capacity figures, ingest charts and retention forecast read a few hundred rows instead of
# summing every version.
capacity_daily = Table(
    "capacity_daily",
    metadata,
    Column("day", Integer, primary_key=True, autoincrement=False),  # days since 1970-01-01 UTC
    Column("modality", String(16), primary_key=True),
    Column("instances", BigInteger, nullable=False, server_default="0"),
    Column("versions", BigInteger, nullable=False, server_default="0"),
    Column("bytes_original", BigInteger, nullable=False, server_default="0"),
    Column("bytes_stored", BigInteger, nullable=False, server_default="0"),
)
capacity_studies = Table(
    "capacity_studies",
    metadata,
    Column("study_uid", String(64), primary_key=True),  # by UID, as study_retention
    Column("instances", BigInteger, nullable=False, server_default="0"),
    Column("versions", BigInteger, nullable=False, server_default="0"),
    Column("bytes_original", BigInteger, nullable=False, server_default="0"),
    Column("bytes_stored", BigInteger, nullable=False, server_default="0"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ts", Float, nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(256), nullable=False, default=""),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=False, default="{}"),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
)
Index("ix_audit_ts", audit_log.c.ts)
Index("ix_audit_action", audit_log.c.action)

# Where each audit export stands (audit/forward.py, migration 0009): one row per destination
# ("syslog"). ``last_id`` is the newest audit_log row delivered, advanced only after a
# delivery; ``error`` (with ``error_at``) the last failure, cleared by the next delivery.
audit_export = Table(
    "audit_export",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("last_id", Integer, nullable=False, server_default="0"),
    Column("sent_at", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("error_at", Float, nullable=True),
)

# Where every object lives (promise 6: commitment means copies) and the replication outbox:
# a row per (object, site). The primary's row is written "verified" in the ingest
# transaction; every other configured site gets an "owed" row in that same transaction, so
# an acknowledged object can never be forgotten by replication. States:
#   owed     - a copy must be made (next_attempt_at says when to try again after a failure)
#   verified - the copy exists and was checked (checksum or read-back) at verified_at
#   dead     - gave up after max attempts; alerted; `dicomvault sites retry` re-owes it
copies = Table(
    "copies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("object_id", String(64), nullable=False),
    Column("site", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("owed_since", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0.0),
    Column("last_error", Text, nullable=True),
    Column("copied_at", Float, nullable=True),
    Column("verified_at", Float, nullable=True),
    UniqueConstraint("object_id", "site", name="uq_copies_object_site"),
)
Index("ix_copies_site_state_next", copies.c.site, copies.c.state, copies.c.next_attempt_at)
Index("ix_copies_site_verified", copies.c.site, copies.c.verified_at)
# status at scale (migration 0019): per-site totals and proof ages from the index alone, the
# newest error from a partial index
Index("ix_copies_site_state_verified_size", copies.c.site, copies.c.state, copies.c.verified_at, copies.c.size)
Index("ix_copies_site_errors", copies.c.site, copies.c.next_attempt_at,
      sqlite_where=text("last_error IS NOT NULL"), postgresql_where=text("last_error IS NOT NULL"))

# Last known reachability of each replica site, written by the replication workers on every
# transition, so `status` in another process sees an outage the server is living through.
site_state = Table(
    "site_state",
    metadata,
    Column("site", String(64), primary_key=True),
    Column("reachable", Integer, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("changed_at", Float, nullable=False),
)

# DICOM Storage Commitment (push model) requests, persisted before the N-ACTION success so a
# restart resumes them. A request is "pending" while any of its items is undecided, "decided"
# once every item is committed or failed (its N-EVENT-REPORT is owed to the requester), and
# "delivered" after the requester answered the N-EVENT-REPORT with success. Delivery retries
# back off through attempts / next_attempt_at.
commitment_requests = Table(
    "commitment_requests",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("transaction_uid", String(64), nullable=False, unique=True),
    Column("calling_ae", String(16), nullable=False),
    Column("called_ae", String(16), nullable=False, default=""),
    Column("peer_address", String(64), nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("decided_at", Float, nullable=True),
    Column("delivered_at", Float, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0.0),
    Column("last_error", Text, nullable=True),
)
Index("ix_commitment_requests_state", commitment_requests.c.state, commitment_requests.c.next_attempt_at)

# One row per referenced SOP instance of a request, in request order. state: pending |
# committed | failed; failure_reason is the DICOM Failure Reason (0008,1197) of a failed item
# (0x0110 policy not met in time, 0x0112 never received, 0x0119 SOP class differs from stored).
commitment_items = Table(
    "commitment_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("request_pk", Integer, ForeignKey("commitment_requests.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("failure_reason", Integer, nullable=True),
    Column("reason", Text, nullable=True),
    Column("decided_at", Float, nullable=True),
    UniqueConstraint("request_pk", "sop_instance_uid", name="uq_commitment_items_request_instance"),
)
Index("ix_commitment_items_request_state", commitment_items.c.request_pk, commitment_items.c.state)

# Restore and network-export jobs (jobs/restore/job.py, migration 0005). A job is planned once:
# its instances, in sending order, become restore_items rows, so a killed job resumes where
# the PACS stopped acknowledging and its report adds up across runs. Job states: running
# (heartbeat_at shows a live runner) | completed | failed (could not run: peer unreachable...)
# | superseded (an operator started the same selection afresh). Item states: pending | sent
# (the peer answered success or warning) | failed (refused, unreadable copy, no context).
restore_jobs = Table(
    "restore_jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),  # restore | export
    Column("peer", String(64), nullable=False),
    Column("destination", String(128), nullable=False),  # AET@host:port at planning time
    Column("selection", Text, nullable=False),  # canonical JSON of the filters
    Column("ordering", String(16), nullable=False),  # urgency | study
    Column("options", Text, nullable=False, default="{}"),  # associations, rate
    Column("state", String(16), nullable=False),
    Column("actor", String(256), nullable=False, default=""),
    Column("total", Integer, nullable=False, default=0),
    Column("total_bytes", BigInteger, nullable=False, default=0),
    Column("runs", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("seconds_sending", Float, nullable=False, default=0.0),  # summed over runs
    Column("last_error", Text, nullable=True),
)
Index("ix_restore_jobs_state", restore_jobs.c.state, restore_jobs.c.peer)

restore_items = Table(
    "restore_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("restore_jobs.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("tier", Integer, nullable=False),  # 0 last 24 h, 1 last 7 days, 2 older (urgency order)
    Column("study_uid", String(64), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("object_id", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("status", Integer, nullable=True),  # the DICOM status the peer answered
    Column("detail", Text, nullable=True),  # error comment or our reason
    Column("sent_syntax", String(64), nullable=True),  # set when transcoded (losslessly)
    Column("run", Integer, nullable=True),
    Column("finished_at", Float, nullable=True),
    UniqueConstraint("job_id", "sop_instance_uid", name="uq_restore_items_job_instance"),
)
Index("ix_restore_items_job_state_position", restore_items.c.job_id, restore_items.c.state, restore_items.c.position)

# Reconciliation with a PACS (jobs/reconcile/job.py, migration 0005): one row per run; the
# summary counts are columns (for `status`), the full difference lists are the JSON report.
reconcile_runs = Table(
    "reconcile_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("peer", String(64), nullable=False),
    Column("date_from", String(8), nullable=False),
    Column("date_to", String(8), nullable=False),
    Column("backfill", Integer, nullable=False, default=0),
    Column("state", String(16), nullable=False),  # running | completed | failed
    Column("actor", String(256), nullable=False, default=""),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("pacs_studies", Integer, nullable=False, default=0),
    Column("vault_studies", Integer, nullable=False, default=0),
    Column("missing_in_vault", Integer, nullable=False, default=0),  # studies (or parts) only the PACS has
    Column("missing_in_pacs", Integer, nullable=False, default=0),  # studies (or parts) only the vault has
    Column("backfilled_instances", Integer, nullable=False, default=0),
    Column("report", Text, nullable=False, default="{}"),
    Column("error", Text, nullable=True),
)
Index("ix_reconcile_runs_peer_started", reconcile_runs.c.peer, reconcile_runs.c.started_at)

# Sites taken out of service after showing the signature of ransomware or mass corruption
# (archive/quarantine.py, migration 0006): many copies changed, unknown or unreadable at once.
# A row with cleared_at NULL is in force: the site is neither a source for repair nor for
# reads, and is not repaired, until an operator clears it (`dicomvault sites clear NAME`).
site_quarantine = Table(
    "site_quarantine",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("site", String(64), nullable=False),
    Column("since", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("cleared_at", Float, nullable=True),
    Column("cleared_by", String(256), nullable=True),
)
Index("ix_site_quarantine_site", site_quarantine.c.site, site_quarantine.c.cleared_at)

# Encrypted catalog snapshots written to each site (jobs/rebuild/snapshot.py, migration 0007), so a
# site alone plus the recovery key rebuilds the catalog (promise 3). One row per attempt.
catalog_snapshots = Table(
    "catalog_snapshots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("site", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("state", String(16), nullable=False),
    Column("size", BigInteger, nullable=False, server_default="0"),
    Column("row_count", BigInteger, nullable=False, server_default="0"),
    Column("audit_head", String(64), nullable=False, server_default=""),
    Column("error", Text, nullable=True),
)
Index("ix_catalog_snapshots_site", catalog_snapshots.c.site, catalog_snapshots.c.started_at)

# Restore drills (jobs/drill/job.py, migration 0008): one row per site per drill. A few studies
# are restored from that site alone and checked byte for byte; ``picks`` (JSON) says which
# studies and why (random, newest, date:YYYYMMDD), ``failures`` (JSON) each object that did
# not come back and the problem. States: running | success | failure | interrupted (the
# process stopped first; not a verdict on the site).
drill_runs = Table(
    "drill_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("site", String(64), nullable=False),
    Column("actor", String(256), nullable=False, server_default=""),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("state", String(16), nullable=False),
    Column("target", String(64), nullable=False),  # "scratch" or the [peers.NAME] sent to
    Column("studies", Integer, nullable=False, server_default="0"),
    Column("instances", Integer, nullable=False, server_default="0"),
    Column("bytes", BigInteger, nullable=False, server_default="0"),
    Column("seconds", Float, nullable=False, server_default="0"),
    Column("picks", Text, nullable=False, server_default="[]"),
    Column("failures", Text, nullable=False, server_default="[]"),
)
Index("ix_drill_runs_site_started", drill_runs.c.site, drill_runs.c.started_at)

# Retention (catalog/retention.py, migration 0011): each study's keep-until date under the
# [retention] rules, computed at ingest (when a study gains a series, SOP class or sender) and
# for every study whose ``rules_hash`` differs from the rules in force (a rule change).
# ``keep_until`` is "YYYY-MM-DD", the last day the study must be kept; NULL = kept forever.
# ``rule`` names the [[retention.rules]] entry that decided (or "default"). Keyed by UID, not
# by a foreign key: the deletion engine removes the study rows and this row together.
study_retention = Table(
    "study_retention",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("keep_until", String(10), nullable=True),
    Column("rule", String(64), nullable=False),
    Column("rules_hash", String(32), nullable=False),
    Column("computed_at", Float, nullable=False),
)
Index("ix_study_retention_keep_until", study_retention.c.keep_until)
Index("ix_study_retention_hash", study_retention.c.rules_hash)

# Legal holds (catalog/holds.py, migration 0011): a hold on one study (scope "study", target
# the Study Instance UID) or on every study of a patient (scope "patient", target the Patient
# ID, any issuer, studies arriving later included). In force while released_at is NULL; a
# held study is never due for deletion and ``deletable()`` refuses it.
legal_holds = Table(
    "legal_holds",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("scope", String(16), nullable=False),
    Column("target", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("released_at", Float, nullable=True),
    Column("released_by", String(256), nullable=True),
    Column("release_reason", Text, nullable=True),
)
Index("ix_legal_holds_target", legal_holds.c.scope, legal_holds.c.target, legal_holds.c.released_at)
# IOCM rejections (ingest/iocm.py, migration 0012): one row per rejected SOP Instance UID, also
# for instances not (yet) in the archive, so one arriving later is hidden at once. Hidden from
# every answer (catalog/rejections.py ``visible``); due for deletion once ``delete_after`` passed.
# kind "note": the rejection note itself, hidden from answers like what it rejects but kept as
# evidence (never due: ``delete_after`` NULL); kind "instance": a rejected instance.
rejections = Table(
    "rejections",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("kind", String(8), nullable=False, server_default="instance"),
    Column("study_uid", String(64), nullable=False, server_default=""),  # as the note names them
    Column("series_uid", String(64), nullable=False, server_default=""),
    Column("code", String(16), nullable=False),  # DCM 113001 | 113037 | 113038 | 113039
    Column("meaning", String(64), nullable=False, server_default=""),
    Column("kos_uid", String(64), nullable=False),  # the rejection note (archived as evidence)
    Column("actor", String(256), nullable=False, server_default=""),
    Column("rejected_at", Float, nullable=False),
    Column("delete_after", Float, nullable=True),
)
Index("ix_rejections_delete_after", rejections.c.delete_after)
Index("ix_rejections_kos", rejections.c.kos_uid)

# HL7 ADT changes applied to patients (ingest/adt.py, catalog/patients.py, migration 0013): who
# (sender = MSH-3@MSH-4, address), when, which message (control_id = MSH-10), the event, and the
# values before and after (JSON). A merge or change of identifier also names the prior ID.
patient_history = Table(
    "patient_history",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_pk", Integer, ForeignKey("patients.id"), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("issuer", String(64), nullable=False, server_default=""),
    Column("prior_patient_id", String(64), nullable=False, server_default=""),
    Column("prior_issuer", String(64), nullable=False, server_default=""),
    Column("event", String(16), nullable=False),
    Column("sender", String(256), nullable=False),
    Column("control_id", String(64), nullable=False),
    Column("address", String(128), nullable=False, server_default=""),
    Column("received_at", Float, nullable=False),
    Column("old_values", Text, nullable=False, server_default="{}"),
    Column("new_values", Text, nullable=False, server_default="{}"),
)
Index("ix_patient_history_message", patient_history.c.sender, patient_history.c.control_id)
Index("ix_patient_history_patient", patient_history.c.patient_id)
Index("ix_patient_history_prior", patient_history.c.prior_patient_id)

# Deletions (catalog/deletions.py, jobs/retention/delete.py, migration 0014): the proof that a
# study (or rejected instances) was deleted, kept for good: no path deletes these rows. What
# (study, patient, counts, bytes, the SOP Instance UIDs as JSON), why (kind request |
# retention | rejection, the rule or rejection code, the free-text reason), who and when.
# ``objects`` (JSON [[object id, stored bytes], ...]) is what each site is asked to remove, so
# a site that was unreachable can be finished later. ``completed_at``: every site has an outcome.
deletions = Table(
    "deletions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("actor", String(256), nullable=False),
    Column("why", String(16), nullable=False),  # request | retention | rejection
    Column("rule", String(64), nullable=False, server_default=""),  # retention rule or rejection code
    Column("reason", Text, nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("patient_id", String(64), nullable=False, server_default=""),
    Column("instances", Integer, nullable=False),
    Column("versions", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("sop_uids", Text, nullable=False, server_default="[]"),
    Column("objects", Text, nullable=False, server_default="[]"),
    Column("completed_at", Float, nullable=True),
    # The study key shredded with a whole study ("" for instances of a study that stays): each
    # site's key record is deleted with its objects. ``key_embedded``: the study's objects carry
    # their key (sealed before key records), so copies a site keeps cannot be shredded.
    Column("key_id", String(32), nullable=False, server_default=""),
    Column("key_embedded", Boolean, nullable=False, server_default=false()),
)
Index("ix_deletions_created", deletions.c.created_at)
Index("ix_deletions_study", deletions.c.study_uid)

# Per site outcome of a deletion (and the task that gets it there). state: pending (to do, or
# the site was unreachable: retried from next_attempt_at) | deleted (every object gone) | locked
# (``locked`` objects the site refused to remove: Object Lock, a write-once partner vault) |
# error (the site could not be opened) | not ours (a dicom:// PACS: outside our control).
deletion_sites = Table(
    "deletion_sites",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("deletion_id", Integer, ForeignKey("deletions.id"), nullable=False),
    Column("site", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("objects", Integer, nullable=False, server_default="0"),
    Column("deleted", Integer, nullable=False, server_default="0"),
    Column("locked", Integer, nullable=False, server_default="0"),
    Column("missing", Integer, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("deletion_id", "site", name="uq_deletion_sites_deletion_site"),
)
Index("ix_deletion_sites_state", deletion_sites.c.state, deletion_sites.c.next_attempt_at)

# Alerts (jobs/alerts/engine.py, migration 0016): one row per occurrence of a condition (``key``
# stable across occurrences; a condition that clears and comes back is a new row). Open while
# ``resolved_at`` is NULL. ``last_sent_at``: the last raise or reminder handed to the channels;
# an acknowledged alert gets no reminders.
alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(200), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("raised_at", Float, nullable=False),
    Column("last_sent_at", Float, nullable=True),
    Column("reminders", Integer, nullable=False, server_default="0"),
    Column("acknowledged_by", String(256), nullable=True),
    Column("acknowledged_at", Float, nullable=True),
    Column("ack_note", Text, nullable=False, server_default=""),
    Column("resolved_at", Float, nullable=True),
)
Index("ix_alerts_key_resolved", alerts.c.key, alerts.c.resolved_at)

# Each alert channel's delivery state as `serve` last saw it (a failing channel is itself shown
# in `status`). ``pending``: notices waiting for a retry.
alert_channels = Table(
    "alert_channels",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("ok", Boolean, nullable=False),
    Column("error", Text, nullable=True),
    Column("failing_since", Float, nullable=True),
    Column("last_ok_at", Float, nullable=True),
    Column("pending", Integer, nullable=False, server_default="0"),
    Column("updated_at", Float, nullable=False),
)
