"""`dicomvault verify`: every copy on every site read back and checked; bit rot and lost
objects found and repaired from the other site, on real file sites (the primary and a NAS)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import Vault, wait_until
from dicomvault.dicom import split_part10
from test_replication_file import drained, make_instances, objects_under, send

COUNT = 200


def dataset_bytes(data: bytes) -> bytes:
    """What storescu sent (the vault wraps it in its own file meta)."""
    return data[split_part10(data)[0]:]


def flip_byte(path: Path, offset: int) -> None:
    """One bit flipped, replaced in one rename so a running scrub never reads half a file."""
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    tmp = path.with_name(path.name + ".rot")
    tmp.write_bytes(bytes(data))
    tmp.replace(path)


def replicated(vault: Vault, ct_small: Path, tmp_path: Path, count: int,
               timeout: float = 60) -> tuple[Path, list[Path]]:
    """A served vault with a file replica "nas" holding verified copies of ``count`` instances
    sent by storescu; returns the NAS folder and the sent files (the vault keeps running)."""
    nas = tmp_path / "nas"
    vault.cli("sites", "add", "nas", f"file://{nas}", "--onsite")
    vault.start()
    originals = make_instances(ct_small, tmp_path / "in", count)
    send(vault, tmp_path / "in")
    wait_until(lambda: drained(vault, "nas", count), timeout=timeout, what=f"{count} verified copies on the NAS")
    return nas, originals


def object_files(site_root: Path) -> list[Path]:
    """The object files of a file site (under its ``objects/``: not its intents, journal or
    snapshots), in name order."""
    return sorted(p for p in (site_root / "objects").rglob("*") if p.is_file())


def verify(vault: Vault, *args: str) -> tuple[int, dict]:
    proc = vault.cli("verify", "--json", *args, check=False)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def audit_count(vault: Vault, action: str) -> int:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return db.execute("SELECT count(*) FROM audit_log WHERE action = ?", (action,)).fetchone()[0]


def test_bit_rot_and_lost_copies_are_found_repaired_and_gone_on_the_second_pass(
        vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    nas, _ = replicated(vault, ct_small, tmp_path, COUNT, timeout=120)
    vault.stop()
    before = objects_under(vault.root / "objects")
    assert before == objects_under(nas) and len(before) == COUNT

    primary_files = object_files(vault.site_root())
    rotten = primary_files[:COUNT // 100]  # 1% of the primary's objects: one bit flipped
    for n, path in enumerate(rotten):
        flip_byte(path, 1000 + 7919 * n)
    nas_files = object_files(nas)
    lost = nas_files[-3:]  # three objects gone from the NAS
    for path in lost:
        path.unlink()

    code, report = verify(vault, "--all")

    assert code == 0, report
    found = {(f["site"], f["object_id"], f["problem"]) for f in report["findings"]}
    assert found == {("primary", p.name, "damaged") for p in rotten} | {("nas", p.name, "missing") for p in lost}
    assert all(f["repaired_from"] == ("nas" if f["site"] == "primary" else "primary") for f in report["findings"])
    assert report["sites"]["primary"] == {"checked": COUNT, "ok": COUNT - len(rotten), "missing": 0,
                                          "damaged": len(rotten), "unreadable": 0, "repaired": len(rotten), "unrepaired": 0,
                                          "bytes": report["sites"]["primary"]["bytes"]}
    assert report["sites"]["nas"]["missing"] == len(lost) and report["sites"]["nas"]["repaired"] == len(lost)
    assert objects_under(vault.root / "objects") == before == objects_under(nas)  # byte for byte as written
    assert audit_count(vault, "repair") == len(rotten) + len(lost)

    code, second = verify(vault, "--all")
    assert code == 0 and second["findings"] == [] and second["sites"]["primary"]["ok"] == COUNT
    assert vault.cli("audit", "verify").returncode == 0


def test_damage_without_a_healthy_copy_is_reported_not_hidden(vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    make_instances(ct_small, tmp_path / "in", 5)
    vault.cli("import", str(tmp_path / "in"))
    victim = object_files(vault.site_root())[2]
    flip_byte(victim, 500)

    code, report = verify(vault, "--sample", "5")

    assert code == 2
    (finding,) = report["findings"]
    assert (finding["object_id"], finding["problem"], finding["repaired_from"]) == (victim.name, "damaged", None)
    assert "no other site" in finding["repair_error"]
    assert audit_count(vault, "damage") == 1
    for args, message in ((["--site", "offsite"], "unknown or unreadable site"), (["--sample", "0"], "at least 1"),
                          (["--all", "--sample", "3"], "exclude each other")):
        proc = vault.cli("verify", *args, check=False)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr


def test_a_damaged_primary_copy_is_never_served_the_replica_is(vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    """Retrievals, restores and exports read through Repository.load: every primary copy is
    damaged here, yet `get` returns the original bytes, read from the NAS."""
    import pydicom

    nas, originals = replicated(vault, ct_small, tmp_path, 10)
    vault.stop()
    for n, path in enumerate(object_files(vault.site_root())):
        flip_byte(path, 300 + n)

    study = str(pydicom.dcmread(originals[0], stop_before_pixels=True).StudyInstanceUID)
    vault.cli("get", study, "--out", str(tmp_path / "out"))

    got = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*.dcm")}
    want = {f"{pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID}.dcm": p.read_bytes() for p in originals}
    assert got.keys() == want.keys()
    assert all(dataset_bytes(got[name]) == dataset_bytes(want[name]) for name in want)


def test_the_background_scrub_proves_copies_and_repairs_damage_by_itself(
        vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    vault.set_config("scrub", "period", '"2s"')
    vault.set_config("scrub", "check_every", '"1s"')
    nas, _ = replicated(vault, ct_small, tmp_path, 12)
    victim = object_files(vault.site_root())[5]
    healthy = next(p for p in nas.rglob(victim.name)).read_bytes()
    flip_byte(victim, 777)

    def rewritten() -> bool:
        try:
            return victim.read_bytes() == healthy
        except FileNotFoundError:  # between the repair's delete and its write of the good copy
            return False

    wait_until(rewritten, timeout=60, what="the scrub rewrote the damaged copy")

    wait_until(lambda: audit_count(vault, "repair") == 1, timeout=30, what="the repair audited")
    status = vault.status()
    scrub = status["scrub"]
    assert set(scrub["sites"]) == {"primary", "nas"} and scrub["last_run"]["by"] == "scrub"
    assert all(site["copies"] == 12 for site in scrub["sites"].values())
    assert "repaired" in vault.log() and "ALERT: copy of object" in vault.log()


def test_a_site_overwritten_with_garbage_is_quarantined_and_images_still_come_back(
        vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    """Ransomware on the primary's share: every object replaced by garbage."""
    import os

    import pydicom

    nas, originals = replicated(vault, ct_small, tmp_path, 20)
    vault.stop()
    healthy = objects_under(nas)
    for path in object_files(vault.site_root()):
        path.chmod(0o644)
        path.write_bytes(os.urandom(path.stat().st_size))

    code, report = verify(vault, "--all")

    assert code == 2 and report["quarantined"] == ["primary"]
    assert len(report["findings"]) == 20 and all("quarantined" in f["repair_error"] for f in report["findings"])
    status = vault.status()
    assert any("primary is QUARANTINED" in alert for alert in status["alerts"]), status["alerts"]
    assert objects_under(nas) == healthy  # nothing was "repaired" from or onto the bad share

    study = str(pydicom.dcmread(originals[0], stop_before_pixels=True).StudyInstanceUID)
    vault.cli("get", study, "--out", str(tmp_path / "out"))  # served from the NAS
    got = sorted(dataset_bytes(p.read_bytes()) for p in (tmp_path / "out").rglob("*.dcm"))
    assert got == sorted(dataset_bytes(p.read_bytes()) for p in originals)

    assert vault.cli("verify", "--all", check=False).returncode == 2  # still quarantined: skipped
    vault.cli("sites", "clear", "primary")
    code, report = verify(vault, "--all")
    assert code == 0 and report["sites"]["primary"]["repaired"] == 20
    assert objects_under(vault.root / "objects") == healthy
    assert not any("QUARANTINED" in alert for alert in vault.status()["alerts"])
    assert audit_count(vault, "quarantine") == 2  # quarantined, then cleared
