"""Retention rules and legal holds (issue 19 §4, up to "this study is due for deletion").

Rules: first match wins, by modality, SOP class (prefix), sending AE and age at the Study
Date, else the default; each study's keep-until is computed at ingest and recomputed for all
studies when the rules change. Holds: placed and released from the CLI and the operations
API (operator role), audited; a held study is never due and ``deletable`` refuses it.
"""

from __future__ import annotations

import io
import json
import sqlite3
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import Vault, api_call, audit_rows, make_vault, wait_until
from pgserver import PostgresServer, postgres_server  # noqa: F401 - fixture
from test_catalog_postgres import use_catalog
from dicomvault.catalog.retention import StudyFacts, add_period, decide
from dicomvault.config import ConfigError, load_settings

MG_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"

RULES = """
[retention]
default = "10y"

[[retention.rules]]
name = "minors"
age_below = 18
keep = "10y"
keep_after_age = { age = 18, plus = "7y" }

[[retention.rules]]
name = "mammography"
sop_class = ["1.2.840.10008.5.1.4.1.1.1.2*"]
keep = "10y"

[[retention.rules]]
name = "research"
calling_ae = "RESEARCH1"
keep = "2y"

[[retention.rules]]
name = "screening-ct"
modality = ["CT", "PT"]
keep = "forever"
"""


def settings_with(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    config = tmp_path / "dicomvault.toml"
    config.write_text(text)
    return load_settings(config).retention


# --- rules: parsing and first match (unit, fast) -------------------------------------------

def test_rules_parse_and_the_first_match_decides(tmp_path: Path) -> None:
    rules = settings_with(tmp_path, RULES)
    assert [r.name for r in rules.rules] == ["minors", "mammography", "research", "screening-ct"]
    assert not rules.enabled and rules.schedule == "24h"  # nothing is deleted unless configured
    child = StudyFacts("1.1", study_date="20200310", birth_date="20150601", modalities={"CT"},
                       sop_classes={CT_CLASS})
    # a minor's CT: the minors rule comes first; kept to the later of 10 years and 18th birthday + 7 years
    assert decide(rules, child) == (date(2040, 6, 1), "minors")
    teen = StudyFacts("1.2", study_date="20200310", birth_date="20030101", modalities={"MG"}, sop_classes={MG_CLASS})
    assert decide(rules, teen) == (date(2030, 3, 10), "minors")  # 17 at the study: 10y is later than 18+7
    woman = StudyFacts("1.3", study_date="20200310", birth_date="19700101", modalities={"MG"},
                       sop_classes={MG_CLASS + ".1"})
    assert decide(rules, woman) == (date(2030, 3, 10), "mammography")  # a prefix matches "For Processing" too
    research = StudyFacts("1.4", study_date="20200310", birth_date="19700101", modalities={"CT"},
                          calling_aes={"RESEARCH1"})
    assert decide(rules, research) == (date(2022, 3, 10), "research")  # before the CT rule: first match wins
    assert decide(rules, StudyFacts("1.5", study_date="20200310", modalities={"CT"})) == (None, "screening-ct")
    assert decide(rules, StudyFacts("1.6", study_date="20200310", modalities={"MR"})) == (date(2030, 3, 10), "default")


def test_an_unknown_birth_date_never_shortens_a_stay(tmp_path: Path) -> None:
    rules = settings_with(tmp_path, RULES + '\n[[retention.rules]]\nname = "kids-ward"\ncalling_ae = "PAEDS"\n'
                                            'keep_after_age = { age = 21, plus = "3y" }\n')
    no_birth = StudyFacts("2.1", study_date="20200310", birth_date="", modalities={"MR"}, calling_aes={"PAEDS"})
    # age_below cannot match an unknown age; keep_after_age without a birth date keeps forever
    assert decide(rules, no_birth) == (None, "kids-ward")
    garbled = StudyFacts("2.2", study_date="20200310", birth_date="2015-13-45", modalities={"MR"})
    assert decide(rules, garbled) == (date(2030, 3, 10), "default")
    # no Study Date: a keep period counts from the day the study arrived
    arrived = datetime(2021, 2, 28, 12, tzinfo=timezone.utc).timestamp()
    assert decide(rules, StudyFacts("2.3", arrived=arrived, modalities={"MR"})) == (date(2031, 2, 28), "default")
    assert add_period(date(2024, 2, 29), "1y") == date(2025, 2, 28)
    assert add_period(date(2024, 1, 31), "1mo") == date(2024, 2, 29)
    assert add_period(date(2024, 1, 31), "30d") == date(2024, 3, 1)


@pytest.mark.parametrize("snippet, message", [
    ('[retention]\ndefault = "10 years"', "[retention] default: '10 years' is not a retention period"),
    ('[retention]\ndefault = "6m"', "mo (months)"),
    ('[retention]\nenabled = "yes"', "[retention] enabled must be true or false"),
    ('[retention]\nschedule = "soon"', "[retention] schedule"),
    ('[retention]\nkeep = "1y"', "unknown key(s) in [retention]: keep"),
    ('[[retention.rules]]\nname = "x"\nmodality = "MG"', "#1 (x) needs keep"),
    ('[[retention.rules]]\nmodality = "MG"\nkeep = "10y"\nkeeep = "1y"', "unknown key(s) in [[retention.rules]] #1"),
    ('[[retention.rules]]\nsop_class = "mammo"\nkeep = "10y"', "sop_class 'mammo': use a SOP Class UID"),
    ('[[retention.rules]]\nage_below = "18"\nkeep = "10y"', "age_below must be a whole number"),
    ('[[retention.rules]]\nmodality = []\nkeep = "10y"', "modality must be a non-empty string or list"),
    ('[[retention.rules]]\nmodality = "CT"\nkeep_after_age = { age = 18 }', "keep_after_age must be"),
    ('[[retention.rules]]\nmodality = "CT"\nkeep_after_age = { age = 18, plus = "forever" }',
     "keep_after_age.plus: 'forever' is not a retention period"),
    ('[[retention.rules]]\nname = "a"\nkeep = "1y"\n[[retention.rules]]\nname = "a"\nkeep = "2y"',
     "names must be unique; repeated: a"),
])
def test_bad_rules_are_refused_with_a_clear_reason(tmp_path: Path, snippet: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_with(tmp_path, snippet)
    assert message in str(refused.value), str(refused.value)


# --- keep-until dates in the catalog ---------------------------------------------------------

def instance(patient: tuple[str, str], birth: str, study_uid: str, study_date: str, modality: str,
             sop_class: str, series_uid: str | None = None) -> bytes:
    """A small Part-10 instance made with pydicom (no pixels: the rules read headers only)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName = patient
    ds.PatientBirthDate, ds.PatientSex = birth, "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid or generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = study_date, "101500", "1", "A1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.ReferringPhysicianName = modality, 1, 1, ""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def keep_rows(vault: Vault) -> dict[str, tuple[str | None, str]]:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return {uid: (until, rule) for uid, until, rule in
                db.execute("SELECT study_uid, keep_until, rule FROM study_retention")}


@pytest.fixture
def stocked(tmp_path: Path) -> tuple[Vault, dict[str, str]]:
    return stock(tmp_path)


def stock(tmp_path: Path, catalog_url: str = "") -> tuple[Vault, dict[str, str]]:
    """A vault with the RULES and five studies ingested in-process: a minor's CT, a
    mammogram, a study from the research AE, an MR (default) and an old MR already expired."""
    from dicomvault.archive.core import Archive

    vault = make_vault(tmp_path / "vault")
    if catalog_url:
        use_catalog(vault, catalog_url)
    vault.set_config("retention", "default", '"10y"')  # init's template has [retention]: add the rules
    with vault.config.open("a") as config:
        config.write(RULES.split('default = "10y"', 1)[1])
    archive = Archive.open(load_settings(vault.config))
    uids = {name: generate_uid() for name in ("minor", "mammo", "research", "mr", "old")}
    sends = [
        ("minor", ("RT-1", "Child^Carl"), "20150601", "20200310", "CT", CT_CLASS, "dimse:CT1@127.0.0.1:4000"),
        ("mammo", ("RT-2", "Screen^Sue"), "19700101", "20200310", "MG", MG_CLASS, "dimse:MG1@127.0.0.1:4000"),
        ("research", ("RT-3", "Trial^Tom"), "19700101", "20200310", "MR", CT_CLASS, "dimse:RESEARCH1@10.0.0.9:104"),
        ("mr", ("RT-4", "Adult^Ann"), "19700101", "20200310", "MR", CT_CLASS, "import:/tmp/x.dcm"),
        ("old", ("RT-5", "Elder^Eve"), "19400101", "20010102", "MR", CT_CLASS, "import:/tmp/y.dcm"),
    ]
    try:
        for name, patient, birth, day, modality, sop_class, source in sends:
            archive.ingestor.ingest(instance(patient, birth, uids[name], day, modality, sop_class), source=source,
                                    actor="test")
        # a second series with an SR in the research study: still decided by the sender
        archive.ingestor.ingest(instance(("RT-3", "Trial^Tom"), "19700101", uids["research"], "20200310", "SR",
                                         SR_CLASS), source="import:/tmp/sr.dcm", actor="test")
    finally:
        archive.close()
    return vault, uids


def test_keep_until_is_computed_at_ingest_by_the_rule_that_matches(stocked) -> None:  # type: ignore[no-untyped-def]
    vault, uids = stocked
    rows = keep_rows(vault)  # written in the ingest transactions: no plan or serve ran yet
    assert rows == {
        uids["minor"]: ("2040-06-01", "minors"),  # 18th birthday 2033-06-01 + 7 years, later than 2030
        uids["mammo"]: ("2030-03-10", "mammography"),  # by SOP class
        uids["research"]: ("2022-03-10", "research"),  # by the sending AE title
        uids["mr"]: ("2030-03-10", "default"),
        uids["old"]: ("2011-01-02", "default"),
    }


def test_a_corrected_birth_date_recomputes_the_keep_until(stocked) -> None:  # type: ignore[no-untyped-def]
    """Corrections follow the newest version (catalog/db.py): when one changes the patient row,
    the keep-until of the patient's studies follows in the same transaction."""
    from dicomvault.archive.core import Archive

    vault, uids = stocked
    assert keep_rows(vault)[uids["mr"]] == ("2030-03-10", "default")
    archive = Archive.open(load_settings(vault.config))
    try:  # the modality sends the study again with the birth date corrected: a child after all
        archive.ingestor.ingest(instance(("RT-4", "Adult^Ann"), "20100101", uids["mr"], "20200310", "MR", CT_CLASS),
                                source="import:/tmp/z.dcm", actor="test")
    finally:
        archive.close()
    assert keep_rows(vault)[uids["mr"]] == ("2035-01-01", "minors")  # 18th birthday 2028-01-01 + 7 years


def test_a_rule_change_recomputes_every_study_and_the_plan_reports_it(stocked) -> None:  # type: ignore[no-untyped-def]
    vault, uids = stocked
    text = vault.config.read_text().replace('default = "10y"', 'default = "30y"')
    vault.config.write_text(text)
    assert vault.status()["retention"]["stale"] == 5  # the stored hash no longer matches the rules
    report = json.loads(vault.cli("retention", "plan", "--json").stdout)
    assert report["recomputed"] == 5 and report["studies"] == 5
    rows = keep_rows(vault)
    assert rows[uids["mr"]] == ("2050-03-10", "default") and rows[uids["old"]] == ("2031-01-02", "default")
    assert rows[uids["mammo"]] == ("2030-03-10", "mammography")  # its own rule did not change
    assert report["due_now"] == {"studies": 1, "bytes": report["due"][0]["bytes"], "listed": 1}
    assert [(d["study_uid"], d["rule"], d["keep_until"], d["patient_id"]) for d in report["due"]] == [
        (uids["research"], "research", "2022-03-10", "RT-3")]
    assert report["due"][0]["bytes"] > 0
    assert report["by_rule"] == {"default": 2, "mammography": 1, "minors": 1, "research": 1}
    assert {y["year"]: y["studies"] for y in report["by_year"]} == {"2030": 1, "2031": 1, "2040": 1, "2050": 1}
    assert report["forever"]["studies"] == 0 and report["held"] == [] and not report["enabled"]
    assert "retention run" in report["deletion"]
    again = json.loads(vault.cli("retention", "plan", "--json").stdout)
    assert again["recomputed"] == 0  # same rules: nothing to recompute
    plans = audit_rows(vault, "retention")  # a plan lists patients' studies: each run is audited
    assert [(s, d["recomputed"], d["due"], d["rules_hash"]) for s, _o, d in plans] == [
        ("plan", 5, 1, report["rules_hash"]), ("plan", 0, 1, report["rules_hash"])]


def test_holds_from_the_cli_keep_a_study_out_of_the_due_list(stocked) -> None:  # type: ignore[no-untyped-def]
    vault, uids = stocked
    from dicomvault.catalog import Catalog, holds, retention

    before = json.loads(vault.cli("retention", "plan", "--json").stdout)
    assert {d["study_uid"] for d in before["due"]} == {uids["research"], uids["old"]}
    hold_id = vault.cli("hold", "add", "--study", uids["old"], "--reason", "litigation 2026-114").stdout.strip()
    patient_hold = vault.cli("hold", "add", "--patient", "RT-3", "--reason", "subpoena 77").stdout.strip()
    assert hold_id.isdigit() and patient_hold.isdigit() and hold_id != patient_hold
    held = json.loads(vault.cli("retention", "plan", "--json").stdout)
    assert held["due"] == [] and held["due_now"]["studies"] == 0
    assert {(h["study_uid"], h["holds"][0]["reason"]) for h in held["held"]} == {
        (uids["old"], "litigation 2026-114"), (uids["research"], "subpoena 77")}
    catalog = Catalog(load_settings(vault.config).catalog_url)
    try:
        with catalog.read() as conn:
            assert retention.due_for_deletion(conn, datetime.now(timezone.utc).timestamp()) == []
            ok, why = holds.deletable(conn, uids["old"])
            assert not ok and f"legal hold {hold_id}" in why and "litigation 2026-114" in why
            assert holds.deletable(conn, uids["mr"]) == (True, "not held")
            assert holds.deletable(conn, "1.2.3.999")[0] is False
    finally:
        catalog.close()
    listed = json.loads(vault.cli("hold", "list", "--json").stdout)["holds"]
    assert [(h["scope"], h["target"], h["active"]) for h in listed] == [("study", uids["old"], True),
                                                                        ("patient", "RT-3", True)]
    status = vault.status()["retention"]
    assert (status["holds_active"], status["due"], status["expired_held"]) == (2, 0, 2)
    # bad input: a clear one-line error, nothing written
    for args, message in ((("hold", "add", "--study", "1.2.3.4", "--reason", "x"), "no study 1.2.3.4"),
                          (("hold", "add", "--patient", "NOBODY", "--reason", "x"), "no study of Patient ID"),
                          (("hold", "add", "--study", uids["mr"], "--reason", "  "), "a reason is required"),
                          (("hold", "add", "--study", uids["mr"], "--patient", "RT-4", "--reason", "x"), "exactly one"),
                          (("hold", "release", "99", "--reason", "done"), "there is no legal hold 99")):
        refused = vault.cli(*args, check=False)
        assert refused.returncode == 1 and message in refused.stderr and "Traceback" not in refused.stderr, refused
    assert len(json.loads(vault.cli("hold", "list", "--json").stdout)["holds"]) == 2
    vault.cli("hold", "release", hold_id, "--reason", "case closed")
    again = vault.cli("hold", "release", hold_id, "--reason", "twice", check=False)
    assert again.returncode == 1 and "already released" in again.stderr
    after = json.loads(vault.cli("retention", "plan", "--json").stdout)
    assert [d["study_uid"] for d in after["due"]] == [uids["old"]]
    placed = audit_rows(vault, "hold")
    assert [(s, o, d["hold"], d["reason"]) for s, o, d in placed] == [
        (f"study:{uids['old']}", "success", int(hold_id), "litigation 2026-114"),
        ("patient:RT-3", "success", int(patient_hold), "subpoena 77")]
    assert placed[1][2]["patient"] == "RT-3" and placed[0][2]["study"] == uids["old"]
    released = audit_rows(vault, "hold-release")
    assert [(s, d["hold"], d["reason"]) for s, _o, d in released] == [(f"study:{uids['old']}", int(hold_id),
                                                                       "case closed")]
    assert vault.cli("audit", "verify").returncode == 0


# --- holds over the operations API, and serve's recompute at start ---------------------------

def test_holds_over_the_api_need_the_operator_role(stocked) -> None:  # type: ignore[no-untyped-def]
    vault, uids = stocked
    vault.config.write_text(vault.config.read_text().replace('keep = "2y"', 'keep = "3y"'))  # a rule change
    reader, ops = "r" * 32, "o" * 32
    with (vault.root / "keys" / "api-tokens").open("a") as handle:
        handle.write(f"viewer:{reader}:read\nops:{ops}:operator\n")
    vault.start()
    try:
        # serve recomputes the keep-until dates made under the old rules, in the background
        wait_until(lambda: keep_rows(vault)[uids["research"]] == ("2023-03-10", "research"), timeout=30,
                   what="keep-until recomputed at serve start")
        wait_until(lambda: audit_rows(vault, "retention"), timeout=10, what="the recompute audited")
        assert [(s, d["studies"]) for s, _o, d in audit_rows(vault, "retention")] == [("recompute", 5)]
        code, body = api_call(vault, "/api/holds", reader, {"study": uids["old"], "reason": "dashboard tries"})
        assert code == 403 and body["needed"] == "operator"
        assert api_call(vault, "/api/holds", reader) == (200, {"holds": []})  # reading is fine
        code, hold = api_call(vault, "/api/holds", ops, {"study": uids["old"], "reason": "litigation 9"})
        assert code == 201 and hold["scope"] == "study" and hold["active"] and hold["actor"].startswith("api:ops@")
        code, body = api_call(vault, "/api/holds", ops, {"study": uids["mr"]})
        assert code == 400 and "a reason is required" in body["error"]
        code, body = api_call(vault, "/api/holds", ops, {"study": ["x"], "reason": "r"})
        assert code == 400 and "study must be text" in body["error"]
        code, body = api_call(vault, f"/api/holds/{hold['id']}/release", reader, {"reason": "no"})
        assert code == 403
        assert vault.status()["retention"]["expired_held"] == 1
        code, body = api_call(vault, f"/api/holds/{hold['id']}/release", vault.api_token(), {"reason": "settled"})
        assert code == 200 and not body["active"] and body["release_reason"] == "settled"
        code, body = api_call(vault, "/api/holds/424242/release", ops, {"reason": "x"})
        assert code == 404 and "no legal hold 424242" in body["error"]
        listed = vault.api("/api/holds")["holds"]
        assert [(h["id"], h["active"], h["released_by"].startswith("api:admin@")) for h in listed] == [
            (hold["id"], False, True)]
        status = vault.api("/api/status")["retention"]
        assert status["holds_active"] == 0 and status["due"] == 2 and status["stale"] == 0
    finally:
        vault.stop()
    assert [(o, d["hold"]) for _s, o, d in audit_rows(vault, "hold") if o == "success"] == [("success", hold["id"])]
    assert [o for _s, o, _d in audit_rows(vault, "hold")].count("refused") == 2
    assert [(o, d.get("hold")) for _s, o, d in audit_rows(vault, "hold-release")] == [
        ("success", hold["id"]), ("refused", None)]
    forbidden = [d for _s, o, d in audit_rows(vault, "api") if o == "forbidden"]
    assert {d["needed"] for d in forbidden} == {"operator"} and len(forbidden) == 2


def test_plan_and_holds_on_postgresql(tmp_path: Path, postgres_server: PostgresServer) -> None:  # noqa: F811
    """The same SQL on the scale-out catalog: keep-until at ingest, a patient hold, the plan."""
    from dicomvault.catalog import Catalog, holds, retention

    vault, uids = stock(tmp_path, postgres_server.create_database())
    vault.cli("hold", "add", "--patient", "RT-3", "--reason", "subpoena 77")
    report = json.loads(vault.cli("retention", "plan", "--json").stdout)
    assert report["recomputed"] == 0 and report["by_rule"] == {"default": 2, "mammography": 1, "minors": 1,
                                                               "research": 1}
    assert [(d["study_uid"], d["keep_until"]) for d in report["due"]] == [(uids["old"], "2011-01-02")]
    assert [(h["study_uid"], h["rule"]) for h in report["held"]] == [(uids["research"], "research")]
    catalog = Catalog(load_settings(vault.config).catalog_url)
    try:
        with catalog.read() as conn:
            assert [row.study_uid for row in retention.due_for_deletion(conn, datetime.now(timezone.utc).timestamp())] \
                == [uids["old"]]
            assert not holds.deletable(conn, uids["research"])[0]
    finally:
        catalog.close()
