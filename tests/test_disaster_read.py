"""Bringing the images back from the off-site bucket with only the recovery key.

The hospital's server, catalog and site key are gone: a fresh machine has the S3 bucket and
the recovery-key.pem that `init` printed. `dicomvault recover-read` (no configuration at all)
must return every file exactly as it was received, and refuse what it cannot trust.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from conftest import Vault, make_vault, wait_until
from s3server import S3Server, s3_server, unique_bucket_name  # noqa: F401 - fixture
from test_replication_file import drained, make_instances
from test_replication_s3 import add_s3_site


def recover_read(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomvault.cli", "recover-read", *args, "--json"],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def site_args(server: S3Server, bucket: str) -> list[str]:
    args = ["--site", f"s3://{bucket}/dv"]
    for key, value in server.site_options().items():
        args += ["--option", f"{key}={value}"]
    return args


def test_recovery_key_alone_reads_back_every_file_from_the_bucket(
    vault: Vault, s3_server: S3Server, ct_small: Path, tmp_path: Path  # noqa: F811
) -> None:
    bucket = s3_server.make_bucket(unique_bucket_name())
    add_s3_site(vault, s3_server, bucket)
    files = make_instances(ct_small, tmp_path / "in", 15)
    vault.start()
    vault.cli("import", str(tmp_path / "in"))
    wait_until(lambda: drained(vault, "offsite", 15), timeout=90, what="copies on S3")
    vault.stop()

    elsewhere = tmp_path / "dr-site"
    elsewhere.mkdir()
    key = elsewhere / "recovery-key.pem"
    key.write_bytes((vault.root / "recovery-key.pem").read_bytes())
    run = recover_read(elsewhere, *site_args(s3_server, bucket), "--recovery-key", str(key), "--out", str(elsewhere / "out"))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["written"] == 15 and report["failed"] == []
    originals = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    recovered = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (elsewhere / "out").rglob("*.dcm")}
    assert recovered == originals, "recovered files must be the very files that were archived"


def test_a_foreign_recovery_key_and_altered_objects_are_refused(
    vault: Vault, s3_server: S3Server, ct_small: Path, tmp_path: Path  # noqa: F811
) -> None:
    bucket = s3_server.make_bucket(unique_bucket_name())
    add_s3_site(vault, s3_server, bucket)
    make_instances(ct_small, tmp_path / "in", 4)
    vault.start()
    vault.cli("import", str(tmp_path / "in"))
    wait_until(lambda: drained(vault, "offsite", 4), timeout=90, what="copies on S3")
    vault.stop()

    other = make_vault(tmp_path / "other")
    run = recover_read(tmp_path, *site_args(s3_server, bucket), "--recovery-key", str(other.root / "recovery-key.pem"),
                       "--out", str(tmp_path / "wrong"))
    assert run.returncode == 1
    report = json.loads(run.stdout)
    assert report["written"] == 0 and len(report["failed"]) == 4
    assert all("recovery key does not open" in f["reason"] for f in report["failed"]), report
    assert not list(tmp_path.glob("wrong/**/*.dcm")), "nothing may be written with a foreign key"

    client = s3_server.client()
    victim = [c["Key"] for c in client.list_objects_v2(Bucket=bucket)["Contents"] if "/objects/" in c["Key"]][0]
    body = bytearray(client.get_object(Bucket=bucket, Key=victim)["Body"].read())
    body[len(body) // 2] ^= 0x01
    damaged = unique_bucket_name()
    s3_server.make_bucket(damaged)
    for item in client.list_objects_v2(Bucket=bucket)["Contents"]:
        data = bytes(body) if item["Key"] == victim else client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        client.put_object(Bucket=damaged, Key=item["Key"], Body=data)
    run = recover_read(tmp_path, *site_args(s3_server, damaged), "--recovery-key", str(vault.root / "recovery-key.pem"),
                       "--out", str(tmp_path / "partly"))
    assert run.returncode == 1
    report = json.loads(run.stdout)
    assert report["written"] == 3 and len(report["failed"]) == 1
    assert report["failed"][0]["object"] == victim.rsplit("/", 1)[1]
    assert "damaged or altered" in report["failed"][0]["reason"]
    assert len(list((tmp_path / "partly").rglob("*.dcm"))) == 3
