"""The whole catalog as one stream of rows and back, and the ``catalog_snapshots`` records.

A snapshot (``jobs/rebuild/snapshot.py`` seals it, ``jobs/rebuild/index.py`` restores it)
carries every table so that a rebuild reads one file instead of every object. Reading every
table in one transaction and loading them into an empty catalog are the catalog's business:
which tables, in which order, how binary columns travel and how PostgreSQL's sequences follow
the loaded keys. The payload is zstd-compressed JSON lines: line 1 names the tables and their
columns, every further line is ``[table index, [values]]`` with binary values base64-encoded.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import zstandard
from sqlalchemy import Connection, LargeBinary, func, insert, select, text

from . import capacity, keys
from . import schema as t
from .db import HEAD_REVISION

if TYPE_CHECKING:
    from .db import Catalog

FORMAT = "dicomvault-catalog-snapshot"
FORMAT_VERSION = 1
_DUMP_BATCH = 2000  # rows fetched and compressed at a time
_LOAD_BATCH = 2000  # rows per executemany while loading


class SnapshotError(Exception):
    """A snapshot cannot be made or opened; the message says why and what to do."""


def _binary_columns(table: Any) -> list[int]:
    return [i for i, column in enumerate(table.columns) if isinstance(column.type, LargeBinary)]


def dump_catalog(catalog: "Catalog") -> tuple[bytes, dict[str, Any]]:
    """The whole catalog as the snapshot payload, read in one transaction (one consistent
    view of every table); returns it with a summary (row counts, the audit chain head)."""
    tables = list(t.metadata.sorted_tables)  # parents before children: the load order
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    chunks: list[bytes] = []
    counts: dict[str, int] = {}
    head_line = {"format": FORMAT, "version": FORMAT_VERSION, "revision": HEAD_REVISION,
                 "tables": [[table.name, [c.name for c in table.columns]] for table in tables]}
    chunks.append(compressor.compress(json.dumps(head_line).encode() + b"\n"))
    with catalog.read() as conn:
        if not catalog.is_sqlite:  # one consistent view of every table (SQLite's read txn is one)
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        for index, table in enumerate(tables):
            binary = _binary_columns(table)
            names = [column.name for column in table.columns]
            primary = list(table.primary_key.columns)
            count = 0
            buffer: list[bytes] = []
            result = conn.execution_options(stream_results=True, yield_per=_DUMP_BATCH).execute(
                select(table).order_by(*primary))
            for row in result:
                values = list(row)
                if table is t.study_keys:
                    values = keys.snapshot_row(values, names)
                for i in binary:
                    if values[i] is not None:
                        values[i] = base64.b64encode(values[i]).decode()
                buffer.append(json.dumps([index, values], separators=(",", ":")).encode())
                count += 1
                if len(buffer) >= _DUMP_BATCH:
                    chunks.append(compressor.compress(b"\n".join(buffer) + b"\n"))
                    buffer = []
            if buffer:
                chunks.append(compressor.compress(b"\n".join(buffer) + b"\n"))
            counts[table.name] = count
        head = conn.execute(select(t.audit_log.c.id, t.audit_log.c.hash)
                            .order_by(t.audit_log.c.id.desc()).limit(1)).first()
    chunks.append(compressor.flush())
    audit_head = {"id": int(head.id), "hash": head.hash} if head is not None else {"id": 0, "hash": ""}
    return b"".join(chunks), {"rows": counts, "audit_head": audit_head}


def iter_rows(payload: bytes) -> tuple[dict[str, Any], Iterator[tuple[str, list[str], list[Any]]]]:
    """(header line, iterator of (table, columns, values)) of a decompressed snapshot payload."""
    reader = zstandard.ZstdDecompressor().stream_reader(payload)
    lines = io.TextIOWrapper(reader, encoding="utf-8")
    try:
        header = json.loads(lines.readline())
    except ValueError as exc:
        raise SnapshotError(f"snapshot payload is not readable: {exc}") from exc
    if header.get("format") != FORMAT:
        raise SnapshotError("not a dicomvault catalog snapshot")
    if int(header.get("version", 0)) > FORMAT_VERSION:
        raise SnapshotError(f"snapshot format {header.get('version')} is newer than this dicomvault understands: "
                            "upgrade dicomvault first")
    tables = [(name, columns) for name, columns in header["tables"]]

    def rows() -> Iterator[tuple[str, list[str], list[Any]]]:
        for line in lines:
            if not line.strip():
                continue
            index, values = json.loads(line)
            name, columns = tables[index]
            yield name, columns, values

    return header, rows()


def load_tables(catalog: "Catalog", payload: bytes,
                progress: Callable[[str, int], None] | None) -> tuple[int, set[str]]:
    """Replace every table's rows by the snapshot's, in one transaction (all or nothing);
    returns (rows, object ids the snapshot indexes). On PostgreSQL each serial sequence is
    moved past the loaded keys, or the next insert would collide with a loaded row."""
    _header, rows = iter_rows(payload)
    tables = {table.name: table for table in t.metadata.sorted_tables}
    known_objects: set[str] = set()
    loaded = 0
    with catalog.write() as conn:
        for table in reversed(t.metadata.sorted_tables):
            conn.execute(table.delete())
        current: str | None = None
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            if batch and current is not None:
                conn.execute(insert(tables[current]), batch)
                batch.clear()

        for table_name, columns, values in rows:
            if table_name != current:
                flush()
                current = table_name
                binary = {c for c in columns if isinstance(tables[table_name].c[c].type, LargeBinary)}
            row = dict(zip(columns, values))
            for column_name in binary:
                if row[column_name] is not None:
                    row[column_name] = base64.b64decode(row[column_name])
            if table_name == "versions":
                known_objects.add(row["object_id"])
            batch.append(row)
            loaded += 1
            if len(batch) >= _LOAD_BATCH:
                flush()
                if progress:
                    progress("loading catalog", loaded)
        flush()
        capacity.rebuild_rollup(conn)  # derived: recomputed, whatever revision wrote the snapshot
        if not catalog.is_sqlite:
            for table in t.metadata.sorted_tables:
                for column in table.primary_key.columns:
                    if column.autoincrement is True or (column.autoincrement == "auto" and
                                                        column.type.python_type is int):
                        conn.execute(text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                            f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false)"))
    return loaded, known_objects


# --- the catalog_snapshots records -----------------------------------------------------------

def add_snapshot_records(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """One ``catalog_snapshots`` row per site written to (in the caller's transaction, which
    audits the snapshot)."""
    conn.execute(insert(t.catalog_snapshots), rows)


def last_ok_by_site(catalog: "Catalog") -> dict[str, float]:
    """Per site, when its newest good snapshot was started: the scheduler's clock."""
    with catalog.read() as conn:
        rows = conn.execute(select(t.catalog_snapshots.c.site, func.max(t.catalog_snapshots.c.started_at))
                            .where(t.catalog_snapshots.c.state == "ok").group_by(t.catalog_snapshots.c.site))
        return {site: float(at) for site, at in rows}


def oldest_received_at(conn: Connection) -> float | None:
    """When the oldest stored version arrived (None: the archive is empty)."""
    return conn.execute(select(func.min(t.versions.c.received_at))).scalar()


def newest_snapshot(conn: Connection, site: str, ok_only: bool) -> Any:
    """The site's newest snapshot record (only good ones with ``ok_only``), or None."""
    snaps = t.catalog_snapshots
    query = select(snaps).where(snaps.c.site == site)
    if ok_only:
        query = query.where(snaps.c.state == "ok")
    return conn.execute(query.order_by(snaps.c.started_at.desc()).limit(1)).first()
