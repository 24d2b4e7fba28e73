"""`dicomvault restore`: the archive poured back into a real, empty Orthanc (the rebuilt PACS),
most urgent studies first, byte-exact, resumable after a kill, and honest about refusals.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from conftest import Vault, audit_rows, dcmtk, free_port, make_vault, wait_until
from orthanc import Orthanc, orthanc_factory  # noqa: F401 - fixture

from dicomvault.dicom import split_part10

PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.9.7433.99.1"  # no PACS knows it


@dataclass(frozen=True)
class Made:
    path: Path
    sop_uid: str
    study_uid: str
    study_moment: datetime


def dataset_bytes(data: bytes) -> bytes:
    return data[split_part10(data)[0]:]


def make_study(template: pydicom.Dataset, dest: Path, patient: str, moment: datetime, series: int = 2,
               per_series: int = 3, syntax: str = ExplicitVRLittleEndian, sop_class: str | None = None) -> list[Made]:
    dest.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid()
    made = []
    for s in range(series):
        series_uid = generate_uid()
        for n in range(per_series):
            ds = copy.deepcopy(template)  # a shallow copy shares (and would change) the elements
            ds.PatientID, ds.PatientName = patient, f"{patient}^TEST"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
            ds.StudyDate, ds.StudyTime = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")
            ds.SeriesNumber, ds.InstanceNumber = s + 1, n + 1
            if sop_class:
                ds.SOPClassUID = sop_class
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = syntax
            path = dest / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian,
                       little_endian=True)
            made.append(Made(path, ds.SOPInstanceUID, study_uid, moment))
    return made


@pytest.fixture(scope="module")
def template() -> pydicom.Dataset:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds[0xFFFCFFFC]  # trailing padding: keep files comparable
    return ds


def empty_pacs(factory: Callable[..., Orthanc], vault: Vault, **config: object) -> Orthanc:
    pacs = factory(aet="PACS", config=config or None)
    pacs.add_modality("vault", vault.ae_title, "127.0.0.1", vault.dicom_port)
    assert pacs.rest("GET", "/instances") == []
    vault.add_peer("pacs", "PACS", pacs.dicom_port)
    return pacs


def restore(vault: Vault, *args: str, check: bool = False) -> tuple[int, dict]:
    proc = vault.cli("restore", "--to", "pacs", "--json", *args, check=check)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def recorded_sent(vault: Vault) -> int:
    """Instances the restore job has recorded as acknowledged by the PACS."""
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return db.execute("SELECT count(*) FROM restore_items WHERE state = 'sent'").fetchone()[0]


def study_arrival_order(pacs: Orthanc) -> list[str]:
    """Study Instance UIDs in the order Orthanc first saw each study (its change log)."""
    changes = pacs.rest("GET", "/changes?since=0&limit=10000")["Changes"]
    ids = [c["ID"] for c in changes if c["ChangeType"] == "NewStudy"]
    return [pacs.rest("GET", f"/studies/{i}")["MainDicomTags"]["StudyInstanceUID"] for i in ids]


def test_restore_into_an_empty_pacs_most_urgent_first_and_byte_exact(
        tmp_path: Path, template: pydicom.Dataset, orthanc_factory) -> None:  # noqa: F811
    now = datetime.now()
    ages = {"2 hours": timedelta(hours=2), "20 hours": timedelta(hours=20), "3 days": timedelta(days=3),
            "6 days": timedelta(days=6), "40 days": timedelta(days=40), "3 years": timedelta(days=1100)}
    made: dict[str, list[Made]] = {}
    for n, (label, age) in enumerate(sorted(ages.items(), key=lambda kv: kv[1], reverse=True)):  # oldest imported first
        syntax = ImplicitVRLittleEndian if n % 2 else ExplicitVRLittleEndian
        made[label] = make_study(template, tmp_path / "files" / label.replace(" ", "_"), f"PAT{n % 3}",
                                 now - age, syntax=syntax)
    vault = make_vault(tmp_path / "vault")
    vault.cli("import", str(tmp_path / "files"))
    pacs = empty_pacs(orthanc_factory, vault)
    vault.start()  # the HTTP API shows the job

    code, report = restore(vault, "--associations", "2")

    assert code == 0, report
    total = sum(len(m) for m in made.values())
    assert (report["total"], report["sent"], report["failed"], report["pending"]) == (total, total, 0, 0)
    assert report["state"] == "completed" and report["transcoded"] == 0
    assert [(t["tier"], t["total"]) for t in report["tiers"]] == [("last 24 h", 12), ("last 7 days", 12),
                                                                  ("older", 12)]
    expected = [made[label][0].study_uid for label in ("2 hours", "20 hours", "3 days", "6 days", "40 days",
                                                         "3 years")]
    assert study_arrival_order(pacs) == expected
    for instance in (m for study in made.values() for m in study):
        (resource,) = pacs.lookup(instance.sop_uid)
        assert dataset_bytes(pacs.instance_file(resource["ID"])) == dataset_bytes(instance.path.read_bytes())

    (job,) = vault.api("/api/restores")["jobs"]
    assert (job["id"], job["state"], job["sent"], job["percent"]) == (report["id"], "completed", total, 100.0)
    assert vault.api(f"/api/restores/{report['id']}")["sent"] == total
    with pytest.raises(urllib.error.HTTPError) as missing:
        vault.api("/api/restores/999")
    assert missing.value.code == 404
    status = vault.status()
    assert status["restores"][0]["state"] == "completed" and status["alerts"] == [], status["alerts"]
    events = audit_rows(vault, "restore")
    assert [outcome for _, outcome, _ in events] == ["started", "success"]
    assert events[-1][2]["sent"] == total and events[-1][0] == "pacs"

    # The same command again sends nothing: the job is done.
    code, again = restore(vault)
    assert code == 0 and again["id"] == report["id"] and again["runs"] == 1
    vault.stop()


def test_killed_restore_resumes_without_resending_what_the_pacs_acknowledged(
        tmp_path: Path, template: pydicom.Dataset, orthanc_factory) -> None:  # noqa: F811
    made = []
    for n in range(4):
        made += make_study(template, tmp_path / "files", f"KILL{n}", datetime.now() - timedelta(days=n * 3),
                           series=3, per_series=10)
    vault = make_vault(tmp_path / "vault")
    vault.cli("import", str(tmp_path / "files"))
    pacs = empty_pacs(orthanc_factory, vault)
    runner = subprocess.Popen([sys.executable, "-m", "dicomvault.cli", "restore", "--config", str(vault.config),
                               "--to", "pacs", "--associations", "1", "--rate", "40/s", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_until(lambda: recorded_sent(vault) >= 30, timeout=60, what="30 instances acknowledged and recorded")
        os.killpg(runner.pid, signal.SIGKILL)
    finally:
        runner.wait(timeout=30)
    sent_before = recorded_sent(vault)
    in_pacs_before = len(pacs.rest("GET", "/instances"))
    assert 30 <= sent_before <= in_pacs_before < len(made)
    (job,) = vault.status()["restores"]
    assert job["state"] == "interrupted" and job["sent"] == sent_before
    assert any("interrupted" in alert and "--resume" in alert for alert in vault.status()["alerts"])

    code, report = restore(vault, "--associations", "2")

    assert code == 0, report
    assert (report["total"], report["sent"], report["failed"], report["pending"]) == (len(made), len(made), 0, 0)
    assert report["runs"] == 2
    assert report["this_run"]["sent"] == len(made) - sent_before  # nothing recorded as acknowledged went again
    resent = in_pacs_before - sent_before  # acknowledged in the last moment before the kill, not yet recorded
    assert resent <= 12, f"{resent} instances were acknowledged but not recorded when the runner died"
    held = pacs.rest("GET", "/instances?expand")
    assert sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in held) == sorted(m.sop_uid for m in made)


def test_a_refused_sop_class_is_named_in_the_report_and_the_rest_arrive(
        tmp_path: Path, template: pydicom.Dataset, orthanc_factory) -> None:  # noqa: F811
    good = make_study(template, tmp_path / "files", "OK1", datetime.now() - timedelta(hours=3))
    odd = make_study(template, tmp_path / "files", "ODD", datetime.now() - timedelta(hours=4), series=1,
                     per_series=2, sop_class=PRIVATE_SOP_CLASS)
    vault = make_vault(tmp_path / "vault")
    vault.cli("import", str(tmp_path / "files"))
    pacs = empty_pacs(orthanc_factory, vault)  # Orthanc refuses SOP classes it does not know

    code, report = restore(vault)

    assert code == 2, report  # finished, with refusals
    assert (report["sent"], report["failed"], report["pending"]) == (len(good), len(odd), 0)
    assert sorted(f["sop_instance_uid"] for f in report["failures"]) == sorted(m.sop_uid for m in odd)
    for failure in report["failures"]:
        assert failure["sop_class_uid"] == PRIVATE_SOP_CLASS
        assert "SOP class not supported" in failure["reason"], failure
    assert sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in pacs.rest("GET", "/instances?expand")) == \
        sorted(m.sop_uid for m in good)
    assert any("refused or unreadable" in a for a in vault.status()["alerts"])
    text = vault.cli("restore", "--report", str(report["id"])).stdout
    assert all(m.sop_uid in text for m in odd)


def test_a_receiver_refusing_instances_with_a_status_gets_them_reported_with_that_status(
        tmp_path: Path, template: pydicom.Dataset) -> None:
    """A C-STORE failure status (here from a pynetdicom SCP that is out of room for MR; Orthanc
    1.10's instance filter answers success even when it discards) is recorded per instance."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

    kept = make_study(template, tmp_path / "files", "CTPAT", datetime.now() - timedelta(hours=1))
    mr = copy.deepcopy(template)
    mr.SOPClassUID, mr.Modality = MRImageStorage, "MR"
    refused = make_study(mr, tmp_path / "files", "MRPAT", datetime.now() - timedelta(hours=2), series=1)
    vault = make_vault(tmp_path / "vault")
    vault.cli("import", str(tmp_path / "files"))
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        if event.context.abstract_syntax == MRImageStorage:
            return 0xA700  # Refused: Out of Resources
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    scp = AE(ae_title="FULLPACS")
    for sop_class in (CTImageStorage, MRImageStorage):
        scp.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    vault.add_peer("pacs", "FULLPACS", port)
    try:
        code, report = restore(vault)
    finally:
        server.shutdown()

    assert code == 2, report
    assert (report["sent"], report["failed"]) == (len(kept), len(refused)), report["failures"][:2]
    assert {f["sop_instance_uid"]: f["status"] for f in report["failures"]} == {m.sop_uid: "0xA700" for m in refused}
    assert all(f["reason"] == "refused: out of resources" for f in report["failures"])
    assert sorted(received) == sorted(m.sop_uid for m in kept)


def test_transcodes_only_when_the_receiver_refuses_the_stored_syntax_and_never_with_loss(
        tmp_path: Path, template: pydicom.Dataset) -> None:
    from pydicom.data import get_testdata_file

    stored_explicit = make_study(template, tmp_path / "files", "TX", datetime.now(), series=1, per_series=2)
    jpeg = tmp_path / "files" / "jpeg2000.dcm"
    jpeg.write_bytes(Path(get_testdata_file("JPEG2000.dcm")).read_bytes())
    vault = make_vault(tmp_path / "vault")
    vault.cli("import", str(tmp_path / "files"))
    received = tmp_path / "received"
    received.mkdir()
    port = free_port()
    vault.add_peer("pacs", "IMPLICITONLY", port)
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "IMPLICITONLY", "+xi", "-od", str(received), str(port)])
    try:
        wait_until(lambda: subprocess.run([dcmtk("echoscu"), "-aec", "IMPLICITONLY", "127.0.0.1", str(port)],
                                          capture_output=True).returncode == 0, what="storescp up")
        code, report = restore(vault)
    finally:
        scp.terminate()
        scp.wait(timeout=10)

    assert code == 2, report
    assert (report["sent"], report["failed"], report["transcoded"]) == (2, 1, 2)
    assert {t["sent"] for t in report["transcoded_instances"]} == {ImplicitVRLittleEndian}
    (failure,) = report["failures"]
    assert "never converted with loss" in failure["reason"] and failure["status"] is None
    for instance in stored_explicit:
        (path,) = received.glob(f"*{instance.sop_uid}*")
        got, original = pydicom.dcmread(path), pydicom.dcmread(instance.path)
        assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert got == original  # every element, pixel data included, unchanged


def test_bad_requests_get_clear_errors_and_change_nothing(tmp_path: Path, template: pydicom.Dataset) -> None:
    make_study(template, tmp_path / "files", "BAD", datetime.now(), series=1, per_series=1)
    vault = make_vault(tmp_path / "vault")
    vault.cli("import", str(tmp_path / "files"))
    dead_port = free_port()  # nothing listens there
    vault.add_peer("pacs", "GONE", dead_port)
    cases = [
        (("--to", "nowhere"), "not a configured DICOM peer"),
        (("--to", "pacs", "--since", "2024-01-01"), "YYYYMMDD"),
        (("--to", "pacs", "--since", "20250101", "--until", "20240101"), "nothing can match"),
        (("--to", "pacs", "--rate", "100Mb/s"), "capital B"),
        (("--to", "pacs", "--associations", "0"), "between 1 and 32"),
        (("--to", "pacs", "--patient", "NOBODY"), "nothing in the vault matches"),
        (("--resume", "42"), "no restore job 42"),
        (("--since", "20240101"), "--to PEER"),
    ]
    for args, message in cases:
        proc = vault.cli("restore", *args, check=False)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)
    assert vault.status()["restores"] == []

    proc = vault.cli("restore", "--to", "pacs", check=False)  # planned, but the PACS is down
    assert proc.returncode == 1 and "Connection refused" in proc.stderr and "--resume" in proc.stderr
    (job,) = vault.status()["restores"]
    assert (job["state"], job["pending"], job["sent"]) == ("interrupted", 1, 0)
    assert "Connection refused" in job["last_error"]
    assert audit_rows(vault, "restore")[-1][1] == "interrupted"


def test_export_to_a_peer_sends_the_selection_byte_exact_and_resumably(
        tmp_path: Path, template: pydicom.Dataset, orthanc_factory) -> None:  # noqa: F811
    """`export --to PEER`: a migration over the network, the same engine in study order."""
    wanted = make_study(template, tmp_path / "files", "MOVE1", datetime.now() - timedelta(days=400))
    wanted += make_study(template, tmp_path / "files", "MOVE1", datetime.now() - timedelta(days=2))
    others = make_study(template, tmp_path / "files", "STAY", datetime.now(), series=1, per_series=2)
    vault = make_vault(tmp_path / "vault")
    vault.cli("import", str(tmp_path / "files"))
    pacs = empty_pacs(orthanc_factory, vault)

    proc = vault.cli("export", "--to", "pacs", "--patient", "MOVE1", "--json")
    report = json.loads(proc.stdout)

    assert (report["kind"], report["ordering"], report["sent"], report["failed"]) == ("export", "study", 12, 0)
    held = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in pacs.rest("GET", "/instances?expand")}
    assert sorted(held) == sorted(m.sop_uid for m in wanted) and not set(held) & {m.sop_uid for m in others}
    for instance in wanted:
        assert dataset_bytes(pacs.instance_file(held[instance.sop_uid])) == dataset_bytes(instance.path.read_bytes())
    assert study_arrival_order(pacs) == [wanted[0].study_uid, wanted[-1].study_uid]  # by date, oldest first
    again = json.loads(vault.cli("export", "--to", "pacs", "--patient", "MOVE1", "--json").stdout)
    assert again["id"] == report["id"] and again["runs"] == 1  # done once: nothing sent twice
    assert [outcome for _, outcome, _ in audit_rows(vault, "export")] == ["started", "success"]


def test_sigterm_stops_a_restore_cleanly_and_the_same_command_resumes_it(
        tmp_path: Path, template: pydicom.Dataset, orthanc_factory) -> None:  # noqa: F811
    made = make_study(template, tmp_path / "files", "TERM", datetime.now(), series=2, per_series=10)
    vault = make_vault(tmp_path / "vault")
    vault.cli("import", str(tmp_path / "files"))
    pacs = empty_pacs(orthanc_factory, vault)
    runner = subprocess.Popen([sys.executable, "-m", "dicomvault.cli", "restore", "--config", str(vault.config),
                               "--to", "pacs", "--rate", "10/s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    wait_until(lambda: recorded_sent(vault) >= 3, timeout=60, what="3 instances acknowledged and recorded")
    runner.send_signal(signal.SIGTERM)
    _out, err = runner.communicate(timeout=60)

    assert runner.returncode == 1 and "stopped on request" in err and "--resume" in err, err
    (job,) = vault.status()["restores"]
    assert job["state"] == "interrupted" and 3 <= job["sent"] < len(made)
    assert audit_rows(vault, "restore")[-1][1] == "interrupted"
    code, report = restore(vault)
    assert code == 0 and report["sent"] == len(made) and report["runs"] == 2
    assert len(pacs.rest("GET", "/instances")) == len(made)


def _api_post(vault: Vault, path: str, body: object, token: str | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token != "":
        headers["Authorization"] = f"Bearer {token or vault.api_token()}"
    request = urllib.request.Request(f"http://127.0.0.1:{vault.http_port}{path}", data=data, headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_a_restore_started_over_the_api_runs_inside_serve_stops_and_resumes(
        tmp_path: Path, template: pydicom.Dataset, orthanc_factory, vault: Vault) -> None:  # noqa: F811
    now = datetime.now()
    made = [m for n, age in enumerate((timedelta(hours=3), timedelta(days=2), timedelta(days=90)))
            for m in make_study(template, tmp_path / "files" / str(n), f"API{n}", now - age)]
    vault.cli("import", str(tmp_path / "files"))
    pacs = empty_pacs(orthanc_factory, vault)
    vault.start()

    assert _api_post(vault, "/api/restores", {"to": "pacs"}, token="")[0] == 401
    for body, needle in (({"to": "nowhere"}, "not a configured DICOM peer"), ({"to": "pacs", "associations": 0}, "1 to 32"),
                         ({"to": "pacs", "bogus": 1}, "unknown field(s) bogus"), (b"not json", "JSON object"),
                         ({"to": "pacs", "since": "2024-01-01"}, "YYYYMMDD"), ({"resume": 999}, "no restore job 999"),
                         ({"to": "pacs", "rate": "fast"}, "--rate")):
        code, answer = _api_post(vault, "/api/restores", body)
        assert code == 400 and needle in answer["error"], (body, answer)
    assert pacs.rest("GET", "/instances") == []  # nothing was planned or sent for a refused request

    code, job = _api_post(vault, "/api/restores", {"to": "pacs", "associations": 1, "rate": "4/s"})
    assert code == 202 and job["total"] == len(made) and job["state"] in ("planning", "running", "planned"), job
    again, conflict = _api_post(vault, "/api/restores", {"to": "pacs"})  # the same request: the same job, running
    assert again == 409 and any(f"job {job['id']} {what}" in conflict["error"]
                                for what in ("is already running", "with this selection is being planned")), conflict
    wait_until(lambda: recorded_sent(vault) >= 2, timeout=60, what="the first instances acknowledged")
    assert _api_post(vault, f"/api/restores/{job['id']}/stop", {})[0] == 202
    stopped = vault.api(f"/api/restores/{job['id']}?wait=30")
    assert stopped["state"] == "interrupted" and 2 <= stopped["sent"] < len(made), stopped

    code, resumed = _api_post(vault, "/api/restores", {"resume": job["id"], "associations": 2})
    assert code == 202 and resumed["id"] == job["id"]
    final = vault.api(f"/api/restores/{job['id']}?wait=60")
    assert (final["state"], final["sent"], final["failed"]) == ("completed", len(made), 0), final
    assert len(pacs.rest("GET", "/instances")) == len(made)
    for instance in made:
        (resource,) = pacs.lookup(instance.sop_uid)
        assert dataset_bytes(pacs.instance_file(resource["ID"])) == dataset_bytes(instance.path.read_bytes())
    assert _api_post(vault, f"/api/restores/{job['id']}/stop", {})[0] == 404  # nothing runs any more
    events = audit_rows(vault, "restore")
    assert [outcome for _, outcome, _ in events if outcome in ("started", "interrupted", "success")] == \
        ["started", "interrupted", "started", "success"]
    assert sum(1 for _, outcome, _ in events if outcome == "refused") == 8
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        actors = {row[0] for row in db.execute("SELECT actor FROM audit_log WHERE action = 'restore'")}
    assert actors == {"api:admin@127.0.0.1"}
    assert vault.cli("audit", "verify").returncode == 0


def test_restore_in_server_hands_the_job_to_serve_and_follows_it(
        tmp_path: Path, template: pydicom.Dataset, orthanc_factory, vault: Vault) -> None:  # noqa: F811
    """`restore --in-server`: the running serve does the sending (the job outlives the terminal)."""
    made = make_study(template, tmp_path / "files", "INSRV", datetime.now() - timedelta(hours=1), series=2, per_series=4)
    vault.cli("import", str(tmp_path / "files"))
    pacs = empty_pacs(orthanc_factory, vault)
    no_server = vault.cli("restore", "--to", "pacs", "--in-server", check=False)
    assert no_server.returncode == 1 and "no dicomvault server answers at http://127.0.0.1:" in no_server.stderr
    vault.start()

    code, report = restore(vault, "--in-server", "--associations", "2")
    assert code == 0 and (report["state"], report["sent"], report["total"]) == ("completed", len(made), len(made))
    assert len(pacs.rest("GET", "/instances")) == len(made)
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        actors = {row[0] for row in db.execute("SELECT actor FROM audit_log WHERE action = 'restore'")}
    assert actors == {"api:admin@127.0.0.1"}  # the server ran it, on the CLI's operator token
    bad = vault.cli("restore", "--to", "nowhere", "--in-server", check=False)
    assert bad.returncode == 1 and "(400): 'nowhere' is not a configured DICOM peer" in bad.stderr


def test_restore_in_server_never_loads_the_catalog_in_the_terminal(vault: Vault) -> None:
    """Handing the job over is an HTTP call: the terminal's process skips SQLAlchemy and the
    catalog (a fifth of a second of start-up, ~10 % of a 500-instance restore)."""
    argv = ["dicomvault", "restore", "--in-server", "--to", "pacs", "--config", str(vault.config)]
    probe = (f"import sys\nfrom dicomvault.cli.app import main\nsys.argv = {argv!r}\ntry:\n    main()\n"
             "except SystemExit as exc:\n"
             "    print(exc.code, [m for m in sys.modules if m.startswith(('sqlalchemy', 'dicomvault.catalog'))])\n")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.stdout.split("\n")[0] == "1 []", (run.stdout, run.stderr)
    assert "no dicomvault server answers" in run.stderr


def test_waiting_over_the_api_follows_a_restore_the_cli_runs(
        tmp_path: Path, template: pydicom.Dataset, orthanc_factory, vault: Vault) -> None:  # noqa: F811
    """`GET ?wait=` answers when a job run by `dicomvault restore` in a terminal ends, not at once."""
    made = make_study(template, tmp_path / "files", "WAITCLI", datetime.now() - timedelta(hours=2), series=2,
                      per_series=6)
    vault.cli("import", str(tmp_path / "files"))
    empty_pacs(orthanc_factory, vault)
    vault.start()
    runner = subprocess.Popen([sys.executable, "-m", "dicomvault.cli", "restore", "--config", str(vault.config),
                               "--to", "pacs", "--associations", "1", "--rate", "3/s"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def running_early() -> bool:
            jobs = vault.api("/api/restores")["jobs"]
            return bool(jobs) and jobs[0]["state"] == "running"

        wait_until(running_early, timeout=60, what="the CLI's job shown as running")
        job = vault.api("/api/restores")["jobs"][0]
        assert job["sent"] < len(made) - 3, job  # seconds of sending left at 3/s
        final = vault.api(f"/api/restores/{job['id']}?wait=60")
        assert (final["state"], final["sent"]) == ("completed", len(made)), final
        _out, err = runner.communicate(timeout=60)
        assert runner.returncode == 0, err
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
