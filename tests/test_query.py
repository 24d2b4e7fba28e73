"""The query engine shared by C-FIND and QIDO-RS (catalog/query.py), on real SQLite and PostgreSQL catalogs."""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

import pytest
from sqlalchemy import event, text

from dicomvault.catalog import Catalog, InstanceAttributes, VersionRecord
from dicomvault.catalog import query as q
from dicomvault.catalog.db import HEAD_REVISION, MIGRATIONS_DIR
from dicomvault.catalog.query import LEVELS, Query, QueryError, run_query, supported_keys
from pgserver import postgres_server  # noqa: F401 - fixture

CT, MR, CR, US = (f"1.2.840.10008.5.1.4.1.1.{n}" for n in ("2", "4", "1", "6.1"))
EXPLICIT, JPEG_LS = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.80"
S1, S2, S3, S4, S5 = (f"1.2.3.{n}" for n in range(1, 6))

PATIENTS = {
    "P1": dict(patient_id="P1", patient_name="Doe^John", birth_date="19700101", sex="M"),
    "P2": dict(patient_id="P2", patient_name="Müller^Jürgen", birth_date="19800202", sex="M"),
    "P3": dict(patient_id="P3", patient_name="doe^jane", birth_date="19900303", sex="F"),
    "P4": dict(patient_id="P4", patient_name="Smith[1]^Ann_Marie", birth_date="", sex="F"),
}
STUDIES = {
    S1: dict(patient="P1", study_date="20240115", study_time="093000", accession_number="ACC1",
             study_description="CT CHEST", referring_physician="House^Gregory"),
    S2: dict(patient="P1", study_date="20240220", study_time="140000.5", accession_number="ACC2",
             study_description="MR BRAIN", referring_physician="house^gregory"),
    S3: dict(patient="P2", study_date="20230310", study_time="0800", accession_number="X-1",
             study_description="US ABDOMEN", referring_physician=""),
    S4: dict(patient="P3", study_date="20240115", study_time="180000", accession_number="ACC4",
             study_description="CT HEAD", referring_physician=""),
    S5: dict(patient="P4", study_date="", study_time="", accession_number="A_%[1]",
             study_description="", referring_physician=""),
}
# (study, series uid, modality, series number, [(sop uid, sop class, instance number)])
SERIES = [
    (S1, f"{S1}.1", "CT", "10", [(f"{S1}.1.{n}", CT, str(n)) for n in (1, 2, 10)]),
    (S1, f"{S1}.2", "CR", "2", [(f"{S1}.2.1", CR, "1")]),
    (S2, f"{S2}.1", "MR", "1", [(f"{S2}.1.1", MR, "1"), (f"{S2}.1.2", MR, "2")]),
    (S3, f"{S3}.1", "US", "1", [(f"{S3}.1.1", US, "1")]),
    (S4, f"{S4}.1", "CT", "1", [(f"{S4}.1.1", CT, "1")]),
    (S5, f"{S5}.1", "CT", "1", [(f"{S5}.1.1", CT, "1")]),
]
TWICE = f"{S2}.1.2"  # stored twice: version 2 is JPEG-LS


def _sha(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def store(catalog: Catalog, attrs: InstanceAttributes, content: str = "v1", at: float = 1.0) -> int:
    key_id = _sha("key", attrs.study_uid)[:32]
    record = VersionRecord(
        sop_instance_uid=attrs.sop_instance_uid, version=0, object_id=_sha("obj", attrs.sop_instance_uid, content),
        sha256=_sha("file", attrs.sop_instance_uid, content), dataset_sha256=_sha("ds", attrs.sop_instance_uid, content),
        size_original=100, size_stored=80, transfer_syntax_uid=attrs.transfer_syntax_uid, codec="zstd",
        key_id=key_id, received_at=at, source="test",
    )
    with catalog.write() as conn:
        if catalog.study_key_row(conn, attrs.study_uid) is None:
            catalog.add_study_key(conn, attrs.study_uid, key_id, b"site", b"recovery")
        return catalog.add_version(conn, attrs, record)


def attributes(study: str, series_uid: str, modality: str, series_number: str, sop: str, sop_class: str,
               number: str, ts: str = EXPLICIT) -> InstanceAttributes:
    s = STUDIES[study]
    p = PATIENTS[s["patient"]]
    return InstanceAttributes(
        sop_instance_uid=sop, sop_class_uid=sop_class, study_uid=study, series_uid=series_uid,
        transfer_syntax_uid=ts, **p, study_date=s["study_date"], study_time=s["study_time"],
        accession_number=s["accession_number"], study_id=study[-1], study_description=s["study_description"],
        referring_physician=s["referring_physician"], modality=modality, series_number=series_number,
        series_description=f"{modality} series", body_part="CHEST", instance_number=number,
    )


def populate(catalog: Catalog) -> None:
    for study, series_uid, modality, number, instances in SERIES:
        for sop, sop_class, inumber in instances:
            store(catalog, attributes(study, series_uid, modality, number, sop, sop_class, inumber))
    second = attributes(S2, f"{S2}.1", "MR", "1", TWICE, MR, "2", ts=JPEG_LS)
    assert store(catalog, second, content="v2", at=2.0) == 2


# Every matching test runs on SQLite and on a real PostgreSQL, started for the session by
# pgserver.py (a fresh database each). DICOMVAULT_TEST_POSTGRES_URL may name an empty scratch
# database on another server instead (e.g. postgresql+psycopg://postgres@/dvq?host=/tmp/pg); it is wiped.
BACKENDS = ["sqlite", "postgresql"]


def _scratch_postgres(url: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


@pytest.fixture(scope="module", params=BACKENDS)
def catalog(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('query') / 'c.db'}"
    elif os.environ.get("DICOMVAULT_TEST_POSTGRES_URL"):
        url = os.environ["DICOMVAULT_TEST_POSTGRES_URL"]
        _scratch_postgres(url)
    else:  # only now: a run of the SQLite tests alone starts no server
        url = request.getfixturevalue("postgres_server").create_database()
    catalog = Catalog(url)
    assert catalog.engine.dialect.name == request.param
    populate(catalog)
    yield catalog
    catalog.close()


def find(catalog: Catalog, level: str = "STUDY", root: str = "STUDY", fuzzy: bool = False, **filters: str) -> list[dict]:
    return list(run_query(catalog, Query(level, filters, root=root, fuzzy_person_names=fuzzy)))


def uids(catalog: Catalog, **filters: str) -> list[str]:
    return [row["StudyInstanceUID"] for row in find(catalog, **filters)]


# --- keys and rows ------------------------------------------------------------------------


def test_supported_keys_carry_the_levels_above() -> None:
    patient, study, series, image = (supported_keys(level) for level in LEVELS)
    assert set(patient) < set(study) < set(series) < set(image)
    assert patient["PatientName"] == "PN" and patient["NumberOfPatientRelatedInstances"] == "IS"
    assert study["StudyDate"] == "DA" and study["ModalitiesInStudy"] == "CS" and study["SOPClassesInStudy"] == "UI"
    assert series["NumberOfSeriesRelatedInstances"] == "IS" and "NumberOfSeriesRelatedInstances" not in study
    assert image["AvailableTransferSyntaxUID"] == "UI" and image["SOPInstanceUID"] == "UI"
    with pytest.raises(QueryError, match="unknown query level 'FRAME'"):
        supported_keys("FRAME")


@pytest.mark.parametrize("level", LEVELS)
def test_every_row_has_exactly_the_supported_keys_as_strings(catalog: Catalog, level: str) -> None:
    rows = find(catalog, level=level, root="PATIENT")
    assert len(rows) == {"PATIENT": 4, "STUDY": 5, "SERIES": 6, "IMAGE": 9}[level]
    for row in rows:
        assert list(row) == list(supported_keys(level))
        assert all(isinstance(value, str) for value in row.values())


def test_study_order_is_newest_first_then_time_then_uid(catalog: Catalog) -> None:
    # S4 and S1 share a date: the later time first; the undated study last.
    assert uids(catalog) == [S2, S4, S1, S3, S5]


# --- single value, wildcard, person names -------------------------------------------------


def test_single_value_matching_is_exact_and_case_sensitive(catalog: Catalog) -> None:
    assert uids(catalog, PatientID="P1") == [S2, S1]
    assert uids(catalog, PatientName="Doe^John") == [S2, S1]
    assert uids(catalog, PatientName="DOE^JOHN") == []
    assert uids(catalog, PatientName="Doe") == []  # no implicit prefix matching
    assert uids(catalog, AccessionNumber="ACC4", StudyDescription="CT HEAD") == [S4]
    assert uids(catalog, AccessionNumber="ACC4", StudyDescription="CT CHEST") == []


def test_wildcards_star_and_question_mark(catalog: Catalog) -> None:
    assert uids(catalog, PatientName="Doe*") == [S2, S1]  # case-sensitive: not doe^jane
    assert uids(catalog, PatientName="doe*") == [S4]
    assert uids(catalog, PatientName="?oe^J*") == [S2, S1]
    assert uids(catalog, PatientName="*^J*") == [S2, S1, S3]  # Doe^John, Müller^Jürgen
    assert uids(catalog, AccessionNumber="ACC?") == [S2, S4, S1]
    assert uids(catalog, StudyDescription="CT*") == [S4, S1]


def test_sql_pattern_metacharacters_are_literal(catalog: Catalog) -> None:
    assert uids(catalog, AccessionNumber="A_%[1]") == [S5]
    assert uids(catalog, AccessionNumber="A_%[*") == [S5]
    assert uids(catalog, AccessionNumber="AC_*") == []  # "_" is no wildcard in DICOM
    assert uids(catalog, AccessionNumber="AC%") == []
    assert uids(catalog, PatientName="Smith[1]*") == [S5]
    assert uids(catalog, PatientName="Smith[?]^Ann_*") == [S5]
    assert uids(catalog, PatientName="Smith[12]*") == []  # "[" is no character class


def test_non_ascii_names(catalog: Catalog) -> None:
    assert uids(catalog, PatientName="Müller^Jürgen") == [S3]
    assert uids(catalog, PatientName="Mü*") == [S3]
    assert uids(catalog, PatientName="M?ller*") == [S3]  # ? is one character, not one byte
    assert uids(catalog, PatientName="MÜLLER*") == []


def test_fuzzy_person_names_ignore_case_only_when_asked(catalog: Catalog) -> None:
    assert uids(catalog, fuzzy=True, PatientName="doe*") == [S2, S4, S1]
    assert uids(catalog, fuzzy=True, PatientName="DOE^JOHN") == [S2, S1]
    assert uids(catalog, fuzzy=True, PatientName="MÜLLER^JÜRGEN") == [S3]  # beyond ASCII
    assert uids(catalog, fuzzy=True, PatientName="müll*") == [S3]
    assert uids(catalog, fuzzy=True, ReferringPhysicianName="HOUSE*") == [S2, S1]
    assert uids(catalog, fuzzy=False, ReferringPhysicianName="House*") == [S1]
    # Only PN is fuzzy: other text keys stay case-sensitive.
    assert uids(catalog, fuzzy=True, StudyDescription="ct*") == []
    patients = find(catalog, level="PATIENT", root="PATIENT", fuzzy=True, PatientName="DOE*")
    assert [row["PatientID"] for row in patients] == ["P1", "P3"]


def test_value_lists_match_any(catalog: Catalog) -> None:
    assert uids(catalog, AccessionNumber="ACC1\\X-1") == [S1, S3]
    assert uids(catalog, PatientName="Doe*\\doe*") == [S2, S4, S1]


# --- universal matching and unsupported keys ----------------------------------------------


def test_universal_matching_does_not_narrow(catalog: Catalog) -> None:
    everything = uids(catalog)
    assert uids(catalog, PatientName="", StudyDate="", ModalitiesInStudy="", StudyInstanceUID="") == everything
    assert uids(catalog, PatientName="*", AccessionNumber=" * ") == everything
    assert uids(catalog, StudyDescription="*") == everything  # even the empty description of S5


def test_keys_the_catalog_does_not_hold_are_ignored(catalog: Catalog) -> None:
    rows = find(catalog, OtherPatientIDs="X", Modality="CT", NumberOfStudyRelatedInstances="99",
                InstitutionName="Nowhere")
    assert [row["StudyInstanceUID"] for row in rows] == [S2, S4, S1, S3, S5]
    assert "OtherPatientIDs" not in rows[0] and "Modality" not in rows[0]
    assert "NumberOfStudyRelatedInstances" not in q.MATCHABLE_KEYS and "OtherPatientIDs" not in q.MATCHABLE_KEYS
    assert {"PatientName", "ModalitiesInStudy", "Modality"} <= q.MATCHABLE_KEYS


# --- dates, times, UIDs -------------------------------------------------------------------


def test_date_single_and_ranges(catalog: Catalog) -> None:
    assert uids(catalog, StudyDate="20240115") == [S4, S1]
    assert uids(catalog, StudyDate="20240101-20240131") == [S4, S1]
    assert uids(catalog, StudyDate="20240115-20240220") == [S2, S4, S1]  # bounds inclusive
    assert uids(catalog, StudyDate="-20231231") == [S3]  # the undated study does not match a range
    assert uids(catalog, StudyDate="20240201-") == [S2]
    assert uids(catalog, StudyDate="20240301-20240101") == []  # reversed: matches nothing
    patients = find(catalog, level="PATIENT", root="PATIENT", PatientBirthDate="19750101-19851231")
    assert [row["PatientID"] for row in patients] == ["P2"]


@pytest.mark.parametrize("value, message", [
    ("2024-01-01", "not a valid range"),
    ("20240231", "'20240231' is not a valid calendar date"),
    ("2024011", "not a DICOM date"),
    ("20240101-2024013X", "not a DICOM date"),
    ("2024*", "not a DICOM date"),
    ("-", "not a valid range"),
    ("20240101\\20240102", "not a list"),
])
def test_malformed_dates_are_refused(catalog: Catalog, value: str, message: str) -> None:
    with pytest.raises(QueryError, match=message) as info:
        run_query(catalog, Query("STUDY", {"StudyDate": value}))
    assert str(info.value).startswith("StudyDate: ")


def test_times_match_at_their_own_precision(catalog: Catalog) -> None:
    assert uids(catalog, StudyTime="0930") == [S1]  # 093000
    assert uids(catalog, StudyTime="093000") == [S1]
    assert uids(catalog, StudyTime="1400") == [S2]  # 140000.5
    assert uids(catalog, StudyTime="0900-1000") == [S1]
    assert uids(catalog, StudyTime="-0930") == [S1, S3]  # upper bound inclusive to the minute
    assert uids(catalog, StudyTime="1400-") == [S2, S4]
    assert uids(catalog, StudyTime="08:00-08:30") == [S3]  # ACR-NEMA colons accepted
    for bad in ("25", "12345", "1260", "noon"):
        with pytest.raises(QueryError, match="StudyTime"):
            run_query(catalog, Query("STUDY", {"StudyTime": bad}))


def test_uid_single_and_list(catalog: Catalog) -> None:
    assert uids(catalog, StudyInstanceUID=S3) == [S3]
    assert uids(catalog, StudyInstanceUID=f"{S1}\\{S3}\\9.9.9") == [S1, S3]
    assert uids(catalog, StudyInstanceUID=f"{S1}\x00") == [S1]  # UI padding
    series = find(catalog, level="SERIES", SeriesInstanceUID=f"{S1}.2\\{S4}.1")
    assert [row["SeriesInstanceUID"] for row in series] == [f"{S4}.1", f"{S1}.2"]


@pytest.mark.parametrize("value, message", [
    ("1.2.x", "'1.2.x' is not a valid UID"),
    (f"{S1}\\1..2", "'1..2' is not a valid UID"),
    (f"{S1}\\", "'' is not a valid UID"),
    ("1.2.3.*", "wildcards are not allowed in a UID"),
    ("1." + "1" * 70, "at most 64 characters"),
])
def test_malformed_uids_are_refused(catalog: Catalog, value: str, message: str) -> None:
    with pytest.raises(QueryError, match=message.replace("*", r"\*").replace(".", r"\.")):
        run_query(catalog, Query("STUDY", {"StudyInstanceUID": value}))


# --- levels, roots and computed attributes ------------------------------------------------


def test_levels_and_roots(catalog: Catalog) -> None:
    assert find(catalog, root="PATIENT") == find(catalog, root="STUDY")
    patients = find(catalog, level="PATIENT", root="PATIENT", PatientID="P1")
    assert [(row["PatientName"], row["PatientBirthDate"], row["PatientSex"]) for row in patients] == [
        ("Doe^John", "19700101", "M")
    ]
    with pytest.raises(QueryError, match="Study Root information model has no PATIENT level"):
        run_query(catalog, Query("PATIENT", {}, root="STUDY"))
    with pytest.raises(QueryError, match="unknown query level 'WORKLIST'"):
        run_query(catalog, Query("WORKLIST", {}))
    with pytest.raises(QueryError, match="unknown information model root 'MODALITY'"):
        run_query(catalog, Query("STUDY", {}, root="MODALITY"))
    # Patients by name (SQLite compares code points: upper case before lower case).
    assert [row["PatientID"] for row in find(catalog, level="PATIENT", root="PATIENT")] == ["P1", "P2", "P4", "P3"]


def test_patient_level_computed_counts(catalog: Catalog) -> None:
    (row,) = find(catalog, level="PATIENT", root="PATIENT", PatientID="P1")
    assert row["NumberOfPatientRelatedStudies"] == "2"
    assert row["NumberOfPatientRelatedSeries"] == "3"
    assert row["NumberOfPatientRelatedInstances"] == "6"  # 4 + 2; the second version is no instance


def test_study_level_computed_attributes(catalog: Catalog) -> None:
    rows = {row["StudyInstanceUID"]: row for row in find(catalog)}
    s1 = rows[S1]
    assert s1["ModalitiesInStudy"] == "CR\\CT"
    assert s1["SOPClassesInStudy"] == f"{CR}\\{CT}"
    assert (s1["NumberOfStudyRelatedSeries"], s1["NumberOfStudyRelatedInstances"]) == ("2", "4")
    # Patient counts below PATIENT level cost a walk over all the patient's instances: only on request.
    assert (s1["NumberOfPatientRelatedStudies"], s1["NumberOfPatientRelatedInstances"]) == ("", "")
    (asked,) = find(catalog, StudyInstanceUID=S1, NumberOfPatientRelatedStudies="")
    assert (asked["NumberOfPatientRelatedStudies"], asked["NumberOfPatientRelatedSeries"],
            asked["NumberOfPatientRelatedInstances"]) == ("2", "3", "6")
    assert {k: v for k, v in asked.items() if not k.startswith("NumberOfPatient")} == {
        k: v for k, v in s1.items() if not k.startswith("NumberOfPatient")}
    assert (s1["StudyDate"], s1["StudyTime"], s1["AccessionNumber"], s1["StudyDescription"]) == (
        "20240115", "093000", "ACC1", "CT CHEST")
    assert (s1["PatientName"], s1["PatientID"], s1["ReferringPhysicianName"]) == ("Doe^John", "P1", "House^Gregory")
    assert rows[S2]["NumberOfStudyRelatedInstances"] == "2"  # two versions of one instance count once
    assert rows[S2]["ModalitiesInStudy"] == "MR"


def test_matching_on_modalities_and_sop_classes_in_study(catalog: Catalog) -> None:
    assert uids(catalog, ModalitiesInStudy="CR") == [S1]
    assert uids(catalog, ModalitiesInStudy="CT") == [S4, S1, S5]
    assert uids(catalog, ModalitiesInStudy="MR\\US") == [S2, S3]
    assert uids(catalog, ModalitiesInStudy="C?") == [S4, S1, S5]
    assert uids(catalog, ModalitiesInStudy="CT", StudyDate="20240101-20240131") == [S4, S1]
    assert uids(catalog, ModalitiesInStudy="XA") == []
    assert uids(catalog, SOPClassesInStudy=MR) == [S2]
    assert uids(catalog, SOPClassesInStudy=f"{CR}\\{US}") == [S1, S3]
    with pytest.raises(QueryError, match="SOPClassesInStudy: 'CT' is not a valid UID"):
        run_query(catalog, Query("STUDY", {"SOPClassesInStudy": "CT"}))


def test_series_level(catalog: Catalog) -> None:
    rows = find(catalog, level="SERIES", StudyInstanceUID=S1)
    # SeriesNumber numerically: 2 before 10.
    assert [(row["SeriesInstanceUID"], row["SeriesNumber"]) for row in rows] == [(f"{S1}.2", "2"), (f"{S1}.1", "10")]
    assert [row["NumberOfSeriesRelatedInstances"] for row in rows] == ["1", "3"]
    assert {row["PatientID"] for row in rows} == {"P1"}
    assert {row["NumberOfStudyRelatedInstances"] for row in rows} == {"4"}
    assert rows[0]["Modality"] == "CR" and rows[0]["BodyPartExamined"] == "CHEST"
    assert [row["SeriesInstanceUID"] for row in find(catalog, level="SERIES", Modality="CT")] == [
        f"{S4}.1", f"{S1}.1", f"{S5}.1"]
    assert find(catalog, level="SERIES", Modality="ct") == []


def test_image_level_latest_version_once(catalog: Catalog) -> None:
    rows = find(catalog, level="IMAGE", StudyInstanceUID=S2)
    assert [row["SOPInstanceUID"] for row in rows] == [f"{S2}.1.1", TWICE]
    assert [row["AvailableTransferSyntaxUID"] for row in rows] == [EXPLICIT, JPEG_LS]
    assert rows[1]["SOPClassUID"] == MR and rows[1]["NumberOfSeriesRelatedInstances"] == "2"
    ct = find(catalog, level="IMAGE", SeriesInstanceUID=f"{S1}.1")
    assert [row["InstanceNumber"] for row in ct] == ["1", "2", "10"]  # numerically
    (one,) = find(catalog, level="IMAGE", root="PATIENT", PatientID="P1", SOPInstanceUID=f"{S1}.2.1")
    assert (one["StudyInstanceUID"], one["SeriesInstanceUID"], one["Modality"]) == (S1, f"{S1}.2", "CR")
    assert find(catalog, level="IMAGE", InstanceNumber="2", SOPClassUID=CT) == [
        row for row in ct if row["InstanceNumber"] == "2"]


# --- limit / offset and streaming ---------------------------------------------------------


def test_limit_and_offset(catalog: Catalog) -> None:
    page = lambda limit, offset: [  # noqa: E731
        row["StudyInstanceUID"] for row in run_query(catalog, Query("STUDY", {}, limit=limit, offset=offset))]
    assert page(2, 0) == [S2, S4]
    assert page(2, 1) == [S4, S1]
    assert page(2, 4) == [S5]
    assert page(None, 3) == [S3, S5]
    assert page(0, 0) == []
    assert page(10, 10) == []
    with pytest.raises(QueryError, match="limit must be a non-negative integer"):
        run_query(catalog, Query("STUDY", {}, limit=-1))
    with pytest.raises(QueryError, match="offset must be a non-negative integer"):
        run_query(catalog, Query("STUDY", {}, offset=-5))


def test_errors_are_raised_before_any_row_is_read(catalog: Catalog) -> None:
    with pytest.raises(QueryError):
        run_query(catalog, Query("STUDY", {"StudyDate": "yesterday"}))  # no next() needed


def test_results_stream_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'big.db'}")
    for n in range(23):
        store(catalog, InstanceAttributes(
            sop_instance_uid=f"2.25.{n}.1", sop_class_uid=CT, study_uid=f"2.25.{n}", series_uid=f"2.25.{n}.0",
            transfer_syntax_uid=EXPLICIT, patient_id=f"Q{n}", study_date=f"2020{1 + n % 12:02d}01", modality="CT"))
    monkeypatch.setattr(q, "CHUNK_ROWS", 5)
    enrichments: list[int] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.startswith("SELECT series.study_pk, series.id, series.modality"):
            enrichments.append(len(parameters))

    event.listen(catalog.engine, "before_cursor_execute", count)
    rows = run_query(catalog, Query("STUDY", {"ModalitiesInStudy": ""}))
    assert inspect.isgenerator(rows)
    assert enrichments == []  # nothing read before the first next()
    first = next(rows)
    assert first["NumberOfStudyRelatedInstances"] == "1"
    assert enrichments == [5]  # only the first chunk's computed attributes were read
    assert catalog.engine.pool.checkedout() == 1
    rows.close()  # stopping early (C-CANCEL) gives the connection back
    assert catalog.engine.pool.checkedout() == 0
    assert len(list(run_query(catalog, Query("STUDY", {})))) == 23
    assert enrichments[1:] == [5, 5, 5, 5, 3]
    catalog.close()


# --- migration ----------------------------------------------------------------------------


def _indexes(catalog: Catalog) -> set[str]:
    with catalog.read() as conn:
        return {row[0] for row in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))}


def test_migration_0004_upgrades_an_existing_0003_catalog(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    catalog = Catalog(url)
    populate(catalog)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with catalog.write_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
    with catalog.read() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0003"
    old = _indexes(catalog)
    assert {"ix_studies_date", "ix_series_study", "ix_instances_series"} <= old
    assert "ix_studies_patient_name" not in old
    catalog.close()

    catalog = Catalog(url)  # opening migrates to head
    with catalog.read() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
    new = _indexes(catalog)
    assert {"ix_studies_date_time_uid", "ix_studies_patient_name", "ix_series_study_modality",
            "ix_instances_series_class"} <= new
    assert not {"ix_studies_date", "ix_series_study", "ix_instances_series"} & new
    assert [row["StudyInstanceUID"] for row in run_query(catalog, Query("STUDY", {"ModalitiesInStudy": "CT"}))] == [
        S4, S1, S5]
    with catalog.read() as conn:
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT id FROM studies WHERE study_date BETWEEN '20240101' AND '20240131'"))
    assert "ix_studies_date_time_uid" in plan
    catalog.close()
