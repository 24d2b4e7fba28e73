"""The catalog schema, its migrations and the audit hash chain, in-process."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text, update

from dicomvault.audit import AuditEvent, append, verify_chain
from dicomvault.catalog import Catalog
from dicomvault.catalog import schema as t
from dicomvault.catalog.db import HEAD_REVISION, MIGRATIONS_DIR


def test_head_revision_constant_matches_the_migration_scripts() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


def test_migrated_schema_matches_table_definitions(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    from sqlalchemy import inspect

    inspector = inspect(catalog.engine)
    for table in t.metadata.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
    with catalog.read() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def _chain(tmp_path: Path, rows: int = 5) -> Catalog:
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    for i in range(rows):
        with catalog.write() as conn:
            append(conn, AuditEvent(actor="test", action="store", subject=f"1.2.{i}", detail={"i": i}))
    return catalog


def test_intact_chain_verifies(tmp_path: Path) -> None:
    catalog = _chain(tmp_path)
    with catalog.read() as conn:
        report = verify_chain(conn)
    assert report.ok and report.rows == 5


def test_altered_row_breaks_the_chain(tmp_path: Path) -> None:
    catalog = _chain(tmp_path)
    with catalog.write() as conn:
        conn.execute(update(t.audit_log).where(t.audit_log.c.id == 3).values(subject="9.9.9"))
    with catalog.read() as conn:
        report = verify_chain(conn)
    assert not report.ok and report.first_bad_id == 3 and "altered" in report.reason


def test_removed_row_breaks_the_chain(tmp_path: Path) -> None:
    catalog = _chain(tmp_path)
    with catalog.write() as conn:
        conn.execute(t.audit_log.delete().where(t.audit_log.c.id == 2))
    with catalog.read() as conn:
        report = verify_chain(conn)
    assert not report.ok and report.first_bad_id == 3


def test_concurrent_writers_in_two_processes_keep_one_linear_chain(tmp_path: Path) -> None:
    """A CLI command may audit while the server ingests: BEGIN IMMEDIATE keeps the chain whole."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'c.db'}"
    Catalog(url).close()
    script = (
        "import sys\n"
        "from dicomvault.catalog import Catalog\n"
        "from dicomvault.audit import AuditEvent, append\n"
        "c = Catalog(sys.argv[1])\n"
        "for i in range(60):\n"
        "    with c.write() as conn:\n"
        "        append(conn, AuditEvent(actor=sys.argv[2], action='store', subject=str(i)))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, url, name]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    catalog = Catalog(url)
    with catalog.read() as conn:
        report = verify_chain(conn)
    assert report.ok, report.reason
    assert report.rows == 120
