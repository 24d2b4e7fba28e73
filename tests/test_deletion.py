"""The deletion engine (issue 19 §5, the deletion half; crypto-shredding is the lead's part).

A real `dicomvault serve` with three replicas: a file site (NAS), an S3 bucket under Object
Lock (moto) and a partner vault whose replica store keeps copies write-once (`allow_delete =
false`). Studies arrive with DCMTK storescu. A deleted study leaves every answer (C-FIND by
DCMTK findscu, QIDO-RS, `find`), its objects leave the sites that allow it and the record says
`locked` for the others; a held study is refused by every path; an unreachable site leaves a
pending task that `dicomvault deletions retry` finishes; a study sent again is stored afresh.
The retention path: `retention run` deletes expired unheld studies and IOCM-rejected instances
past `[iocm] delete_after`, and serve's schedule does the same.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from conftest import Vault, api_call, audit_rows, dcmtk, findscu, free_port, make_vault, wait_until
from s3server import S3Server, s3_server, unique_bucket_name  # noqa: F401 - fixtures
from test_disaster_read import recover_read, site_args
from test_iocm import key_object
from test_replication_file import drained, objects_under
from test_replication_vault import add_vault_site, make_receiver, tls_files  # noqa: F401 - fixture


def make_study(dest: Path, patient: str, count: int, study_date: str = "20250102", modality: str = "CT",
               study: str | None = None, sops: list[str] | None = None) -> tuple[str, list[pydicom.Dataset]]:
    """``count`` CT instances of one new study (or ``study``) under ``dest``; (study UID, datasets)."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del template[0xFFFCFFFC]
    study = study or generate_uid()
    series = generate_uid()
    made = []
    dest.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = sops[n] if sops else generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName, ds.StudyDate, ds.Modality = patient, f"{patient}^Del", study_date, modality
        ds.InstanceNumber = n + 1
        ds.save_as(dest / f"{n:03d}.dcm", enforce_file_format=True)
        made.append(ds)
    return study, made


def storescu(vault: Vault, *paths: Path, calling: str = "MODALITY") -> None:
    """DCMTK's storescu (not pynetdicom's on PATH)."""
    run = subprocess.run([dcmtk("storescu"), "-aet", calling, "-aec", vault.ae_title, "+sd", "127.0.0.1",
                          str(vault.dicom_port), *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def studies_found(vault: Vault) -> dict[str, int]:
    return {s["study_uid"]: s["instances"] for s in json.loads(vault.cli("find", "--json").stdout)}


def cfind(vault: Vault, tmp: Path, study: str) -> list[pydicom.Dataset]:
    return findscu(vault, tmp, "S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}",
                   "NumberOfStudyRelatedInstances", calling="VIEWER")[0]


def qido(vault: Vault, study: str) -> list[dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{vault.http_port}/dicomweb/studies?StudyInstanceUID={study}",
                                     headers={"Authorization": f"Bearer {vault.api_token()}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        body = answer.read()
    return json.loads(body) if body else []


def object_ids(vault: Vault, study: str) -> set[str]:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return {row[0] for row in db.execute(
            "SELECT v.object_id FROM versions v JOIN instances i ON v.instance_pk = i.id JOIN series s "
            "ON i.series_pk = s.id JOIN studies st ON s.study_pk = st.id WHERE st.study_uid = ?", (study,))}


def bucket_names(server: S3Server, bucket: str, folder: str = "objects") -> set[str]:
    """Names under ``<prefix>/<folder>/`` (objects, or key records: ``keys``), every version."""
    client = server.client()
    pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket)
    return {o["Key"].rsplit("/", 1)[1] for page in pages for o in [*page.get("Versions", []),
                                                                    *page.get("DeleteMarkers", [])]
            if f"/{folder}/" in o["Key"]}


def sites_of(record: dict) -> dict[str, tuple[str, int, int]]:
    return {s["site"]: (s["state"], s["deleted"], s["locked"]) for s in record["sites"]}


def test_a_deletion_reaches_every_site_is_refused_when_held_and_leaves_a_record(
    tmp_path: Path, s3_server: S3Server, tls_files: dict[str, Path]  # noqa: F811
) -> None:
    partner = make_receiver(tmp_path / "partner", tls_files)  # [replica_store] allow_delete = false (default)
    partner.start()
    vault = make_vault(tmp_path / "vault")
    vault.set_config("dicomweb", "enabled", "true")
    vault.add_peer("viewer", "VIEWER", free_port(), permissions=["find"])
    nas = tmp_path / "nas"
    vault.cli("sites", "add", "nas", f"file://{nas}", "--onsite")
    bucket = s3_server.make_bucket(unique_bucket_name(), object_lock=True)
    options = [a for k, v in {**s3_server.site_options(), "object_lock_days": 1}.items() for a in ("--option", f"{k}={v}")]
    vault.cli("sites", "add", "offsite", f"s3://{bucket}/dv", *options)
    add_vault_site(vault, partner)
    try:
        vault.start()
        doomed, doomed_ds = make_study(tmp_path / "doomed", "DEL-1", 3)
        kept, _ = make_study(tmp_path / "kept", "DEL-2", 2)
        storescu(vault, tmp_path / "doomed", tmp_path / "kept")
        for site in ("nas", "offsite", "dr"):
            wait_until(lambda site=site: drained(vault, site, 5), timeout=60, what=f"5 verified copies on {site}")
        doomed_objects, kept_objects = object_ids(vault, doomed), object_ids(vault, kept)
        assert len(doomed_objects) == 3 and len(cfind(vault, tmp_path, doomed)) == 1

        # A patient-scope hold keeps `kept` from every path; nothing changes.
        vault.cli("hold", "add", "--patient", "DEL-2", "--reason", "litigation 2026-7, counsel R. Roe")
        refused = vault.cli("delete", "--study", kept, "--reason", "patient asked", "--yes", check=False)
        assert refused.returncode == 1 and "legal hold 1 (patient DEL-2)" in refused.stderr, refused.stderr
        status, answer = api_call(vault, "/api/deletions", vault.api_token(), {"study": kept, "reason": "asked"})
        assert status == 409 and "litigation 2026-7" in answer["error"], answer
        operator = "op-" + generate_uid().replace(".", "")[-29:]
        with (vault.root / "keys" / "api-tokens").open("a") as tokens:
            tokens.write(f"ops:{operator}:operator\n")
        status, answer = api_call(vault, "/api/deletions", operator, {"study": doomed, "reason": "asked"})
        assert status == 403 and answer["needed"] == "admin", answer  # deleting needs admin
        assert api_call(vault, "/api/deletions", operator) == (200, {"deletions": []})
        disabled = vault.cli("retention", "run", check=False)
        assert disabled.returncode == 1 and "nothing is ever deleted unless configured" in disabled.stderr
        # Bad input: clear errors, nothing changes.
        unknown = vault.cli("delete", "--study", "1.2.3.4", "--reason", "x", "--yes", check=False)
        assert unknown.returncode == 1 and "no study 1.2.3.4" in unknown.stderr
        empty = vault.cli("delete", "--study", doomed, "--reason", "  ", "--yes", check=False)
        assert empty.returncode == 1 and "reason" in empty.stderr
        status, answer = api_call(vault, "/api/deletions", vault.api_token(), {"study": doomed})
        assert status == 400 and "reason" in answer["error"]
        # Without --yes: what would go, exit 2, nothing deleted.
        dry = vault.cli("delete", "--study", doomed, "--reason", "patient request 2026-31", check=False)
        assert dry.returncode == 2 and "3 instances" in dry.stdout and "nothing deleted" in dry.stdout, dry.stdout
        assert studies_found(vault) == {doomed: 3, kept: 2}
        assert [o for _s, o, _d in audit_rows(vault, "delete")] == ["refused", "refused", "refused"]

        run = vault.cli("delete", "--study", doomed, "--reason", "patient request 2026-31, DPO J. Doe", "--yes",
                        "--json")
        record = json.loads(run.stdout)
        assert record["study_uid"] == doomed and record["patient_id"] == "DEL-1" and record["why"] == "request"
        assert record["who"].startswith("cli:") and record["reason"] == "patient request 2026-31, DPO J. Doe"
        assert (record["instances"], record["versions"]) == (3, 3) and record["bytes"] > 3 * 1000
        assert sorted(record["sop_instance_uids"]) == sorted(str(d.SOPInstanceUID) for d in doomed_ds)
        assert sites_of(record) == {"primary": ("deleted", 3, 0), "nas": ("deleted", 3, 0),
                                    "offsite": ("shredded", 0, 3), "dr": ("shredded", 0, 3)}, record["sites"]
        assert record["completed"] and record["study_key"]["shredded"] and not record["study_key"]["embedded"]
        print("deletion record:", json.dumps(record, indent=2))  # shown in the closing note

        # Gone from every answer; the held study still answers.
        assert studies_found(vault) == {kept: 2}
        assert cfind(vault, tmp_path, doomed) == [] and len(cfind(vault, tmp_path, kept)) == 1
        assert qido(vault, doomed) == [] and len(qido(vault, kept)) == 1
        # Gone from the sites that allow it; kept (ciphertext under lock) by the others.
        primary = set(objects_under(vault.root / "objects"))
        assert not doomed_objects & primary and kept_objects <= primary
        assert not doomed_objects & set(objects_under(nas))
        assert doomed_objects <= bucket_names(s3_server, bucket)
        assert doomed_objects <= set(objects_under(partner.store))
        # ...but shredded: the study's key record is gone from every site (and the catalog), so
        # not even the offline recovery key opens the copies the bucket and the partner keep.
        key_id = record["study_key"]["id"]
        assert not any(key_id in str(path) for root in (vault.root / "objects", nas, partner.store)
                       for path in root.rglob("*"))
        assert not [k for k in bucket_names(s3_server, bucket, "keys") if key_id in k]
        recovered = recover_read(tmp_path, *site_args(s3_server, bucket), "--recovery-key",
                                 str(vault.root / "recovery-key.pem"), "--out", str(tmp_path / "dr-read"))
        report = json.loads(recovered.stdout)
        assert report["written"] == 2, "only the held study's instances open"
        assert len(report["failed"]) == 3 and all("shredded" in f["reason"] for f in report["failed"]), report
        status_report = vault.status()
        assert status_report["deletions"]["last_30_days"]["deletions"] == 1
        assert status_report["deletions"]["pending_sites"] == 0
        assert status_report["counts"]["studies"] == 1
        # The proof: the record (CLI and API) and the audit chain.
        listed = json.loads(vault.cli("deletions", "--json").stdout)["deletions"]
        assert [d["id"] for d in listed] == [record["id"]] and listed[0]["sop_instance_uids"]
        assert api_call(vault, "/api/deletions", vault.api_token())[1]["deletions"][0]["study_uid"] == doomed
        assert vault.cli("audit", "verify", check=False).returncode == 0
        done = [(s, d) for s, o, d in audit_rows(vault, "delete") if o == "success"]
        assert done == [(doomed, done[0][1])] and done[0][1]["instances"] == 3 and done[0][1]["why"] == "request"
        assert {(d["site"], o) for _s, o, d in audit_rows(vault, "deletion-site")} == {
            ("primary", "deleted"), ("nas", "deleted"), ("offsite", "shredded"), ("dr", "shredded")}

        # Sent again: stored and answered as new, under a new key and so new object names,
        # which the write-once sites take beside the shredded copies.
        storescu(vault, tmp_path / "doomed")
        vault.wait_settled()
        assert studies_found(vault) == {doomed: 3, kept: 2}
        assert len(cfind(vault, tmp_path, doomed)) == 1
        assert not object_ids(vault, doomed) & doomed_objects
        for site in ("offsite", "dr"):
            wait_until(lambda site=site: drained(vault, site, 5), timeout=60, what=f"the re-sent study on {site}")

        # The partner vault is down: its part stays pending until `deletions retry`.
        vault.cli("hold", "release", "1", "--reason", "case closed")
        partner.vault.stop()
        record = json.loads(vault.cli("delete", "--study", kept, "--reason", "case closed, counsel R. Roe",
                                      "--yes", "--json").stdout)
        assert sites_of(record)["dr"][0] == "pending" and not record["completed"], record["sites"]
        assert sites_of(record)["primary"] == ("deleted", 2, 0)
        assert vault.status()["deletions"]["pending_sites"] == 1
        still = vault.cli("deletions", "retry", check=False)
        assert still.returncode == 1 and "still unreachable" in still.stderr
        partner.start()
        vault.cli("deletions", "retry")
        again = json.loads(vault.cli("deletions", "show", str(record["id"]), "--json").stdout)
        assert sites_of(again)["dr"] == ("shredded", 0, 2) and again["completed"], again["sites"]
        assert again["study_key"]["shredded"]
        assert vault.status()["deletions"]["pending_sites"] == 0
        assert vault.cli("audit", "verify", check=False).returncode == 0
    finally:
        vault.stop()
        partner.vault.stop()


RETENTION = """
[[retention.rules]]
name = "short"
modality = "MR"
keep = "1d"
"""


def test_retention_run_deletes_only_expired_unheld_studies_and_rejected_instances(tmp_path: Path) -> None:
    vault = make_vault(tmp_path / "vault")
    vault.set_config("retention", "enabled", "true")
    vault.set_config("iocm", "delete_after", '"1s"')
    with vault.config.open("a") as config:
        config.write(RETENTION)
    vault.add_peer("pacs", "PACS", free_port(), permissions=["store", "reject"])
    expired, _ = make_study(tmp_path / "expired", "RET-1", 2, "20200101", "MR")
    held, _ = make_study(tmp_path / "held", "RET-2", 1, "20200101", "MR")
    recent, _ = make_study(tmp_path / "recent", "RET-3", 1, "20991231", "MR")
    forever, forever_ds = make_study(tmp_path / "forever", "RET-4", 2, "20200101", "CT")  # default: forever
    kos_uid = key_object([forever_ds[0]], codes.DCM.RejectedForQualityReasons, tmp_path / "kos.dcm")
    try:
        vault.start()
        storescu(vault, *(tmp_path / n for n in ("expired", "held", "recent", "forever")))
        storescu(vault, tmp_path / "kos.dcm", calling="PACS")
        vault.wait_settled()
        vault.cli("hold", "add", "--study", held, "--reason", "audit 12")
        wait_until(lambda: vault.status()["rejections"]["due"] == 1, timeout=10, what="the rejection due")
        report = json.loads(vault.cli("retention", "run", "--json").stdout)
        assert [d["study_uid"] for d in report["deleted"]] == [expired], report
        assert report["deleted"][0]["rule"] == "short" and report["deleted"][0]["instances"] == 2
        assert [(r["study_uid"], r["why"], r["rule"], r["instances"]) for r in report["rejected"]] == [
            (forever, "rejection", "113001", 1)]
        assert [s["study_uid"] for s in report["skipped"]] == [held]
        found = studies_found(vault)
        assert set(found) == {held, recent, forever}
        record = json.loads(vault.cli("deletions", "show", str(report["rejected"][0]["id"]), "--json").stdout)
        assert record["sop_instance_uids"] == [str(forever_ds[0].SOPInstanceUID)]
        with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
            left = {r[0] for r in db.execute("SELECT sop_instance_uid FROM instances")}
            assert str(forever_ds[0].SOPInstanceUID) not in left and str(forever_ds[1].SOPInstanceUID) in left
            assert kos_uid in left  # the rejection note stays as evidence
        assert vault.status()["rejections"]["due"] == 0
        again = json.loads(vault.cli("retention", "run", "--json").stdout)
        assert again["totals"]["studies"] == 0 and again["totals"]["rejection_deletions"] == 0

        # serve's schedule deletes what expires without anyone asking.
        vault.stop()
        vault.set_config("retention", "schedule", '"1s"')
        vault.start()
        late, _ = make_study(tmp_path / "late", "RET-5", 1, "20200101", "MR")
        storescu(vault, tmp_path / "late")
        wait_until(lambda: late not in studies_found(vault), timeout=30, what="the scheduled retention run")
        records = json.loads(vault.cli("deletions", "--json").stdout)["deletions"]
        assert [(r["study_uid"], r["who"], r["why"]) for r in records][-1] == (late, "retention-scheduler", "retention")
        assert held in studies_found(vault)
    finally:
        vault.stop()


def test_rebuild_index_does_not_bring_a_deleted_study_back_from_a_copy_that_stayed(tmp_path: Path) -> None:
    """A site that kept a deleted study's objects (write-once media) must not resurrect it."""
    vault = make_vault(tmp_path / "vault")
    gone, _ = make_study(tmp_path / "gone", "REB-1", 2)
    stays, _ = make_study(tmp_path / "stays", "REB-2", 1)
    vault.cli("import", str(tmp_path / "gone"), str(tmp_path / "stays"))
    files = {p: p.read_bytes() for p in (vault.root / "objects" / "objects").rglob("*")
             if p.is_file() and p.name in object_ids(vault, gone)}
    assert len(files) == 2
    record = json.loads(vault.cli("delete", "--study", gone, "--reason", "request 9", "--yes", "--json").stdout)
    assert sites_of(record) == {"primary": ("deleted", 2, 0)} and not any(p.exists() for p in files)
    for path, data in files.items():  # as if the medium were write-once
        path.write_bytes(data)
    vault.cli("snapshot")
    for path in vault.root.glob("catalog.sqlite3*"):
        path.unlink()
    report = json.loads(vault.cli("rebuild-index", "--from", "primary", "--recovery-key",
                                  str(vault.root / "recovery-key.pem"), "--json").stdout)
    assert report["deleted_objects_skipped"] == 2 and report["objects_after_snapshot"] == 0, report
    assert set(studies_found(vault)) == {stays}
    assert [d["study_uid"] for d in json.loads(vault.cli("deletions", "--json").stdout)["deletions"]] == [gone]
    assert "there is no deletion 99" in vault.cli("deletions", "show", "99", check=False).stderr
    assert "whole number" in vault.cli("deletions", "show", "x1", check=False).stderr


def test_a_site_pending_for_over_a_day_is_an_alert(archive) -> None:  # type: ignore[no-untyped-def]
    """`status` counts pending site tasks and alerts once one is older than 24 h."""
    import time

    from dicomvault.catalog import deletions
    from dicomvault.serve.status import archive_status

    plan = deletions.Plan("1.2.3", None, None, "P", [(1, "1.2.3.1", 1)], [(1, "ab" * 32, 10)])
    with archive.catalog.write() as conn:
        deletions.add_record(conn, plan, why="request", rule="", reason="test", actor="t", now=time.time() - 3600,
                             sites=[("primary", "deleted"), ("nas", "pending"), ("pacs", "not ours")])
    report = archive_status(archive)
    assert report["deletions"]["pending_sites"] == 1 and report["deletions"]["pending_over_24h"] == 0
    assert not [a for a in report["alerts"] if "deletion" in a]
    with archive.catalog.write() as conn:
        deletions.add_record(conn, plan, why="request", rule="", reason="test", actor="t", now=time.time() - 2 * 86400,
                             sites=[("nas", "pending")])
    report = archive_status(archive)
    assert report["deletions"]["pending_over_24h"] == 1 and report["deletions"]["last_30_days"]["deletions"] == 2
    assert [a for a in report["alerts"] if "pending on a site for over 24 h" in a]
