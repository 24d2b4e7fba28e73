"""Key records and key rotation, end to end: a real serve, a file replica and an S3 bucket
under Object Lock; `keys rotate`, then `get`, `recover-read` and `rebuild-index` from the
bucket alone with the new recovery key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom
import pytest
from conftest import Vault, wait_until
from s3server import S3Server, s3_server, unique_bucket_name  # noqa: F401 - fixture
from test_disaster_read import recover_read, site_args
from test_replication_file import drained, make_instances
from test_replication_s3 import add_s3_site

from dicomvault.crypto.keys import KeyRecord


def records_on_bucket(server: S3Server, bucket: str) -> dict[str, KeyRecord]:
    client = server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="dv/keys/")
            for o in page.get("Contents", [])]
    return {key.rsplit("/", 1)[1]: KeyRecord.from_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
            for key in keys}


def fetched(vault: Vault, studies: list[Path], out: Path) -> set[str]:
    """SHA-256s of every instance of these files' studies, as `get` writes them back."""
    for path in studies:
        study_uid = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
        vault.cli("get", study_uid, "--out", str(out))
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*.dcm")}


def test_rotation_rewraps_every_record_everywhere_and_the_archive_still_reads_and_rebuilds(
        vault: Vault, s3_server: S3Server, ct_small: Path, tmp_path: Path) -> None:  # noqa: F811
    bucket = s3_server.make_bucket(unique_bucket_name(), object_lock=True)
    add_s3_site(vault, s3_server, bucket, "--option", "object_lock_days=1")
    nas = tmp_path / "nas"
    vault.cli("sites", "add", "nas", f"file://{nas}", "--onsite")
    first = make_instances(ct_small, tmp_path / "a", 4)
    second = make_instances(ct_small, tmp_path / "b", 3)  # a second study
    vault.start()
    vault.cli("import", str(tmp_path / "a"))
    vault.cli("import", str(tmp_path / "b"))
    wait_until(lambda: drained(vault, "offsite", 7) and drained(vault, "nas", 7), timeout=120, what="copies")
    before = records_on_bucket(s3_server, bucket)
    assert len(before) == 2, "one key record per study on the bucket, placed with the first object"
    assert sorted(p.name for p in (nas / "keys").iterdir()) == sorted(before)
    old_state = json.loads(vault.cli("keys", "status", "--json").stdout)
    assert old_state["shreddable"] == 2 and old_state["not_shreddable"] == 0
    refused = vault.cli("keys", "rotate", check=False)
    assert refused.returncode != 0 and "stop it, rotate" in refused.stderr + refused.stdout, "serve is ingesting"
    vault.stop()

    new_recovery = tmp_path / "offline" / "recovery-2.pem"
    proc = vault.cli("keys", "rotate", "--new-recovery-key", str(new_recovery), "--json")
    report = json.loads(proc.stdout)
    assert report["complete"] and report["records"] == 2
    assert {name: site["written"] for name, site in report["sites"].items()} == {"primary": 2, "offsite": 2, "nas": 2}
    assert report["retired"] == [old_state["site_keys"][0]["id"]], "nothing needs the old generation any more"
    assert report["snapshot"], "a snapshot carries the new key file"
    assert new_recovery.stat().st_mode & 0o777 == 0o600
    after = records_on_bucket(s3_server, bucket)
    assert set(after) == set(before)
    for key_id, record in after.items():
        assert record.kek_id == report["new_kek_id"] != before[key_id].kek_id
        assert record.recovery_id == report["new_recovery_id"] != before[key_id].recovery_id
        assert record.wrapped_by_site != before[key_id].wrapped_by_site
    state = json.loads(vault.cli("keys", "status", "--json").stdout)
    assert [g["id"] for g in state["site_keys"]] == [report["new_kek_id"]]
    assert state["site_keys"][0]["study_keys"] == 2 and state["site_keys"][0]["age_days"] == 0
    assert state["recovery_key"]["id"] == report["new_recovery_id"] and state["other_recovery_keys"] == {}

    # the payloads were not touched, and every instance still reads back byte-exact
    originals = {hashlib.sha256(p.read_bytes()).hexdigest() for p in [*first, *second]}
    assert fetched(vault, [first[0], second[0]], tmp_path / "got") == originals

    # from the bucket alone: the new recovery key opens everything, the old one nothing
    elsewhere = tmp_path / "dr"
    elsewhere.mkdir()
    run = recover_read(elsewhere, *site_args(s3_server, bucket), "--recovery-key", str(new_recovery),
                       "--out", str(elsewhere / "new"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["written"] == 7
    assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in (elsewhere / "new").rglob("*.dcm")} == originals
    old = recover_read(elsewhere, *site_args(s3_server, bucket), "--recovery-key", str(vault.root / "recovery-key.pem"),
                       "--out", str(elsewhere / "old"))
    assert json.loads(old.stdout)["written"] == 0

    # a catalog rebuilt from the bucket with the new recovery key reads every instance
    for path in vault.root.glob("catalog.sqlite3*"):
        path.unlink()
    rebuilt = json.loads(vault.cli("rebuild-index", "--from", "offsite", "--recovery-key", str(new_recovery),
                                   "--json").stdout)
    assert rebuilt["instances"] == 7 and rebuilt["unreadable_objects"] == [] and rebuilt["keys_without_record"] == []
    assert rebuilt["key_records_read"] == 2, "the snapshot holds no wrapped study keys: they come from the records"
    assert fetched(vault, [first[0], second[0]], tmp_path / "again") == originals
    audit = vault.cli("audit", "verify")
    assert audit.returncode == 0


def test_a_snapshot_never_holds_a_shreddable_study_key(vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    """A snapshot kept on a write-once bucket must not keep a deleted study readable: it holds
    the key ids, never the wrapped keys, of studies sealed under key records."""
    from dicomvault.catalog.snapshots import iter_rows
    from dicomvault.crypto.keys import RecoveryKey
    from dicomvault.jobs.rebuild.snapshot import open_snapshot
    from dicomvault.sites import open_site

    make_instances(ct_small, tmp_path / "a", 2)
    vault.cli("import", str(tmp_path / "a"))
    name = json.loads(vault.cli("snapshot", "--json").stdout)["name"]
    site = open_site(f"file://{vault.root / 'objects'}")
    _metadata, payload = open_snapshot(site.get_snapshot(name), RecoveryKey.load(vault.root / "recovery-key.pem"))
    _header, rows = iter_rows(payload)
    keys = [dict(zip(columns, values)) for table, columns, values in rows if table == "study_keys"]
    assert len(keys) == 1 and keys[0]["wrapped_site"] == "" and keys[0]["wrapped_recovery"] == ""
    record = KeyRecord.from_bytes(site.get_key(keys[0]["key_id"]))
    assert record.wrapped_for_recovery, "the key lives in its record on the site instead"


def test_on_an_object_lock_bucket_objects_stay_but_every_version_of_a_key_record_goes(
        s3_server: S3Server) -> None:  # noqa: F811
    """What a shred relies on: the locked object cannot be deleted, its key record (never put
    under retention, re-wrapped twice so it has three versions) can, every version of it."""
    import secrets

    from dicomvault.archive.keystore import delete_key_record
    from dicomvault.sites import SiteError, open_site

    bucket = s3_server.make_bucket(unique_bucket_name(), object_lock=True)
    site = open_site(f"s3://{bucket}/dv", {**s3_server.site_options(), "object_lock_days": 1})
    name, key_id = secrets.token_hex(32), secrets.token_hex(16)
    site.put_if_absent(name, b"sealed bytes")
    for version in range(3):
        site.put_key(key_id, f"record v{version}".encode())

    delete_key_record(site, key_id)
    with pytest.raises(KeyError):
        site.get_key(key_id)
    versions = s3_server.client().list_object_versions(Bucket=bucket, Prefix=f"dv/keys/{key_id}")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers"), "no older version survives"
    with pytest.raises(SiteError):
        site.delete(name)  # the copy itself stays until its retention ends: unreadable, not removable
    assert site.get(name) == b"sealed bytes"


def test_a_study_begun_before_key_records_keeps_embedding_and_status_says_it_cannot_be_shredded(
        archive, ct_small: Path, tmp_path: Path) -> None:
    """An archive upgraded from before key records: its study keys are `embedded` (migration
    0015). More instances of such a study are sealed the old way (a rebuild finds the key in
    any of its objects); a new study gets a key record. `keys status` counts both."""
    from dicomvault.catalog import keys as key_rows
    from dicomvault.crypto.envelope import read_header
    from dicomvault.jobs.keys.state import key_state

    old = pydicom.dcmread(ct_small)
    old_key = archive.keyring.new_study_key()
    with archive.catalog.write() as conn:  # as migration 0015 leaves a key made before it
        key_rows.add(conn, old.StudyInstanceUID, old_key.key_id, old_key.wrapped_by_site,
                     old_key.wrapped_for_recovery, embedded=True)
    stored_old = archive.ingestor.ingest(ct_small.read_bytes(), source="test", actor="test")
    new = make_instances(ct_small, tmp_path / "new", 1)[0]
    stored_new = archive.ingestor.ingest(new.read_bytes(), source="test", actor="test")
    old_header, _ = read_header(archive.site.get(stored_old.object_id))
    new_header, _ = read_header(archive.site.get(stored_new.object_id))
    assert old_header.key_id == old_key.key_id and old_header.embeds_keys
    assert not new_header.embeds_keys and archive.site.list_keys() == [new_header.key_id]
    assert archive.repository.load(stored_old.object_id)[1] == ct_small.read_bytes()
    state = key_state(archive)
    assert (state["study_keys"], state["shreddable"], state["not_shreddable"]) == (2, 1, 1)
