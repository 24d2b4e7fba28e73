"""Replication to a file site (a NAS mount): outbox, verification, outage, crash, backfill.

The replica is a real directory (a real tmpfs for the outage, remounted read-only under the
running server); instances arrive over DIMSE from DCMTK storescu.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from conftest import Vault, dcmtk, remount, wait_until

PATIENT = "Replica^Patricia"
PATIENT_ID = "REPL-4711"


def make_instances(ct_small: Path, dest: Path, count: int) -> list[Path]:
    ds = pydicom.dcmread(ct_small)
    del ds[0xFFFCFFFC]
    ds.PatientName, ds.PatientID = PATIENT, PATIENT_ID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        paths.append(dest / f"{i:04d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def send(vault: Vault, folder: Path) -> None:
    run = subprocess.run([dcmtk("storescu"), "-aec", vault.ae_title, "+sd", "127.0.0.1", str(vault.dicom_port),
                          str(folder)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr


def site_status(vault: Vault) -> dict:
    return json.loads(vault.cli("sites", "status", "--json").stdout)


def objects_under(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "objects").rglob("*") if p.is_file()}


def drained(vault: Vault, site: str, expected: int) -> bool:
    lag = site_status(vault)[site]
    return lag["backlog_objects"] == 0 and lag["verified_objects"] == expected


def test_every_object_is_copied_verified_and_ciphertext_only(vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    nas = tmp_path / "nas"
    vault.cli("sites", "add", "nas", f"file://{nas}", "--onsite")
    vault.start()
    files = make_instances(ct_small, tmp_path / "in", 30)
    send(vault, tmp_path / "in")
    wait_until(lambda: drained(vault, "nas", 30), timeout=60, what="30 verified copies on the NAS")

    primary = objects_under(vault.root / "objects")
    replica = objects_under(nas)
    assert len(primary) == 30 and replica == primary, "the NAS must hold exactly the primary's sealed objects"
    assert not list((nas / "intents").iterdir()), "replica intents must be released once verified"
    raw = b"".join(replica.values()) + "".join(replica).encode()
    secrets = [PATIENT.encode(), PATIENT_ID.encode(), b"Replica", str(pydicom.dcmread(files[0]).StudyInstanceUID).encode()]
    for path in files:
        data = path.read_bytes()
        secrets += [str(pydicom.dcmread(path).SOPInstanceUID).encode(), hashlib.sha256(data).hexdigest().encode(),
                    hashlib.sha256(data).digest()]
    leaked = [s[:40] for s in secrets if s in raw]
    assert not leaked, f"plaintext found on the replica: {leaked}"
    status = vault.status()
    assert status["sites"]["nas"]["verified_objects"] == 30 and status["audit"]["chain_ok"] is True
    audit = vault.cli("audit", "verify")
    assert audit.returncode == 0


def test_site_added_later_is_backfilled(vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    vault.start()
    make_instances(ct_small, tmp_path / "in", 12)
    send(vault, tmp_path / "in")
    vault.stop()
    nas = tmp_path / "late-nas"
    vault.cli("sites", "add", "late", f"file://{nas}", "--onsite")
    assert site_status(vault)["late"]["verified_objects"] == 0
    vault.start()
    wait_until(lambda: drained(vault, "late", 12), timeout=60, what="the late site backfilled")
    assert objects_under(nas) == objects_under(vault.root / "objects")


def test_outage_builds_a_backlog_then_drains(vault: Vault, ct_small: Path, tmp_path: Path, tmpfs: Path) -> None:
    vault.cli("sites", "add", "nas", f"file://{tmpfs}/replica", "--onsite")
    try:
        vault.start()
        make_instances(ct_small, tmp_path / "first", 5)
        send(vault, tmp_path / "first")
        wait_until(lambda: drained(vault, "nas", 5), timeout=60, what="first copies")

        remount(tmpfs, "ro")
        make_instances(ct_small, tmp_path / "during", 40)
        send(vault, tmp_path / "during")  # ingest keeps acknowledging while the site is down
        wait_until(lambda: site_status(vault)["nas"]["backlog_objects"] == 40, timeout=30, what="backlog of 40")
        status = vault.status()
        nas = status["sites"]["nas"]
        assert nas["backlog_bytes"] > 0 and nas["oldest_owed_age_seconds"] > 0
        assert nas["reachable"] is False and "read-only" in (nas["site_error"] or ""), nas
        assert any("nas unreachable" in alert for alert in status["alerts"]), status["alerts"]
        assert status["counts"]["instances"] == 45
        # Nothing was counted as copied while the site refused writes.
        assert len(objects_under(tmpfs / "replica")) == 5

        remount(tmpfs, "rw")
        wait_until(lambda: drained(vault, "nas", 45), timeout=60, what="backlog drained after the outage")
        assert objects_under(tmpfs / "replica") == objects_under(vault.root / "objects")
        assert vault.status()["sites"]["nas"]["reachable"] is True
    finally:
        vault.stop()


def test_kill_during_replication_loses_nothing_and_counts_nothing_false(vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    nas = tmp_path / "nas"
    vault.cli("sites", "add", "nas", f"file://{nas}", "--onsite", "--rate", "300KB/s")
    vault.start()
    make_instances(ct_small, tmp_path / "in", 100)  # ~2.7 MB sealed at 300 KB/s: ~9 s of copying
    send(vault, tmp_path / "in")
    wait_until(lambda: site_status(vault)["nas"]["verified_objects"] >= 10, timeout=60, what="some copies")
    vault.kill()
    lag = site_status(vault)["nas"]
    assert 0 < lag["backlog_objects"] < 100, lag
    # Every copy counted as verified is really on the NAS, whole; nothing partial is visible.
    primary = objects_under(vault.root / "objects")
    replica = objects_under(nas)
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        verified = {row[0] for row in db.execute("SELECT object_id FROM copies WHERE site = 'nas' AND state = 'verified'")}
    assert len(verified) == lag["verified_objects"]
    missing = [name for name in verified if replica.get(name) != primary[name]]
    assert not missing, f"counted as copied but not (whole) on the NAS: {missing}"
    assert all(replica[name] == primary[name] for name in replica), "a partial object is visible on the NAS"
    vault.set_config("sites.nas", "rate", '"unlimited"')
    vault.start()
    wait_until(lambda: drained(vault, "nas", 100), timeout=60, what="replication finished after the crash")
    assert objects_under(nas) == primary
    assert vault.cli("audit", "verify").returncode == 0
