"""`dicomvault verify` on an S3 site with ``object_lock_days``: copies whose Object Lock
retention was removed or shortened are found and locked again (real moto server, real serve
process replicating instances sent by storescu)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

from conftest import Vault, wait_until
from s3server import S3Server, s3_server, unique_bucket_name  # noqa: F401 - fixtures
from test_replication_file import drained, make_instances, send
from test_replication_s3 import add_s3_site
from test_verify import audit_count, verify

DAYS = 30


def replicated_to_s3(vault: Vault, server: S3Server, ct_small: Path, tmp_path: Path, count: int,
                     object_lock: bool, *options: str) -> tuple[str, list[str]]:
    """``count`` instances sent to a served vault and copied to a fresh bucket (site "offsite",
    prefix dv); the vault is stopped again. Returns the bucket and the object keys."""
    bucket = server.make_bucket(unique_bucket_name("vfy"), object_lock=object_lock)
    add_s3_site(vault, server, bucket, "--option", f"object_lock_days={DAYS}", *options)
    vault.start()
    make_instances(ct_small, tmp_path / "in", count)
    send(vault, tmp_path / "in")
    wait_until(lambda: drained(vault, "offsite", count), timeout=90, what=f"{count} verified copies on S3")
    vault.stop()
    client = server.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="dv/objects/")["Contents"])
    assert len(keys) == count
    return bucket, keys


def retention(server: S3Server, bucket: str, key: str) -> tuple[str | None, dt.datetime | None]:
    head = server.client().head_object(Bucket=bucket, Key=key)
    return head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")


def retention_audit(vault: Vault) -> list[dict]:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        rows = db.execute("SELECT subject, outcome, detail FROM audit_log WHERE action = 'retention' ORDER BY id")
        return [{"subject": s, "outcome": o, **json.loads(d)} for s, o, d in rows]


def test_copies_that_lost_or_ran_short_of_retention_are_locked_again(
        vault: Vault, s3_server: S3Server, ct_small: Path, tmp_path: Path) -> None:  # noqa: F811
    # GOVERNANCE, so that the test (with the bypass permission) can shorten and remove it.
    bucket, keys = replicated_to_s3(vault, s3_server, ct_small, tmp_path, 6, True,
                                    "--option", "object_lock_mode=GOVERNANCE")
    client = s3_server.client()
    now = dt.datetime.now(dt.timezone.utc)
    for key in keys:  # as replication wrote them
        mode, until = retention(s3_server, bucket, key)
        assert mode == "GOVERNANCE" and until > now + dt.timedelta(days=DAYS - 1)
    shortened, removed, replaced = keys[0], keys[1], keys[2]
    client.put_object_retention(Bucket=bucket, Key=shortened, BypassGovernanceRetention=True,
                                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": now + dt.timedelta(days=2)})
    client.put_object_retention(Bucket=bucket, Key=removed, Retention={}, BypassGovernanceRetention=True)
    same_bytes = client.get_object(Bucket=bucket, Key=replaced)["Body"].read()
    client.put_object(Bucket=bucket, Key=replaced, Body=same_bytes)  # a new version, without retention
    assert retention(s3_server, bucket, removed) == (None, None)
    assert retention(s3_server, bucket, replaced) == (None, None)
    assert retention(s3_server, bucket, shortened)[1] < now + dt.timedelta(days=3)

    # --no-repair: found and reported, nothing changed.
    code, report = verify(vault, "--all", "--site", "offsite", "--no-repair")
    assert code == 0, report
    lock = report["sites"]["offsite"]["retention"]
    assert (lock["object_lock"], lock["missing"], lock["short"], lock["fixed"], lock["failed"]) == (True, 2, 1, 0, 0)
    assert retention(s3_server, bucket, removed) == (None, None)

    code, report = verify(vault, "--all")

    assert code == 0, report
    offsite = report["sites"]["offsite"]
    assert offsite["ok"] == 6 and report["findings"] == []  # the bytes were never in question
    assert offsite["retention"] == {"days": DAYS, "object_lock": True, "missing": 2, "short": 1, "fixed": 3,
                                    "failed": 0, "error": None, "warning": None}
    assert "retention" not in report["sites"]["primary"]  # a file site has no Object Lock
    after = dt.datetime.now(dt.timezone.utc)
    for key in keys:
        mode, until = retention(s3_server, bucket, key)
        assert mode == "GOVERNANCE", key
        assert until > after + dt.timedelta(days=DAYS - 1), (key, until)
    audited = retention_audit(vault)
    assert [a["outcome"] for a in audited] == ["failure", "success"]  # the --no-repair run, then the fix
    names = {key.rsplit("/", 1)[1] for key in (removed, replaced)}
    assert set(audited[-1]["objects"]) == names and audited[-1]["subject"] == "offsite"

    code, again = verify(vault, "--all")
    assert code == 0
    assert {k: again["sites"]["offsite"]["retention"][k] for k in ("missing", "short", "fixed")} == \
        {"missing": 0, "short": 0, "fixed": 0}
    assert audit_count(vault, "retention") == 2
    assert vault.cli("audit", "verify").returncode == 0
    text = vault.cli("verify", "--site", "offsite").stdout
    assert "Object Lock retention (30 days): 0 missing" in text


def test_object_lock_days_on_a_bucket_without_object_lock_is_reported(
        vault: Vault, s3_server: S3Server, ct_small: Path, tmp_path: Path) -> None:  # noqa: F811
    replicated_to_s3(vault, s3_server, ct_small, tmp_path, 2, False)

    code, report = verify(vault, "--all")

    assert code == 0, report
    lock = report["sites"]["offsite"]["retention"]
    assert lock["object_lock"] is False and lock["fixed"] == lock["missing"] == 0
    assert "has no Object Lock" in lock["warning"]
    assert "WARNING: object_lock_days = 30 but bucket" in vault.cli("verify", "--site", "offsite").stdout
    alerts = vault.status()["alerts"]
    assert any("site offsite:" in a and "has no Object Lock" in a for a in alerts), alerts
