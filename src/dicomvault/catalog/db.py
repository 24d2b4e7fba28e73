"""Opening the catalog, migrating it, and the queries ingest and the CLI need.

Writes are serialised by one lock per process and, across processes (a CLI command may
append audit rows while the server runs), by ``BEGIN IMMEDIATE`` on SQLite and by a
transaction-scoped advisory lock on PostgreSQL, because the audit hash chain needs a strict
order (two writers reading the same last hash would fork it). Every ingest is one
transaction (patient, study, series, instance, version and the audit row), so a crash
leaves either all or nothing.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit survives a process crash at
once, and survives power loss after the next ``barrier()``. Ingest does not depend on the
commit's own fsync: the object's durable intent on the site can rebuild a lost row (see
``sites/file.py``), and intents are only released after a barrier.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, create_engine, event, func, insert, inspect, or_, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import capacity, keys
from . import schema as t
from .deletions import mark as deletion_mark
from .permissions import protect_sqlite_catalog
from dicomvault.dicom.records import InstanceAttributes, VersionRecord

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
HEAD_REVISION = "0019"  # bump together with every new file in migrations/versions/


class CatalogError(Exception):
    """The catalog database cannot be opened or written."""


def _version_select() -> Any:
    return (
        select(
            t.instances.c.sop_instance_uid, t.versions.c.version, t.versions.c.object_id, t.versions.c.sha256,
            t.versions.c.dataset_sha256, t.versions.c.size_original, t.versions.c.size_stored,
            t.versions.c.transfer_syntax_uid, t.versions.c.codec, t.versions.c.key_id,
            t.versions.c.received_at, t.versions.c.source, t.studies.c.study_uid, t.series.c.series_uid,
        )
        .select_from(
            t.versions.join(t.instances, t.versions.c.instance_pk == t.instances.c.id)
            .join(t.series, t.instances.c.series_pk == t.series.c.id)
            .join(t.studies, t.series.c.study_pk == t.studies.c.id)
        )
        .order_by(t.studies.c.study_uid, t.series.c.series_uid, t.instances.c.sop_instance_uid, t.versions.c.version)
    )


# Ingest's statements are built once: constructing a Core statement costs far more than
# executing a cached one, and ingest runs a handful per instance.
_VERSION_BY_CONTENT = _version_select().where(
    t.instances.c.sop_instance_uid == bindparam("sop_uid"), t.versions.c.dataset_sha256 == bindparam("dataset_sha256")
)
# A patient merged away (HL7 A40) stands for its survivor: what still arrives under it is filed there.
_PATIENT_PK = select(func.coalesce(t.patients.c.merged_into, t.patients.c.id)).where(
    t.patients.c.patient_id == bindparam("patient_id"), t.patients.c.issuer == bindparam("issuer")
)
_STUDY_PK = select(t.studies.c.id).where(t.studies.c.study_uid == bindparam("study_uid"))
_SERIES_PK = select(t.series.c.id).where(t.series.c.series_uid == bindparam("series_uid"))
_INSTANCE_PK = select(t.instances.c.id).where(t.instances.c.sop_instance_uid == bindparam("sop_instance_uid"))
_LATEST_VERSION = select(func.max(t.versions.c.version)).where(t.versions.c.instance_pk == bindparam("instance_pk"))
_HAS_OBJECT = select(t.versions.c.id).where(t.versions.c.object_id == bindparam("object_id"))
_INSERT = {
    table.name: insert(table)
    for table in (t.patients, t.studies, t.series, t.instances, t.versions, t.study_keys, t.copies)
}
PRIMARY_SITE = "primary"

# Corrections follow the newest version (issue 19). A patient, study or series row carries the
# attributes of the most recently received version indexed under it; ``attributes_at`` is that
# version's receipt time. A version received later replaces them, an earlier one (indexed late:
# crash recovery, rebuild-index) never does. The UPDATE runs once per touched row per write
# transaction (the group commit), for the latest received version among its rows, and writes
# only when a value differs: first-time instances of a known study cost no row write.
_FOLLOWED = {
    "patient": (t.patients, ("patient_name", "birth_date", "sex")),
    "study": (t.studies, ("patient_pk", "patient_name", "study_date", "study_time", "accession_number",
                          "study_id", "study_description", "referring_physician")),
    "series": (t.series, ("modality", "series_number", "series_description", "body_part")),
}


def _follow_statement(table: Any, columns: tuple[str, ...]) -> Any:
    values: dict[str, Any] = {c: bindparam(f"v_{c}") for c in columns}
    values["attributes_at"] = bindparam("at")
    if "updated_at" in table.c:
        values["updated_at"] = bindparam("now")
    return (update(table)
            .where(table.c.id == bindparam("pk"), table.c.attributes_at <= bindparam("at"),
                   or_(*(table.c[c] != bindparam(f"v_{c}") for c in columns)))
            .values(values))


_FOLLOW = {kind: _follow_statement(table, columns) for kind, (table, columns) in _FOLLOWED.items()}
# An instance follows its newest version, which is always the one being added (version numbers
# are given in indexing order, and recovery and rebuild index in receipt order).
_INSTANCE_FOLLOW = (update(t.instances)
                    .where(t.instances.c.id == bindparam("pk"))
                    .values(series_pk=bindparam("v_series_pk"), sop_class_uid=bindparam("v_sop_class_uid"),
                            instance_number=bindparam("v_instance_number")))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (see _sqlite_begin)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    """Take SQLite's write lock at BEGIN, so read-then-write (the audit chain) cannot fork."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin_deferred(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


# PostgreSQL's counterpart of BEGIN IMMEDIATE: every catalog writer of this database, in any
# process, takes this advisory lock first; the transaction's end releases it.
_PG_WRITE_LOCK = text("SELECT pg_advisory_xact_lock(4850241651937214039)")  # any fixed 64-bit key


class Catalog:
    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.is_sqlite = url.startswith("sqlite")
            if self.is_sqlite:
                path = url.split("///", 1)[-1]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    protect_sqlite_catalog(Path(path))  # patient names in clear: 0600, side files too
                args = {"check_same_thread": False, "timeout": 30}
                self.engine: Engine = create_engine(url, connect_args=args)
                event.listen(self.engine, "connect", _sqlite_pragmas)
                event.listen(self.engine, "begin", _sqlite_begin_deferred)
                self.write_engine: Engine = create_engine(url, connect_args=args, pool_size=1, max_overflow=0)
                event.listen(self.write_engine, "connect", _sqlite_pragmas)
                event.listen(self.write_engine, "begin", _sqlite_begin_immediate)
            else:
                self.engine = create_engine(url, pool_pre_ping=True)
                self.write_engine = self.engine
            self.write_lock = threading.RLock()
            # uid -> primary key of rows that never change once written (never deleted in place)
            self._pk_cache: dict[tuple[str, str], int] = {}
            self._txn_keys: dict[tuple[str, str], int] = {}
            # (kind, pk) -> (receipt time, values) of the newest version this transaction
            # indexed under an existing row; applied by _follow_newest before it commits
            self._txn_follow: dict[tuple[str, int], tuple[float, dict[str, Any]]] = {}
            self._txn_capacity = capacity.Tally()  # what this transaction adds to the capacity rollups
            # Called inside the transaction with the (kind, pk) rows a newer version changed:
            # what derives from them (retention's keep-until dates) follows in the same commit.
            self.on_followed: Callable[[Connection, list[tuple[str, int]]], None] | None = None
            # Called when a deletion (by this process or another) removed rows: whoever caches
            # keys of catalog rows (the ingestor's study keys) forgets them. See ``notice_deletions``.
            self.on_deleted: list[Callable[[], None]] = []
            self._deletion_mark: int | None = None
            self._migrate()
        except SQLAlchemyError as exc:
            raise CatalogError(f"cannot open catalog {url}: {exc}") from exc

    def _migrate(self) -> None:
        """Bring the schema to head. Alembic is imported only when there is work to do."""
        with self.engine.connect() as connection:
            if inspect(connection).has_table("alembic_version"):
                current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
                if current == HEAD_REVISION:
                    return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.write_engine.begin() as connection:
            if not self.is_sqlite:  # another process may be migrating the same database
                connection.execute(_PG_WRITE_LOCK)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()
        self.write_engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One serialised write transaction; commits on success, rolls back on any error."""
        with self.write_lock:
            new_keys: dict[tuple[str, str], int] = {}
            self._txn_keys = new_keys
            self._txn_follow = {}
            self._txn_capacity = capacity.Tally()
            with self.write_engine.begin() as connection:
                if not self.is_sqlite:
                    connection.execute(_PG_WRITE_LOCK)
                self.notice_deletions(connection)
                yield connection
                if self._txn_follow:
                    self._follow_newest(connection)
                if self._txn_capacity:
                    capacity.apply(connection, self._txn_capacity)
            self._pk_cache.update(new_keys)  # only keys of committed rows are remembered
            if len(self._pk_cache) > 200_000:
                self._pk_cache.clear()

    def forget_patient(self, patient_id: str, issuer: str) -> None:
        """An ADT merge or change of identifier re-pointed this ID: the next instance naming it
        looks its patient up again (``_PATIENT_PK``) instead of trusting the cached key."""
        self._pk_cache.pop(("patient", f"{issuer}\\{patient_id}"), None)

    def notice_deletions(self, conn: Connection) -> None:
        """Forget cached primary keys (and tell ``on_deleted``) when a deletion record was
        written since the last look, by any process: a study deleted and sent again must be
        indexed afresh, never under the rows (or the study key) that were removed. One
        ``max(id)`` per write transaction; ingest also asks before it picks a study key."""
        current = deletion_mark(conn)
        if self._deletion_mark is not None and current != self._deletion_mark:
            self.forget_cached_keys()
        self._deletion_mark = current

    def forget_cached_keys(self) -> None:
        self._pk_cache.clear()
        self._txn_keys.clear()
        for listener in list(self.on_deleted):
            listener()

    def barrier(self) -> None:
        """Make every transaction committed so far survive power loss."""
        if not self.is_sqlite:
            return  # server databases fsync their own commits
        with self.write_lock:
            # Outside any transaction (the raw connection is in autocommit mode). A checkpoint
            # syncs the WAL before copying it back, which hardens every earlier commit;
            # PASSIVE never waits for readers.
            raw = self.write_engine.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                cursor.fetchall()
                cursor.close()
            finally:
                raw.close()

    def _cached_pk(self, conn: Connection, kind: str, key: str, lookup: Any, params: dict[str, Any],
                   create: Any, values: dict[str, Any]) -> int:
        """The row's primary key; a row that already existed will follow ``values`` if they are
        newer (``_follow_newest``, at the end of the transaction)."""
        cached = self._pk_cache.get((kind, key))
        if cached is None:
            pk = conn.execute(lookup, params).scalar()
            if pk is None:
                pk = conn.execute(create, values).inserted_primary_key[0]
                self._txn_keys[(kind, key)] = int(pk)
                return int(pk)
            cached = self._txn_keys[(kind, key)] = int(pk)
        at = values["attributes_at"]
        pending = self._txn_follow.get((kind, cached))
        if pending is None or at >= pending[0]:  # within a transaction, the latest received wins
            self._txn_follow[(kind, cached)] = (at, values)
        return cached

    def _follow_newest(self, conn: Connection) -> None:
        """At the end of a write transaction: one guarded UPDATE per row a version touched
        (not per version), so a batch of first-time instances of one study costs 3 statements."""
        now = time.time()
        changed = []
        for (kind, pk), (at, values) in self._txn_follow.items():
            params = {f"v_{c}": values[c] for c in _FOLLOWED[kind][1]}
            params.update(pk=pk, at=at, now=now)
            if conn.execute(_FOLLOW[kind], params).rowcount:
                changed.append((kind, pk))
        if changed and self.on_followed is not None:
            self.on_followed(conn, changed)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            yield connection

    # --- ingest -------------------------------------------------------------------------

    def find_version_by_content(self, conn: Connection, sop_uid: str, dataset_sha256: str) -> VersionRecord | None:
        row = conn.execute(_VERSION_BY_CONTENT, {"sop_uid": sop_uid, "dataset_sha256": dataset_sha256}).first()
        return _version(row) if row else None

    def study_key_row(self, conn: Connection, study_uid: str) -> Any:
        return keys.by_study(conn, study_uid)

    def add_study_key(self, conn: Connection, study_uid: str, key_id: str, wrapped_site: bytes, wrapped_recovery: bytes,
                      *, kek_id: str = "", recovery_id: str = "", embedded: bool = True) -> None:
        keys.add(conn, study_uid, key_id, wrapped_site, wrapped_recovery, kek_id=kek_id, recovery_id=recovery_id,
                 embedded=embedded)

    def _upsert_hierarchy(self, conn: Connection, a: InstanceAttributes, now: float) -> tuple[int, bool]:
        """Patient, study, series and instance rows for ``a``: (instance pk, instance is new).

        ``now`` is the version's receipt time: rows that exist take ``a``'s values when no later
        received version set theirs (``_FOLLOW``)."""
        patient_pk = self._cached_pk(
            conn, "patient", f"{a.issuer}\\{a.patient_id}",
            _PATIENT_PK, {"patient_id": a.patient_id, "issuer": a.issuer},
            _INSERT["patients"], {"patient_id": a.patient_id, "issuer": a.issuer, "patient_name": a.patient_name,
                                  "birth_date": a.birth_date, "sex": a.sex, "attributes_at": now},
        )
        study_pk = self._cached_pk(
            conn, "study", a.study_uid, _STUDY_PK, {"study_uid": a.study_uid},
            _INSERT["studies"], {
                "study_uid": a.study_uid, "patient_pk": patient_pk, "patient_name": a.patient_name,
                "study_date": a.study_date, "study_time": a.study_time, "accession_number": a.accession_number,
                "study_id": a.study_id, "study_description": a.study_description,
                "referring_physician": a.referring_physician, "created_at": now, "updated_at": now,
                "attributes_at": now,
            },
        )
        series_pk = self._cached_pk(
            conn, "series", a.series_uid, _SERIES_PK, {"series_uid": a.series_uid},
            _INSERT["series"], {
                "series_uid": a.series_uid, "study_pk": study_pk, "modality": a.modality,
                "series_number": a.series_number, "series_description": a.series_description,
                "body_part": a.body_part, "attributes_at": now,
            },
        )
        instance_pk = conn.execute(_INSTANCE_PK, {"sop_instance_uid": a.sop_instance_uid}).scalar()
        if instance_pk is not None:
            conn.execute(_INSTANCE_FOLLOW, {"pk": instance_pk, "v_series_pk": series_pk,
                                            "v_sop_class_uid": a.sop_class_uid,
                                            "v_instance_number": a.instance_number})
            return int(instance_pk), False
        instance_pk = conn.execute(_INSERT["instances"], {
            "sop_instance_uid": a.sop_instance_uid, "series_pk": series_pk,
            "sop_class_uid": a.sop_class_uid, "instance_number": a.instance_number,
        }).inserted_primary_key[0]
        return int(instance_pk), True

    def add_version(self, conn: Connection, a: InstanceAttributes, record: VersionRecord) -> int:
        """Index a stored object; returns the version number it got (1 for a new instance)."""
        instance_pk, new_instance = self._upsert_hierarchy(conn, a, record.received_at)
        version = 1
        if not new_instance:
            latest = conn.execute(_LATEST_VERSION, {"instance_pk": instance_pk}).scalar()
            version = (latest or 0) + 1
        conn.execute(_INSERT["versions"], {
            "instance_pk": instance_pk, "version": version, "object_id": record.object_id, "sha256": record.sha256,
            "dataset_sha256": record.dataset_sha256, "size_original": record.size_original,
            "size_stored": record.size_stored, "transfer_syntax_uid": record.transfer_syntax_uid,
            "codec": record.codec, "key_id": record.key_id, "received_at": record.received_at,
            "source": record.source,
        })
        self._txn_capacity.add(record.received_at, a.modality, a.study_uid, new_instance, record.size_original,
                               record.size_stored)  # the capacity rollups, applied at the transaction's end
        return version

    def add_copies(self, conn: Connection, object_id: str, size: int, since: float, replicas: list[str]) -> None:
        """In the ingest transaction: the primary holds the object; every replica is owed it."""
        rows = [{"object_id": object_id, "site": PRIMARY_SITE, "state": "verified", "size": size, "owed_since": since,
                 "attempts": 0, "next_attempt_at": 0.0, "copied_at": since, "verified_at": since}]
        rows += [{"object_id": object_id, "site": name, "state": "owed", "size": size, "owed_since": since,
                  "attempts": 0, "next_attempt_at": 0.0, "copied_at": None, "verified_at": None} for name in replicas]
        conn.execute(_INSERT["copies"], rows)

    def owe_missing_copies(self, site: str) -> int:
        """Owe ``site`` a copy of every object it has no row for (a site added later)."""
        with self.write() as conn:
            result = conn.execute(text(
                "INSERT INTO copies (object_id, site, state, size, owed_since, attempts, next_attempt_at)"
                " SELECT v.object_id, :site, 'owed', v.size_stored, v.received_at, 0, 0 FROM versions v"
                " WHERE NOT EXISTS (SELECT 1 FROM copies c WHERE c.object_id = v.object_id AND c.site = :site)"
            ), {"site": site})
            return int(result.rowcount or 0)

    def has_object(self, conn: Connection, object_id: str) -> bool:
        return conn.execute(_HAS_OBJECT, {"object_id": object_id}).first() is not None

    # --- reading ------------------------------------------------------------------------

    @staticmethod
    def _version_query() -> Any:
        return _version_select()

    def versions_for_uid(self, uid: str, all_versions: bool = False) -> list[VersionRecord]:
        """Versions of every instance under a study, series or instance UID (latest only by default)."""
        query = self._version_query().where(
            (t.studies.c.study_uid == uid) | (t.series.c.series_uid == uid) | (t.instances.c.sop_instance_uid == uid)
        )
        with self.read() as conn:
            records = [_version(row) for row in conn.execute(query)]
        if all_versions:
            return records
        latest: dict[str, VersionRecord] = {}
        for record in records:
            latest[record.sop_instance_uid] = record
        return list(latest.values())

    def all_versions(self) -> list[VersionRecord]:
        with self.read() as conn:
            return [_version(row) for row in conn.execute(self._version_query())]

    def study_key(self, key_id: str) -> Any:
        """The study_keys row of ``key_id`` (wrapped keys, their generation), or None."""
        with self.read() as conn:
            return keys.by_key_id(conn, key_id)

    def find_studies(
        self,
        patient_id: str | None = None,
        patient_name: str | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
        modality: str | None = None,
        accession: str | None = None,
        study_uid: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Studies matching every given filter. Names and IDs accept ``*`` wildcards. Like
        C-FIND and QIDO, rejected instances (IOCM) are not counted, and a study left with none
        is not listed."""
        from . import rejections

        with self.read() as conn:
            hide = rejections.any_rejected(conn)
            counted = (
                select(
                    t.series.c.study_pk,
                    func.count(t.instances.c.id).label("instances"),
                )
                .select_from(t.series.join(t.instances, t.instances.c.series_pk == t.series.c.id))
                .group_by(t.series.c.study_pk)
            )
            modalities = (counted.where(rejections.visible()) if hide else counted).subquery()
            query = (
                select(
                    t.studies.c.id, t.studies.c.study_uid, t.studies.c.study_date, t.studies.c.study_time,
                    t.studies.c.accession_number, t.studies.c.study_description, t.studies.c.patient_name,
                    t.patients.c.patient_id, t.patients.c.birth_date, t.patients.c.sex,
                    func.coalesce(modalities.c.instances, 0).label("instances"),
                )
                .select_from(
                    t.studies.join(t.patients, t.studies.c.patient_pk == t.patients.c.id).outerjoin(
                        modalities, modalities.c.study_pk == t.studies.c.id
                    )
                )
                .order_by(t.studies.c.study_date.desc(), t.studies.c.study_uid)
                .limit(limit)
            )
            if hide:
                query = query.where(func.coalesce(modalities.c.instances, 0) > 0)
            for column, value in (
                (t.patients.c.patient_id, patient_id),
                (t.studies.c.patient_name, patient_name),
                (t.studies.c.accession_number, accession),
                (t.studies.c.study_uid, study_uid),
            ):
                if value:
                    query = query.where(_match(column, value))
            if date_from:
                query = query.where(t.studies.c.study_date >= date_from)
            if date_to:
                query = query.where(t.studies.c.study_date <= date_to)
            if modality:
                query = query.where(t.studies.c.id.in_(
                    select(t.series.c.study_pk).where(func.upper(t.series.c.modality) == modality.upper())))
            rows = list(conn.execute(query))
            study_pks = [row.id for row in rows]
            mods: dict[int, set[str]] = {}
            if study_pks:
                series_modalities = select(t.series.c.study_pk, t.series.c.modality).where(
                    t.series.c.study_pk.in_(study_pks))
                if hide:  # a series whose every instance was rejected gives no modality (as in C-FIND)
                    series_modalities = series_modalities.where(t.series.c.id.in_(
                        select(t.instances.c.series_pk).where(rejections.visible())))
                for pk, mod in conn.execute(series_modalities):
                    if mod:
                        mods.setdefault(pk, set()).add(mod)
        return [
            {
                "study_uid": row.study_uid,
                "patient_id": row.patient_id,
                "patient_name": row.patient_name,
                "birth_date": row.birth_date,
                "sex": row.sex,
                "study_date": row.study_date,
                "study_time": row.study_time,
                "accession_number": row.accession_number,
                "study_description": row.study_description,
                "modalities": sorted(mods.get(row.id, ())),
                "instances": int(row.instances),
            }
            for row in rows
        ]

    def statistics(self) -> dict[str, Any]:
        with self.read() as conn:
            counts = {
                name: conn.execute(select(func.count()).select_from(table)).scalar() or 0
                for name, table in (
                    ("patients", t.patients), ("studies", t.studies), ("series", t.series),
                    ("instances", t.instances), ("versions", t.versions),
                )
            }
            # Two queries: the sums read ix_versions_sizes alone (0019), the newest one index entry.
            totals = conn.execute(
                select(
                    func.coalesce(func.sum(t.versions.c.size_original), 0),
                    func.coalesce(func.sum(t.versions.c.size_stored), 0),
                )
            ).one()
            newest = conn.execute(select(func.max(t.versions.c.received_at))).scalar()
        return {
            "counts": counts,
            "bytes_received": int(totals[0]),
            "bytes_stored": int(totals[1]),
            "newest_ingest": newest,
        }


def _match(column: Any, pattern: str) -> Any:
    if "*" in pattern or "?" in pattern:
        like = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%").replace("?", "_")
        return func.upper(column).like(like.upper(), escape="\\")
    return column == pattern


def _version(row: Any) -> VersionRecord:
    return VersionRecord(
        sop_instance_uid=row.sop_instance_uid, version=row.version, object_id=row.object_id, sha256=row.sha256,
        dataset_sha256=row.dataset_sha256, size_original=row.size_original, size_stored=row.size_stored,
        transfer_syntax_uid=row.transfer_syntax_uid, codec=row.codec, key_id=row.key_id,
        received_at=row.received_at, source=row.source, study_uid=row.study_uid, series_uid=row.series_uid,
    )
