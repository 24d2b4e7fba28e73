"""Replication to S3: a real moto_server on loopback, started and stopped by the tests.

Ciphertext only off-site, Object Lock retention, an outage while 500 instances arrive, a
kill -9 mid-upload, and the bandwidth limit measured over 20 s.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from conftest import Vault, wait_until
from s3server import S3Server, s3_server, s3_server_factory, unique_bucket_name  # noqa: F401 - fixtures
from test_replication_file import PATIENT, PATIENT_ID, drained, make_instances, send, site_status


def add_s3_site(vault: Vault, server: S3Server, bucket: str, *extra: str) -> None:
    options = [f"{key}={value}" for key, value in server.site_options().items()]
    vault.cli("sites", "add", "offsite", f"s3://{bucket}/dv", *[a for o in options for a in ("--option", o)], *extra)


def bucket_objects(server: S3Server, bucket: str, folder: str = "objects") -> dict[str, bytes]:
    """Keys and bodies under ``<prefix>/<folder>/`` (objects; catalog snapshots live in snapshots/)."""
    client = server.client()
    names = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
             for o in page.get("Contents", []) if f"{folder}/" in o["Key"]]
    return {name: client.get_object(Bucket=bucket, Key=name)["Body"].read() for name in names}


def primary_objects(vault: Vault) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (vault.root / "objects" / "objects").rglob("*") if p.is_file()}


def test_offsite_bucket_holds_only_ciphertext_under_object_lock(
    vault: Vault, s3_server: S3Server, ct_small: Path, tmp_path: Path  # noqa: F811
) -> None:
    bucket = s3_server.make_bucket(unique_bucket_name(), object_lock=True)
    add_s3_site(vault, s3_server, bucket, "--option", "object_lock_days=30")
    vault.start()
    files = make_instances(ct_small, tmp_path / "in", 20)
    send(vault, tmp_path / "in")
    wait_until(lambda: drained(vault, "offsite", 20), timeout=90, what="20 verified copies on S3")

    held = bucket_objects(s3_server, bucket)
    primary = primary_objects(vault)
    assert {key.rsplit("/", 1)[1] for key in held} == set(primary)
    assert all(held[key] == primary[key.rsplit("/", 1)[1]] for key in held), "S3 must hold the sealed bytes as-is"
    raw = b"".join(held.values()) + "".join(held).encode()
    secrets = [PATIENT.encode(), PATIENT_ID.encode(), str(pydicom.dcmread(files[0]).StudyInstanceUID).encode()]
    for path in files:
        data = path.read_bytes()
        secrets += [str(pydicom.dcmread(path).SOPInstanceUID).encode(), hashlib.sha256(data).hexdigest().encode(),
                    hashlib.sha256(data).digest()]
    assert not [s[:40] for s in secrets if s in raw], "plaintext or plaintext hashes visible on S3"
    client = s3_server.client()
    some_key = next(iter(held))
    head = client.head_object(Bucket=bucket, Key=some_key)
    assert head["ObjectLockMode"] == "COMPLIANCE" and head.get("ObjectLockRetainUntilDate")
    assert not head.get("Metadata"), "no metadata may travel with an object"
    # The catalog snapshot `serve` wrote at start is sealed and locked like the objects.
    wait_until(lambda: bucket_objects(s3_server, bucket, "snapshots"), timeout=30, what="the start-up snapshot")
    snapshots = bucket_objects(s3_server, bucket, "snapshots")
    assert all(body.startswith(b"DVLTOBJ1") for body in snapshots.values())
    assert not [s[:40] for s in secrets if any(s in body for body in snapshots.values())]
    head = client.head_object(Bucket=bucket, Key=next(iter(snapshots)))
    assert head["ObjectLockMode"] == "COMPLIANCE" and head.get("ObjectLockRetainUntilDate")


def test_s3_outage_while_500_instances_arrive(
    vault: Vault, s3_server_factory, ct_small: Path, tmp_path: Path  # noqa: F811
) -> None:
    server: S3Server = s3_server_factory(persistent=True)
    bucket = server.make_bucket(unique_bucket_name())
    add_s3_site(vault, server, bucket)
    vault.start()
    server.stop()
    make_instances(ct_small, tmp_path / "in", 500)
    send(vault, tmp_path / "in")  # every one acknowledged although the off-site copy cannot be made
    wait_until(lambda: site_status(vault)["offsite"]["backlog_objects"] == 500, timeout=60, what="backlog of 500")
    status = vault.status()
    offsite = status["sites"]["offsite"]
    assert status["counts"]["instances"] == 500
    assert offsite["reachable"] is False and "cannot reach" in offsite["site_error"], offsite
    assert offsite["backlog_bytes"] > 500 * 10_000 and offsite["verified_objects"] == 0
    first_rpo = offsite["oldest_owed_age_seconds"]
    wait_until(lambda: site_status(vault)["offsite"]["oldest_owed_age_seconds"] > first_rpo + 1, timeout=30,
               what="the RPO grows while the site is down")

    server.start()
    wait_until(lambda: drained(vault, "offsite", 500), timeout=180, what="backlog drained after the outage")
    held = bucket_objects(server, bucket)
    primary = primary_objects(vault)
    assert len(held) == 500 and all(held[key] == primary[key.rsplit("/", 1)[1]] for key in held)
    assert vault.status()["sites"]["offsite"]["reachable"] is True
    assert vault.cli("audit", "verify").returncode == 0


def test_kill_mid_upload_counts_only_verified_copies(
    vault: Vault, s3_server: S3Server, ct_small: Path, tmp_path: Path  # noqa: F811
) -> None:
    bucket = s3_server.make_bucket(unique_bucket_name())
    add_s3_site(vault, s3_server, bucket, "--rate", "300KB/s")
    vault.start()
    make_instances(ct_small, tmp_path / "in", 100)
    send(vault, tmp_path / "in")
    wait_until(lambda: site_status(vault)["offsite"]["verified_objects"] >= 10, timeout=60, what="some copies")
    vault.kill()
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        verified = {r[0] for r in db.execute("SELECT object_id FROM copies WHERE site='offsite' AND state='verified'")}
    held = {key.rsplit("/", 1)[1]: body for key, body in bucket_objects(s3_server, bucket).items()}
    primary = primary_objects(vault)
    assert 10 <= len(verified) < 100
    assert all(held.get(name) == primary[name] for name in verified), "a copy counted as verified is not on S3"
    vault.set_config("sites.offsite", "rate", '"unlimited"')
    vault.start()
    wait_until(lambda: drained(vault, "offsite", 100), timeout=90, what="replication resumed after kill -9")
    held = {key.rsplit("/", 1)[1]: body for key, body in bucket_objects(s3_server, bucket).items()}
    assert held == primary


def incompressible_instances(ct_small: Path, dest: Path, count: int, side: int = 724) -> list[Path]:
    """~1 MB instances of random pixels: zstd cannot shrink them, so bytes on the wire are known."""
    ds = pydicom.dcmread(ct_small)
    del ds[0xFFFCFFFC]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows = ds.Columns = side
    rng = random.Random(5)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = rng.randbytes(side * side * 2)
        paths.append(dest / f"{i:04d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_rate_limit_holds_within_15_percent_over_20_seconds(
    vault: Vault, s3_server: S3Server, ct_small: Path, tmp_path: Path  # noqa: F811
) -> None:
    bucket = s3_server.make_bucket(unique_bucket_name())
    add_s3_site(vault, s3_server, bucket, "--rate", "5MB/s")
    vault.start()
    incompressible_instances(ct_small, tmp_path / "in", 140)  # ~147 MB: more than 20 s at 5 MB/s
    send(vault, tmp_path / "in")
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        start = db.execute("SELECT min(owed_since) FROM copies WHERE site='offsite'").fetchone()[0]
    wait_until(lambda: site_status(vault)["offsite"]["verified_objects"] > 0, timeout=30, what="first copy")
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        first = db.execute("SELECT min(verified_at) FROM copies WHERE site='offsite' AND state='verified'").fetchone()[0]
    window_end = first + 20.0
    wait_until(lambda: _latest_verified(vault) >= window_end, timeout=60, what="20 s of replication")
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        sent = db.execute(
            "SELECT coalesce(sum(size), 0) FROM copies WHERE site='offsite' AND state='verified' AND verified_at > ?"
            " AND verified_at <= ?", (first, window_end)).fetchone()[0]
    rate = sent / 20.0
    assert start is not None
    assert abs(rate - 5e6) <= 0.15 * 5e6, f"measured {rate / 1e6:.2f} MB/s over 20 s with a 5 MB/s limit"


def _latest_verified(vault: Vault) -> float:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return db.execute("SELECT coalesce(max(verified_at), 0) FROM copies WHERE site='offsite'").fetchone()[0]
