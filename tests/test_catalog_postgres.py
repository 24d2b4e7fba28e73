"""A whole vault on the scale-out catalog: a real PostgreSQL (pgserver.py), not SQLite.

The catalog is lost (its database dropped and created again, empty) and rebuilt from the
primary site's snapshot with the recovery key; the answers of `find` and of the C-FIND/QIDO
query engine, the audit chain and later imports (PostgreSQL's id sequences set past the
loaded rows) hold. A SQLite archive moves to PostgreSQL the same way: snapshot, point
``[catalog] url`` at an empty database, ``rebuild-index``. And writers in two processes keep
one audit chain on PostgreSQL too."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from sqlalchemy import create_engine, func, select

from conftest import Vault, make_vault
from dicomvault.audit import AuditEvent, append, verify_chain
from dicomvault.catalog import Catalog
from dicomvault.catalog import schema as t
from dicomvault.catalog.query import LEVELS, Query, run_query
from dicomvault.config import load_settings
from pgserver import PostgresServer, postgres_server  # noqa: F401 - fixture
from test_rebuild import make_corpus
from test_restore import template  # noqa: F401 - fixture

# Real-world files beside the generated corpus: another modality, JPEG 2000, no study date.
PYDICOM_FILES = ("MR_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")
# `find` filters (Catalog.find_studies) that separate make_corpus's studies.
FILTERS = {"patient id": {"patient_id": "PAT1"}, "name wildcard": {"patient_name": "PAT*"},
           "dates": {"date_from": "20240305", "date_to": "20240325"}, "modality": {"modality": "MR"},
           "accession": {"accession": "ACC1*"}}


def use_catalog(vault: Vault, url: str) -> None:
    """Point ``[catalog] url`` at ``url`` (init leaves the key commented out: SQLite)."""
    try:
        vault.set_config("catalog", "url", json.dumps(url))
    except AssertionError:
        config = vault.config.read_text()
        assert "\n[catalog]\n" in config
        vault.config.write_text(config.replace("\n[catalog]\n", f"\n[catalog]\nurl = {json.dumps(url)}\n", 1))


def make_files(template: pydicom.Dataset, dest: Path, patients: list[str], first_day: int,  # noqa: F811
               extras: tuple[str, ...] = ()) -> int:
    """make_corpus's studies plus copies of some pydicom test files in ``dest``; the file count."""
    made = make_corpus(template, dest, patients, first_day)
    for name in extras:
        path = get_testdata_file(name)
        assert path, f"pydicom test file {name} missing"
        shutil.copy(path, dest / name)
    return len(made) + len(extras)


def import_files(vault: Vault, path: Path, expected: int) -> None:
    report = json.loads(vault.cli("import", "--json", str(path)).stdout)
    assert (report["stored"], report["refused"]) == (expected, []), report


def answers(vault: Vault) -> dict[str, object]:
    """``find --json``, then (in this process, on the catalog the vault is configured with: one
    CLI start costs a second) the filtered `find`s and the C-FIND/QIDO engine at every level."""
    result: dict[str, object] = {"find --json": json.loads(vault.cli("find", "--json").stdout)}
    catalog = Catalog(load_settings(vault.config).catalog_url)
    try:
        result.update({f"find {name}": catalog.find_studies(**filters) for name, filters in FILTERS.items()})
        result.update({f"query {level}": list(run_query(catalog, Query(level, {}, root="PATIENT")))
                       for level in LEVELS})
    finally:
        catalog.close()
    return result


def rebuild(vault: Vault) -> dict[str, object]:
    proc = vault.cli("rebuild-index", "--from", "primary", "--recovery-key", str(vault.root / "recovery-key.pem"),
                     "--json")
    return json.loads(proc.stdout)


def catalog_instances(url: str) -> int:
    """Instances indexed in the PostgreSQL database itself (the CLI really used it)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.instances)).scalar_one())
    finally:
        engine.dispose()


def check_later_import(vault: Vault, template: pydicom.Dataset, tmp: Path, url: str,  # noqa: F811
                       instances: int) -> None:
    """New files after the rebuild get new rows (PostgreSQL's id sequences continue past the
    loaded ids: a clash would refuse them), and the audit chain holds from the snapshot's
    head through the rebuild and the import."""
    count = make_files(template, tmp / "after-rebuild", ["PAT9"], 90)
    import_files(vault, tmp / "after-rebuild", count)
    assert catalog_instances(url) == instances + count
    assert vault.cli("audit", "verify").returncode == 0


def test_a_vault_on_postgresql_loses_its_catalog_and_rebuilds_it(
        postgres_server: PostgresServer, template: pydicom.Dataset, tmp_path: Path) -> None:  # noqa: F811
    vault = make_vault(tmp_path / "vault")
    url = postgres_server.create_database()
    use_catalog(vault, url)
    first = make_files(template, tmp_path / "first", ["PAT0", "PAT1", "PAT2"], 0, PYDICOM_FILES)
    later = make_files(template, tmp_path / "later", ["PAT3"], 40)
    import_files(vault, tmp_path / "first", first)
    snapshot = json.loads(vault.cli("snapshot", "--json").stdout)
    assert snapshot["sites"] == {"primary": "ok"}, snapshot
    import_files(vault, tmp_path / "later", later)  # after the snapshot: found by listing the site
    before = answers(vault)
    assert len(before["find --json"]) == 8 + len(PYDICOM_FILES)  # type: ignore[arg-type]
    assert len(before["find modality"]) == 5  # type: ignore[arg-type] # every second generated study + MR_small
    assert len(before["query IMAGE"]) == first + later  # type: ignore[arg-type]

    postgres_server.recreate_database(url)
    report = rebuild(vault)

    assert report["snapshot"] == snapshot["name"] and report["unreadable_objects"] == []
    assert (report["objects_after_snapshot"], report["instances"]) == (later, first + later)
    assert (report["studies"], report["keys_restored"], report["copies_owed_to_primary"]) == (
        8 + len(PYDICOM_FILES), False, 0)
    assert answers(vault) == before
    check_later_import(vault, template, tmp_path, url, first + later)


def test_a_sqlite_archive_moves_to_postgresql_by_snapshot_and_rebuild(
        postgres_server: PostgresServer, template: pydicom.Dataset, tmp_path: Path) -> None:  # noqa: F811
    vault = make_vault(tmp_path / "vault")
    files = make_files(template, tmp_path / "files", ["PAT0", "PAT1"], 0, PYDICOM_FILES)
    import_files(vault, tmp_path / "files", files)
    before = answers(vault)
    vault.cli("snapshot")

    url = postgres_server.create_database()
    use_catalog(vault, url)
    report = rebuild(vault)  # an empty catalog: no --force

    assert (report["objects_after_snapshot"], report["instances"], report["keys_restored"]) == (0, files, False)
    assert answers(vault) == before
    assert (vault.root / "catalog.sqlite3").exists()  # left as it was
    check_later_import(vault, template, tmp_path, url, files)


def test_writers_in_two_processes_keep_one_audit_chain(postgres_server: PostgresServer) -> None:
    """`serve` and a CLI command write the same catalog: PostgreSQL must serialise them as
    SQLite's BEGIN IMMEDIATE does, or two appends read the same last hash and fork the chain.
    (Two Catalog objects have separate in-process locks and pools, as two processes do.)"""
    url = postgres_server.create_database()
    catalogs = [Catalog(url) for _ in range(2)]

    def write(catalog: Catalog, actor: str) -> None:
        for n in range(100):
            with catalog.write() as conn:
                append(conn, AuditEvent(actor=actor, action="test", subject=str(n)))

    writers = [threading.Thread(target=write, args=(catalog, f"writer{n}")) for n, catalog in enumerate(catalogs)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
    try:
        with catalogs[0].read() as conn:
            report = verify_chain(conn)
    finally:
        for catalog in catalogs:
            catalog.close()
    assert (report.ok, report.rows, report.reason) == (True, 200, "")
