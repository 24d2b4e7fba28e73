"""`dicomvault reconcile` against a real Orthanc (the hospital's PACS) and a real vault.

The world every test builds (fresh UIDs, several patients, chosen study dates):

- A: only in the vault (the PACS purged it)            - 1 series, 2 instances
- B: in both, identical                                - 2 series, 3 instances
- C: only in the PACS (the vault never got it)         - 2 series, 5 instances
- D: in both, partial in the vault: series D1 complete (2), series D2 missing (3), series D3
  holds 1 of its 3 instances                           - 3 series, 8 instances (vault: 3)
- E: in both, identical, but the vault's copy carries an older StudyDate (outside the range)

So the vault lacks C and part of D (5 + 3 + 2 = 10 instances) and the PACS lacks A. Orthanc
knows the vault as a DICOM node (it accepts associations only from registered AE titles on
127.0.0.1), which is what C-FIND from the vault and C-MOVE to the vault both need.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import Vault, free_port, wait_until
import orthanc as orthanc_module
from orthanc import Orthanc

orthanc_factory = orthanc_module.orthanc_factory  # the fixture (an assignment, so pyflakes sees it used)
from test_orthanc_forward import dataset_bytes

EXIT_MISSING = 3


@dataclass
class Study:
    name: str
    uid: str
    patient_id: str
    patient_name: str
    date: str
    time: str
    series: dict[str, list[str]] = field(default_factory=dict)  # series uid -> SOP instance UIDs
    modalities: dict[str, str] = field(default_factory=dict)  # series uid -> modality
    numbers: dict[str, str] = field(default_factory=dict)  # series uid -> SeriesNumber

    @property
    def instances(self) -> int:
        return sum(len(v) for v in self.series.values())


@dataclass
class World:
    studies: dict[str, Study]
    files: dict[str, bytes]  # SOP instance UID -> Part-10 bytes
    vault_dir: Path
    dates: list[str]
    e_vault_date: str  # E's date as the vault has it

    def uid(self, name: str) -> str:
        return self.studies[name].uid


def _template() -> pydicom.Dataset:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds[0xFFFCFFFC]  # trailing padding a DICOM sender drops: keep Orthanc's file and the wire identical
    return ds


def build_world(tmp: Path, pacs: Orthanc, dates: list[str]) -> World:
    """dates: [A's, B's, C's and D's] study dates. Uploads to Orthanc; writes the vault's files."""
    template = _template()
    plan = {  # name -> (patient id, patient name, date, [(modality, count in PACS, count in vault)])
        "A": ("RC-PID-A", "ALPHA^ANN", dates[0], [("CT", 0, 2)]),
        "B": ("RC-PID-B", "BRAVO^BEN", dates[1], [("CT", 2, 2), ("MR", 1, 1)]),
        "C": ("RC-PID-C", "CHARLIE^CY", dates[2], [("CT", 3, 0), ("MR", 2, 0)]),
        "D": ("RC-PID-D", "DELTA^DOT", dates[3], [("CT", 2, 2), ("MR", 3, 0), ("CT", 3, 1)]),
        "E": ("RC-PID-E", "ECHO^EVE", dates[1], [("US", 1, 1)]),
    }
    # E's date was corrected in the PACS after the vault received it: the vault's copy is dated
    # a month earlier, outside the range, so only the UID lookup can match it.
    vault_dates = {"E": (dt.date(int(dates[1][:4]), int(dates[1][4:6]), int(dates[1][6:])) - dt.timedelta(days=30))
                   .strftime("%Y%m%d")}
    vault_dir = tmp / "vault-files"
    vault_dir.mkdir(parents=True)
    studies: dict[str, Study] = {}
    files: dict[str, bytes] = {}
    for s_index, (name, (pid, pname, date, series_plan)) in enumerate(plan.items()):
        study = Study(name, generate_uid(), pid, pname, date, f"1{s_index}0000")
        for n, (modality, in_pacs, in_vault) in enumerate(series_plan):
            series_uid = generate_uid()
            study.series[series_uid], study.modalities[series_uid], study.numbers[series_uid] = [], modality, str(n + 1)
            for i in range(max(in_pacs, in_vault)):
                ds = template.copy()
                ds.SpecificCharacterSet = "ISO_IR 100"
                ds.PatientName, ds.PatientID = pname, pid
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study.uid, series_uid
                ds.SOPInstanceUID = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.StudyDate, ds.StudyTime, ds.AccessionNumber = date, study.time, f"ACC-{name}"
                ds.SeriesDate = date
                ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, n + 1, i + 1
                buffer = io.BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                data = buffer.getvalue()
                files[ds.SOPInstanceUID] = data
                study.series[series_uid].append(ds.SOPInstanceUID)
                if i < in_pacs:
                    pacs.upload(data)
                if i < in_vault:
                    if name in vault_dates:
                        ds.StudyDate = vault_dates[name]
                        buffer = io.BytesIO()
                        ds.save_as(buffer, enforce_file_format=True)
                        data = buffer.getvalue()
                    (vault_dir / f"{name}_{n}_{i}.dcm").write_bytes(data)
        studies[name] = study
    return World(studies, files, vault_dir, dates, vault_dates["E"])


def connect(vault: Vault, pacs: Orthanc) -> None:
    """The vault's [peers.pacs] is the Orthanc; the Orthanc knows the vault (C-FIND and C-MOVE)."""
    with vault.config.open("a") as config:
        config.write(f'\n[peers.pacs]\nae_title = "{pacs.aet}"\nhost = "127.0.0.1"\nport = {pacs.dicom_port}\n')
    pacs.add_modality("dicomvault", vault.ae_title, "127.0.0.1", vault.dicom_port)


def reconcile(vault: Vault, *args: str) -> subprocess.CompletedProcess[str]:
    return vault.cli("reconcile", "--pacs", "pacs", *args, check=False, timeout=300)


def report_of(proc: subprocess.CompletedProcess[str]) -> dict:
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON report (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None


def one_line_error(proc: subprocess.CompletedProcess[str], exit_code: int = 1) -> str:
    assert proc.returncode == exit_code, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    assert lines[0].startswith("dicomvault: error: "), lines[0]
    return lines[0]


def catalog_rows(vault: Vault, table: str, **where: object) -> list[dict]:
    from sqlalchemy import select

    from dicomvault.catalog import Catalog
    from dicomvault.catalog import schema as t
    from dicomvault.config import load_settings

    catalog = Catalog(load_settings(vault.config).catalog_url)
    try:
        tbl = getattr(t, table)
        with catalog.read() as conn:
            query = select(tbl).where(*(tbl.c[k] == v for k, v in where.items())).order_by(tbl.c.id)
            return [dict(row._mapping) for row in conn.execute(query)]
    finally:
        catalog.close()


DATES = ["20261120", "20261121", "20261122", "20261122"]  # A, B, C, D
RANGE = ("--since", "20261120", "--until", "20261123")


def check_first_report(report: dict, world: World) -> None:
    s = world.studies
    totals = report["totals"]
    assert totals["pacs_studies"] == 4 and totals["vault_studies"] == 3, totals  # E: the vault's date is older
    assert totals["in_both"] == 3 and totals["matching"] == 2, totals
    assert totals["missing_in_vault"] == 2 and totals["missing_instances"] == 10, totals
    assert totals["missing_in_pacs"] == 1, totals

    (only_pacs,) = report["only_in_pacs"]
    assert only_pacs["study_uid"] == s["C"].uid
    assert only_pacs["patient_id"] == "RC-PID-C" and only_pacs["patient_name"] == "CHARLIE^CY"
    assert only_pacs["study_date"] == "20261122" and sorted(only_pacs["modalities"]) == ["CT", "MR"]
    assert only_pacs["instances"] == 5 and only_pacs["series"] == 2

    (only_vault,) = report["only_in_vault"]
    assert only_vault["study_uid"] == s["A"].uid and only_vault["instances"] == 2

    (diff,) = report["differing"]
    d = s["D"]
    assert diff["study_uid"] == d.uid and diff["more"] == "pacs"
    assert (diff["pacs_series"], diff["pacs_instances"]) == (3, 8)
    assert (diff["vault_series"], diff["vault_instances"]) == (2, 3)
    assert diff["missing_instances"] == 5
    d_series = list(d.series)
    detail = {x["series_uid"]: x for x in diff["series_detail"]}
    assert set(detail) == {d_series[1], d_series[2]}, detail  # D1 matches and is not listed
    assert (detail[d_series[1]]["pacs_instances"], detail[d_series[1]]["vault_instances"]) == (3, None)
    assert detail[d_series[1]]["modality"] == "MR" and detail[d_series[1]]["more"] == "pacs"
    assert (detail[d_series[2]]["pacs_instances"], detail[d_series[2]]["vault_instances"]) == (3, 1)
    assert detail[d_series[2]]["more"] == "pacs"

    # E is matched by its UID, not reported missing on either side; its dates are listed.
    assert report["dates_differ"] == [{"study_uid": s["E"].uid, "pacs": s["E"].date, "vault": world.e_vault_date}]


# --- the comparison -----------------------------------------------------------------------


def test_reconcile_reports_what_each_side_lacks(vault: Vault, orthanc_factory, tmp_path: Path) -> None:
    pacs: Orthanc = orthanc_factory(aet="PACS")
    world = build_world(tmp_path, pacs, DATES)
    vault.cli("import", str(world.vault_dir))
    with vault.config.open("a") as config:
        config.write(f'\n[peers.pacs]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs.dicom_port}\n')

    # The PACS does not know the vault yet: the association is rejected, and the message says what to check.
    line = one_line_error(reconcile(vault, *RANGE))
    # Orthanc answers A-ASSOCIATE-RJ and may hang up at once (pynetdicom then sees an abort).
    assert ("rejected the association" in line or "no DICOM association" in line) and "DICOMVAULT" in line \
        and "knows us" in line, line

    pacs.add_modality("dicomvault", vault.ae_title, "127.0.0.1", vault.dicom_port)
    proc = reconcile(vault, *RANGE, "--json")
    assert proc.returncode == EXIT_MISSING, proc.stderr
    report = report_of(proc)
    check_first_report(report, world)
    assert report["state"] == "completed" and report["error"] is None
    assert report["chunks"] == 4 and report["pacs_queries"]["study_chunks"] == 4
    assert report["date_from"] == "20261120" and report["date_to"] == "20261123"

    # The peer can be named by its AE title too; the readable summary says the same.
    proc = vault.cli("reconcile", "--pacs", "PACS", *RANGE, check=False)
    assert proc.returncode == EXIT_MISSING, proc.stderr
    assert "MISSING IN THE VAULT: 2 studies (10 instances)" in proc.stdout, proc.stdout
    assert "CHARLIE^CY" in proc.stdout and "RC-PID-A" in proc.stdout, proc.stdout

    # --backfill with no `dicomvault serve` running: the moves cannot land, and it says so.
    proc = reconcile(vault, *RANGE, "--backfill")
    line = one_line_error(proc)
    assert "backfill failed" in line and "start `dicomvault serve`" in line, line

    # Persisted: one row per run, the counts in columns, the report as JSON.
    runs = catalog_rows(vault, "reconcile_runs", peer="pacs")
    assert [r["state"] for r in runs] == ["failed", "completed", "completed", "completed"], runs
    last = runs[1]
    assert (last["pacs_studies"], last["vault_studies"], last["missing_in_vault"], last["missing_in_pacs"]) == (4, 3, 2, 1)
    assert (last["date_from"], last["date_to"], last["backfill"]) == ("20261120", "20261123", 0)
    assert json.loads(last["report"])["totals"]["missing_instances"] == 10
    assert "rejected" in runs[0]["error"] and runs[3]["error"].startswith("backfill:")

    # Audited: every run, with its range and counts.
    events = catalog_rows(vault, "audit_log", action="reconcile")
    assert [e["outcome"] for e in events] == ["failure", "success", "success", "failure"], events
    assert {e["subject"] for e in events} == {"pacs"}
    detail = json.loads(events[1]["detail"])
    assert (detail["date_from"], detail["date_to"], detail["missing_in_vault"], detail["missing_instances"]) == (
        "20261120", "20261123", 2, 10)
    assert detail["run_id"] == runs[1]["id"]
    status = vault.status()
    assert status["audit"]["chain_ok"] is True, status["audit"]
    # status: the last run's backfill failure, and what the vault lacks (vault-only A is no alert).
    alerts = [a for a in status["alerts"] if "PACS pacs" in a]
    assert len(alerts) == 2, status["alerts"]
    assert alerts[0].startswith("reconcile with PACS pacs (20261120-20261123) failed") and "backfill" in alerts[0]
    assert alerts[1].startswith("PACS pacs has 2 studies (10 instances) from 20261120-20261123 not in the vault")
    until = "" if "20261123" >= f"{dt.date.today():%Y%m%d}" else " --until 20261123"  # up to today: no --until
    assert alerts[1].endswith(f"`dicomvault reconcile --pacs pacs --since 20261120{until} --backfill`"), alerts[1]


def test_chunk_size_changes_queries_not_results(vault: Vault, orthanc_factory, tmp_path: Path) -> None:
    pacs: Orthanc = orthanc_factory(aet="PACS")
    world = build_world(tmp_path, pacs, DATES)
    vault.cli("import", str(world.vault_dir))
    connect(vault, pacs)
    results = {}
    for chunk_days, expected_chunks in ((1, 4), (2, 2), (3, 2), (7, 1)):
        proc = reconcile(vault, *RANGE, "--chunk-days", str(chunk_days), "--json")
        assert proc.returncode == EXIT_MISSING, proc.stderr
        report = report_of(proc)
        assert report["chunks"] == expected_chunks, (chunk_days, report["chunks"])
        assert report["pacs_queries"]["study_chunks"] == expected_chunks
        assert report["pacs_queries"]["study_by_uid"] == 1  # A: the vault's stray, looked up once by UID
        check_first_report(report, world)
        results[chunk_days] = (report["totals"], report["only_in_pacs"], report["only_in_vault"], report["differing"])
    assert all(r == results[1] for r in results.values())

    # A study whose date differs between the two (corrected in the PACS) is matched by UID, not called missing.
    proc = reconcile(vault, "--since", "20261122", "--until", "20261122", "--json")
    report = report_of(proc)
    assert report["chunks"] == 1 and report["totals"]["pacs_studies"] == 2  # C, D
    assert [s["study_uid"] for s in report["only_in_pacs"]] == [world.uid("C")]
    assert report["only_in_vault"] == []


# --- backfill -----------------------------------------------------------------------------


def test_backfill_brings_in_what_the_vault_lacks(running_vault: Vault, orthanc_factory,
                                                 tmp_path: Path) -> None:
    vault = running_vault
    pacs: Orthanc = orthanc_factory(aet="PACS")
    world = build_world(tmp_path, pacs, DATES)
    vault.cli("import", str(world.vault_dir))
    vault.stop()  # [peers] is read at start
    connect(vault, pacs)
    vault.start()

    # The PACS has the vault's AE title at the wrong port: queries work, every sub-operation fails.
    pacs.add_modality("dicomvault", vault.ae_title, "127.0.0.1", free_port())
    proc = reconcile(vault, *RANGE, "--backfill")
    line = one_line_error(proc)
    assert "backfill failed" in line and "C-MOVE to 'DICOMVAULT'" in line and "nothing arrived" in line, line
    assert f"DICOM port {vault.dicom_port}" in line and "`dicomvault serve` is running" in line, line
    assert "MISSING IN THE VAULT: 2 studies (10 instances)" in proc.stdout, proc.stdout
    (run,) = catalog_rows(vault, "reconcile_runs", peer="pacs")
    assert run["state"] == "completed" and run["error"].startswith("backfill:") and run["missing_in_vault"] == 2
    pacs.add_modality("dicomvault", vault.ae_title, "127.0.0.1", vault.dicom_port)

    proc = reconcile(vault, *RANGE, "--backfill", "--json")
    report = report_of(proc)
    assert proc.returncode == 0, f"{proc.stderr}\n{json.dumps(report, indent=1)[:4000]}\n{vault.log()[-3000:]}"
    backfill = report["backfill"]
    assert backfill["error"] is None, backfill
    assert backfill["studies"] == 2 and backfill["moves_planned"] == 3, backfill  # C whole; D's series 2 and 3
    moves = [(m["level"], m["study_uid"], m["series_uid"]) for m in backfill["moves"]]
    d_series = list(world.studies["D"].series)
    assert sorted(moves, key=str) == sorted([("STUDY", world.uid("C"), None), ("SERIES", world.uid("D"), d_series[1]),
                                             ("SERIES", world.uid("D"), d_series[2])], key=str), moves
    # Newest first: C and D share a date; D (13:00) is newer than C (12:00).
    assert moves[0][1] == world.uid("D"), moves
    assert all(m["status"] == "0x0000" and m["failed"] == 0 for m in backfill["moves"]), backfill["moves"]
    assert backfill["backfilled_instances"] == 10, backfill  # D3's instance the vault had is de-duplicated
    assert backfill["moved_instances"] == 11, backfill
    assert backfill["studies_complete"] == 2 and backfill["still_missing"] == 0
    totals = report["totals"]
    assert totals["missing_in_vault"] == 0 and totals["backfilled_instances"] == 10, totals
    assert [s["study_uid"] for s in report["only_in_vault"]] == [world.uid("A")]  # still reported

    # A second run finds nothing missing in the vault.
    proc = reconcile(vault, *RANGE, "--json")
    assert proc.returncode == 0, proc.stderr
    again = report_of(proc)
    assert again["totals"]["missing_in_vault"] == 0 and again["totals"]["in_both"] == 4, again["totals"]
    assert again["differing"] == [] and again["only_in_pacs"] == []
    runs = catalog_rows(vault, "reconcile_runs", peer="pacs")
    assert [(r["backfill"], r["backfilled_instances"], r["missing_in_vault"]) for r in runs[1:]] == [(1, 10, 0), (0, 0, 0)]

    # What came in is what Orthanc holds: dataset bytes identical, instance by instance.
    out = tmp_path / "got"
    for name in ("C", "D"):
        vault.cli("get", world.uid(name), "--out", str(out / name))
        got = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p.read_bytes()
               for p in (out / name).rglob("*.dcm")}
        expected = [sop for sops in world.studies[name].series.values() for sop in sops]
        assert sorted(got) == sorted(expected), name
        for sop in expected:
            (resource,) = pacs.lookup(sop)
            held = pacs.instance_file(resource["ID"])
            assert dataset_bytes(got[sop]) == dataset_bytes(held), f"{name} {sop} differs from Orthanc's copy"
            assert dataset_bytes(held) == dataset_bytes(world.files[sop])

    status = vault.status()
    assert status["reconcile"]["peers"]["pacs"]["missing_in_vault"] == 0
    assert not [a for a in status["alerts"] if "reconcile" in a or "PACS pacs" in a], status["alerts"]


# --- the schedule inside `serve` ----------------------------------------------------------


def test_scheduled_reconcile_shows_in_status(vault: Vault, orthanc_factory, tmp_path: Path) -> None:
    today = dt.date.today()
    days = [(today - dt.timedelta(days=n)).strftime("%Y%m%d") for n in (3, 2, 1, 1)]
    pacs: Orthanc = orthanc_factory(aet="PACS")
    world = build_world(tmp_path, pacs, days)
    vault.cli("import", str(world.vault_dir))
    connect(vault, pacs)
    vault.set_config("reconcile", "peer", '"pacs"')
    vault.set_config("reconcile", "every", '"1s"')
    vault.set_config("reconcile", "window_days", "3")  # A (3 days ago) is outside the window
    vault.start()

    def reconciled() -> bool:
        entry = vault.status().get("reconcile", {}).get("peers", {}).get("pacs")
        return bool(entry) and entry["state"] == "completed"

    wait_until(reconciled, timeout=60, interval=0.2, what="a scheduled reconcile in status")
    status = vault.status()
    entry = status["reconcile"]["peers"]["pacs"]
    since = (today - dt.timedelta(days=2)).strftime("%Y%m%d")
    assert (entry["date_from"], entry["date_to"]) == (since, today.strftime("%Y%m%d")), entry
    assert (entry["missing_in_vault"], entry["missing_instances"], entry["missing_in_pacs"]) == (2, 10, 0), entry
    assert entry["actor"] == "dicomvault:reconcile-scheduler"
    assert status["reconcile"]["schedule"]["every"] == "1s"
    assert status["ok"] is False
    alert = next((a for a in status["alerts"] if a.startswith("PACS pacs has")), None)
    assert alert is not None, status["alerts"]
    assert alert.startswith(f"PACS pacs has 2 studies (10 instances) from {since}-{today:%Y%m%d} not in the vault "
                            "(reconciled "), alert
    assert alert.endswith(f"run `dicomvault reconcile --pacs pacs --since {since} --backfill`"), alert

    # It keeps running every period, and stopping the server does not wait for it.
    first = len(catalog_rows(vault, "reconcile_runs", peer="pacs"))
    wait_until(lambda: len(catalog_rows(vault, "reconcile_runs", peer="pacs")) > first + 1, timeout=30,
               what="further scheduled runs")
    started = time.monotonic()
    vault.stop()
    assert vault.process is not None and vault.process.returncode == 0, vault.log()[-3000:]
    assert time.monotonic() - started < 15
    assert all(r["state"] in ("completed", "failed") for r in catalog_rows(vault, "reconcile_runs", peer="pacs"))


# --- bad input ----------------------------------------------------------------------------


def test_bad_input_gets_one_clear_line(vault: Vault) -> None:
    dead_port = free_port()  # nothing listens there
    with vault.config.open("a") as config:
        config.write(f'\n[peers.pacs]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {dead_port}\n')

    line = one_line_error(vault.cli("reconcile", "--pacs", "nosuch", "--since", "20261101", check=False))
    assert "unknown PACS 'nosuch'" in line and f"pacs (PACS@127.0.0.1:{dead_port})" in line, line
    line = one_line_error(reconcile(vault, "--since", "2026-11-01"))
    assert "--since must be a date as YYYYMMDD" in line, line
    line = one_line_error(reconcile(vault, "--since", "20261131"))
    assert "not a valid calendar date" in line, line
    line = one_line_error(reconcile(vault, "--since", "20261120", "--until", "20261101"))
    assert "--until 20261101 is before --since 20261120" in line, line
    line = one_line_error(reconcile(vault, "--since", "20261120", "--chunk-days", "0"))
    assert "--chunk-days" in line, line
    assert catalog_rows(vault, "reconcile_runs") == []  # refused before any run

    # Nothing listening: the run is recorded as failed, audited, and alerted in status.
    line = one_line_error(reconcile(vault, "--since", "20261120", "--until", "20261123"))
    assert f"cannot reach PACS pacs (PACS@127.0.0.1:{dead_port})" in line and "refused" in line.lower(), line
    (run,) = catalog_rows(vault, "reconcile_runs")
    assert run["state"] == "failed" and "cannot reach" in run["error"] and run["finished_at"], run
    (event,) = catalog_rows(vault, "audit_log", action="reconcile")
    assert event["outcome"] == "failure" and event["subject"] == "pacs"
    assert "cannot reach" in json.loads(event["detail"])["error"]
    status = vault.status()
    assert status["reconcile"]["peers"]["pacs"]["state"] == "failed"
    assert any(a.startswith("reconcile with PACS pacs (20261120-20261123) failed") for a in status["alerts"]), status

    # [reconcile] settings are checked when the config is read.
    vault.set_config("reconcile", "every", '"soon"')
    line = one_line_error(vault.cli("status", check=False), exit_code=3)  # status: cannot judge
    assert "[reconcile] every" in line and "'soon'" in line, line
    vault.set_config("reconcile", "every", '"6h"')
    vault.set_config("reconcile", "peer", '"elsewhere"')
    line = one_line_error(vault.cli("status", check=False), exit_code=3)  # status: cannot judge
    assert "[reconcile] peer 'elsewhere'" in line and "pacs (PACS)" in line, line
    vault.set_config("reconcile", "peer", '"PACS"')
    vault.set_config("reconcile", "window_days", "0")
    line = one_line_error(vault.cli("status", check=False), exit_code=3)  # status: cannot judge
    assert "[reconcile] window_days must be 1-3660" in line, line


@pytest.mark.parametrize("value", ['"30m"', '"6h"', '"2s"', '"1d"'])
def test_reconcile_periods_accepted(vault: Vault, value: str) -> None:
    from dicomvault.config import load_settings

    vault.set_config("reconcile", "every", value)
    settings = load_settings(vault.config)
    assert settings.reconcile.period_seconds == {"30m": 1800, "6h": 21600, "2s": 2, "1d": 86400}[value.strip('"')]
    assert settings.reconcile.peer == "" and settings.reconcile.window_days == 7 and not settings.reconcile.backfill
