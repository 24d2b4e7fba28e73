"""`dicomvault export --to DIR`: a DICOM File-set that DCMTK and pydicom read, whose files are
byte-identical to what was imported, honest about damaged copies, refusing bad input, audited.

One archive with a mixed corpus (pydicom's test files: CT, MR, US, NM, RT dose/plan/structure
set, SR, ECG waveform; explicit/implicit/big-endian, JPEG, JPEG-LS, J2K, RLE; a meta-less
legacy file) plus generated instances (three patients, a presentation state, an encapsulated
PDF, a non-ASCII name, a Part-10 file without preamble) is exported once and inspected by
several tests; tests that damage objects get their own archive.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import Vault, audit_rows, dcmtk, make_vault, remount

from dicomvault.dicom import split_part10

CORPUS = [  # (file, why it is here)
    "CT_small.dcm",  # CT, explicit VR little endian
    "MR_small_implicit.dcm",  # MR, implicit VR
    "OBXXXX1A_expb.dcm",  # US, explicit VR big endian
    "JPEG-lossy.dcm",  # NM, JPEG extended
    "emri_small_jpeg_ls_lossless.dcm",  # MR, JPEG-LS; no Patient ID or Study ID
    "SC_rgb_rle.dcm",  # SC, RLE
    "693_J2KI.dcm",  # CT, JPEG 2000; no Study Date/Time/ID
    "test-SR.dcm",  # Comprehensive SR -> SR DOCUMENT record
    "rtdose.dcm",  # RT DOSE record, implicit VR
    "rtplan.dcm",  # RT PLAN record
    "waveform_ecg.dcm",  # 12-lead ECG -> WAVEFORM record
    "rtstruct.dcm",  # RT STRUCTURE SET, archived without File Meta Information
]
META_LESS = {"rtstruct.dcm"}
FILE_ID_COMPONENT = re.compile(r"[A-Z0-9_]{1,8}")
PR_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"  # Encapsulated PDF
# dcmmkdir options, documented: the General Purpose MIME profile (-Pmi) because the corpus has
# JPEG, JPEG-LS, J2K, RLE, big-endian and implicit-VR files that STD-GEN-CD does not allow;
# +I because DCMTK's strict mode refuses instances lacking a Type 1 DICOMDIR key (Study ID...)
# that dicomvault invents for the DICOMDIR too; -Nxc/-Nec/-Nrc turn "non-standard transfer
# syntax / pixel encoding / resolution for this profile" from a refusal into a warning.
DCMMKDIR_OPTIONS = ("-Pmi", "+I", "-Nxc", "-Nec", "-Nrc")


@dataclass(frozen=True)
class Source:
    path: Path
    sop_uid: str
    patient_id: str
    study_uid: str
    study_date: str
    modality: str
    sop_class: str
    patient_name: str = ""

    @property
    def patient_key(self) -> str:
        """How the catalog and the DICOMDIR tell patients apart: the ID, else the name."""
        return self.patient_id or f"name:{self.patient_name}"

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.path.read_bytes()).digest()


@dataclass(frozen=True)
class Exported:
    vault: Vault
    sources: dict[str, Source]  # by SOP Instance UID
    out: Path
    report: dict
    stdout: str


def sha256(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def dataset_bytes(data: bytes) -> bytes:
    return data[split_part10(data)[0]:]


def describe(path: Path) -> Source:
    data = path.read_bytes()
    if data[:4] == b"DICM":  # pydicom wants the preamble in front
        data = b"\x00" * 128 + data
    ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    return Source(path, str(ds.SOPInstanceUID), str(ds.get("PatientID", "") or ""), str(ds.StudyInstanceUID),
                  str(ds.get("StudyDate", "") or ""), str(ds.get("Modality", "") or ""), str(ds.SOPClassUID),
                  str(ds.get("PatientName", "") or ""))


def new_instance(template: Path, dest: Path, patient: tuple[str, str], study_uid: str, series_uid: str,
                 moment: datetime, series_number: int, instance_number: int) -> Path:
    ds = pydicom.dcmread(template)
    ds.PatientID, ds.PatientName = patient
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
    ds.StudyDate, ds.StudyTime = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")
    ds.SeriesNumber, ds.InstanceNumber, ds.StudyID, ds.AccessionNumber = series_number, instance_number, "77", "ACC1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dest, enforce_file_format=True)
    return dest


def non_image(dest: Path, sop_class: str, modality: str, patient: tuple[str, str], study_uid: str, moment: datetime,
              extra: Dataset) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName = patient
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S"), "77"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.Modality = "ACC1", "", modality
    ds.SeriesNumber, ds.InstanceNumber = 90, 1
    ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
    ds.update(extra)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def make_sources(ct_small: Path, dest: Path) -> list[Path]:
    """Three patients of our own: EXP-A (CT, 2020, two series), EXP-B (MR + presentation state
    + encapsulated PDF, 2023), EXP-C (non-ASCII name, no preamble on disk, 2021)."""
    from pydicom.data import get_testdata_file

    dest.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    a_study = generate_uid()
    for s in (1, 2):
        series = generate_uid()
        for n in (1, 2):
            made.append(new_instance(ct_small, dest / f"a{s}{n}.dcm", ("EXP-A", "Export^Alice"), a_study, series,
                                     datetime(2020, 1, 15, 9, 30), s, n))
    b_study, b_series = generate_uid(), generate_uid()
    mr = Path(get_testdata_file("MR_small.dcm"))
    for n in (1, 2):
        made.append(new_instance(mr, dest / f"b{n}.dcm", ("EXP-B", "Export^Bob"), b_study, b_series,
                                 datetime(2023, 6, 15, 14, 0), 1, n))
    first_mr = pydicom.dcmread(made[-2], stop_before_pixels=True)
    pr = Dataset()
    pr.ContentLabel, pr.ContentDescription, pr.ContentCreatorName = "KEYVIEW", "key view", "Reader^One"
    pr.PresentationCreationDate, pr.PresentationCreationTime = "20230616", "101500"
    image_ref = Dataset()
    image_ref.ReferencedSOPClassUID, image_ref.ReferencedSOPInstanceUID = first_mr.SOPClassUID, first_mr.SOPInstanceUID
    series_ref = Dataset()
    series_ref.SeriesInstanceUID, series_ref.ReferencedImageSequence = b_series, Sequence([image_ref])
    pr.ReferencedSeriesSequence = Sequence([series_ref])
    made.append(non_image(dest / "b_pr.dcm", PR_CLASS, "PR", ("EXP-B", "Export^Bob"), b_study,
                          datetime(2023, 6, 15, 14, 0), pr))
    pdf = Dataset()
    pdf.MIMETypeOfEncapsulatedDocument, pdf.DocumentTitle, pdf.BurnedInAnnotation = "application/pdf", "Report", "YES"
    pdf.ConceptNameCodeSequence = Sequence()
    pdf.EncapsulatedDocument = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    made.append(non_image(dest / "b_pdf.dcm", PDF_CLASS, "DOC", ("EXP-B", "Export^Bob"), b_study,
                          datetime(2023, 6, 15, 14, 0), pdf))
    c = new_instance(ct_small, dest / "c1.dcm", ("EXP-C", "Müller^Jürgen"), generate_uid(), generate_uid(),
                     datetime(2021, 10, 10, 8, 0), 1, 1)
    ds = pydicom.dcmread(c)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.save_as(c, enforce_file_format=True)
    c.write_bytes(c.read_bytes()[128:])  # "DICM" first: archived as received, no preamble
    made.append(c)
    return made


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, ct_small: Path) -> Iterator[Exported]:
    from pydicom.data import get_testdata_file

    root = tmp_path_factory.mktemp("export")
    vault = make_vault(root / "vault")
    inputs = root / "in"
    inputs.mkdir()
    paths = [Path(shutil.copy(get_testdata_file(name), inputs / name)) for name in CORPUS]
    paths += make_sources(ct_small, inputs / "made")
    imported = json.loads(vault.cli("import", str(inputs), "--json").stdout)
    assert imported["stored"] == len(paths) and not imported["refused"], imported
    sources = {s.sop_uid: s for s in map(describe, paths)}
    assert len(sources) == len(paths), "every source must be its own instance"
    out = root / "fileset"
    proc = vault.cli("export", "--to", str(out), "--json")
    yield Exported(vault, sources, out, json.loads(proc.stdout), proc.stdout)
    vault.stop()


def run_export(vault: Vault, out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict | None]:
    proc = vault.cli("export", "--to", str(out), "--json", *args, check=False)
    report = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc, report


def load_file_set(out: Path) -> FileSet:
    """pydicom's File-set reader: it follows every offset, so a wrong one loses or orphans
    records (and raise_orphans makes that an error)."""
    fs = FileSet()
    fs.load(out / "DICOMDIR", raise_orphans=True)
    return fs


def listed(out: Path) -> dict[str, Path]:
    """SOP Instance UID -> referenced file, as the DICOMDIR says."""
    return {str(instance.SOPInstanceUID): Path(instance.path) for instance in load_file_set(out)}


def records_by_uid(dicomdir: Path) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (record type, File ID) straight from the Directory Record Sequence."""
    ds = pydicom.dcmread(dicomdir)
    return {str(r.ReferencedSOPInstanceUIDInFile): (str(r.DirectoryRecordType), "/".join(r.ReferencedFileID))
            for r in ds.DirectoryRecordSequence if "ReferencedSOPInstanceUIDInFile" in r}


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --- the File-set ---------------------------------------------------------------------------


def test_report_counts_what_was_exported(exported: Exported) -> None:
    report, sources = exported.report, exported.sources
    assert report["ok"] is True and report["failed"] == []
    assert report["instances"] == report["selected"] == len(sources)
    assert report["studies"] == len({s.study_uid for s in sources.values()})
    assert report["patients"] == len({s.patient_key for s in sources.values()})
    records = pydicom.dcmread(exported.out / "DICOMDIR").DirectoryRecordSequence
    assert report["patients"] == sum(1 for r in records if r.DirectoryRecordType == "PATIENT")
    assert report["bytes"] == sum(p.stat().st_size for p in (exported.out / "DICOM").rglob("*") if p.is_file())
    assert report["dicomdir"] == str(exported.out / "DICOMDIR")
    assert report["duration_s"] > 0 and report["instances_per_s"] > 0
    assert report["dicomdir_invented"]["StudyID"] >= 1  # 693_J2KI and others have none


def test_layout_is_dicomdir_plus_conformant_file_ids(exported: Exported) -> None:
    out = exported.out
    assert sorted(p.name for p in out.iterdir()) == ["DICOM", "DICOMDIR"]
    files = [p for p in (out / "DICOM").rglob("*") if p.is_file()]
    assert len(files) == len(exported.sources)
    for path in files:
        parts = path.relative_to(out).parts
        assert len(parts) <= 8 and all(FILE_ID_COMPONENT.fullmatch(part) for part in parts), parts
    for uid, (_type, file_id) in records_by_uid(out / "DICOMDIR").items():
        assert (out / file_id).is_file(), (uid, file_id)


def test_files_are_byte_identical_to_what_was_imported(exported: Exported) -> None:
    adjusted = {a["sop_instance_uid"] for a in exported.report["adjusted"]}
    files = listed(exported.out)
    assert set(files) == set(exported.sources)
    for uid, source in exported.sources.items():
        if uid in adjusted:
            continue
        assert sha256(files[uid]) == source.sha256, source.path.name


def test_copies_archived_without_file_meta_or_preamble_get_one_and_are_reported(exported: Exported) -> None:
    """The dataset bytes stay identical; the added framing is named in the report."""
    by_name = {s.path.name: s for s in exported.sources.values()}
    expected = {by_name[name].sop_uid for name in META_LESS} | {by_name["c1.dcm"].sop_uid}
    adjusted = {a["sop_instance_uid"]: a for a in exported.report["adjusted"]}
    assert set(adjusted) == expected
    files = listed(exported.out)
    for uid, entry in adjusted.items():
        written = files[uid].read_bytes()
        original = exported.sources[uid].path.read_bytes()
        assert written[128:132] == b"DICM"
        assert dataset_bytes(written) == (dataset_bytes(original) if original[:4] == b"DICM" else original)
        assert entry["stored_sha256"] == hashlib.sha256(original).hexdigest()
        assert entry["written_sha256"] == hashlib.sha256(written).hexdigest()
        assert pydicom.dcmread(files[uid]).SOPInstanceUID == uid
    meta_less = by_name["rtstruct.dcm"].sop_uid
    assert "without File Meta Information" in adjusted[meta_less]["change"]
    assert dataset_bytes(files[meta_less].read_bytes()) == by_name["rtstruct.dcm"].path.read_bytes()
    no_preamble = by_name["c1.dcm"]
    assert "preamble" in adjusted[no_preamble.sop_uid]["change"]
    assert files[no_preamble.sop_uid].read_bytes() == b"\x00" * 128 + no_preamble.path.read_bytes()


def test_dcmdump_reads_the_dicomdir_without_errors_and_lists_every_instance(exported: Exported) -> None:
    proc = subprocess.run([dcmtk("dcmdump"), str(exported.out / "DICOMDIR")], capture_output=True,
                          encoding="latin-1", timeout=60)  # dcmdump prints values in their own character set
    assert proc.returncode == 0, proc.stderr
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if re.match(r"\s*[EW]:", line)]
    assert problems == []
    for uid in exported.sources:
        assert f"[{uid}]" in proc.stdout, uid
    assert "Müller^Jürgen" in proc.stdout  # the record keeps the instance's character set


def test_records_have_the_right_types_and_required_keys(exported: Exported) -> None:
    ds = pydicom.dcmread(exported.out / "DICOMDIR")
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    required = {
        "PATIENT": ("PatientID", "PatientName"),
        "STUDY": ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "StudyDescription", "StudyInstanceUID"),
        "SERIES": ("Modality", "SeriesInstanceUID", "SeriesNumber"),
    }
    leaf_keys = ("ReferencedFileID", "ReferencedSOPClassUIDInFile", "ReferencedSOPInstanceUIDInFile",
                 "ReferencedTransferSyntaxUIDInFile")
    type1 = {"PatientID", "StudyDate", "StudyTime", "StudyID", "StudyInstanceUID", "Modality", "SeriesInstanceUID",
             "SeriesNumber", "InstanceNumber"}
    files = listed(exported.out)
    leaves = {}
    for record in ds.DirectoryRecordSequence:
        kind = str(record.DirectoryRecordType)
        for keyword in required.get(kind, leaf_keys + ("InstanceNumber",)):
            assert keyword in record, (kind, keyword)
            if keyword in type1 or keyword in leaf_keys:
                assert record[keyword].value not in (None, ""), (kind, keyword)
        if kind not in required:
            uid = str(record.ReferencedSOPInstanceUIDInFile)
            leaves[uid] = kind
            meta = pydicom.dcmread(files[uid], stop_before_pixels=True).file_meta
            assert record.ReferencedTransferSyntaxUIDInFile == meta.TransferSyntaxUID
            assert record.ReferencedSOPClassUIDInFile == exported.sources[uid].sop_class
    by_name = {s.path.name: leaves[s.sop_uid] for s in exported.sources.values()}
    assert by_name["test-SR.dcm"] == "SR DOCUMENT"
    assert by_name["rtdose.dcm"] == "RT DOSE"
    assert by_name["rtplan.dcm"] == "RT PLAN"
    assert by_name["rtstruct.dcm"] == "RT STRUCTURE SET"
    assert by_name["waveform_ecg.dcm"] == "WAVEFORM"
    assert by_name["b_pr.dcm"] == "PRESENTATION"
    assert by_name["b_pdf.dcm"] == "ENCAP DOC"
    assert by_name["CT_small.dcm"] == by_name["OBXXXX1A_expb.dcm"] == "IMAGE"


def test_dcmmkdir_accepts_the_files_and_agrees_on_records(exported: Exported, tmp_path: Path) -> None:
    """DCMTK builds its own DICOMDIR from a copy of DICOM/: it must take every file under the
    File ID we gave it, and choose the same record type for each."""
    copy = tmp_path / "copy"
    shutil.copytree(exported.out / "DICOM", copy / "DICOM")
    proc = subprocess.run(
        [dcmtk("dcmmkdir"), *DCMMKDIR_OPTIONS, "+r", "+id", str(copy), "+D", str(copy / "DICOMDIR"), "DICOM"],
        capture_output=True, text=True, timeout=120,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "cannot be added" not in log and not re.search(r"^E:", log, re.M), log
    ours, theirs = records_by_uid(exported.out / "DICOMDIR"), records_by_uid(copy / "DICOMDIR")
    assert set(theirs) == set(exported.sources)
    assert theirs == ours


def test_dcmtk_follows_the_dicomdir_offsets(exported: Exported, tmp_path: Path) -> None:
    """dcmmkdir --append reads our DICOMDIR through DCMTK's DcmDicomDir (which resolves every
    offset, warning "Cannot resolve offset" otherwise), adds one file and writes it back:
    every record we wrote must survive."""
    copy = tmp_path / "copy"
    shutil.copytree(exported.out, copy)
    extra = pydicom.dcmread(exported.sources[next(iter(exported.sources))].path, force=True)
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    (copy / "EXTRA").mkdir()
    extra.save_as(copy / "EXTRA" / "X0000001", enforce_file_format=True)
    proc = subprocess.run(
        [dcmtk("dcmmkdir"), *DCMMKDIR_OPTIONS, "+A", "-nb", "+id", str(copy), "+D", str(copy / "DICOMDIR"),
         "EXTRA/X0000001"], capture_output=True, text=True, timeout=120,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "DcmDicomDir" not in log and not re.search(r"^E:", log, re.M), log
    assert set(listed(copy)) == set(exported.sources) | {str(extra.SOPInstanceUID)}


def test_export_is_audited_and_the_chain_holds(exported: Exported) -> None:
    rows = [r for r in audit_rows(exported.vault, "export") if r[0] == str(exported.out)]
    assert len(rows) == 1
    _subject, outcome, detail = rows[0]
    assert outcome == "success"
    assert detail["instances"] == len(exported.sources) and detail["failed"] == []
    assert detail["bytes"] == exported.report["bytes"]
    assert detail["selection"]["description"] == "everything"
    assert len(detail["adjusted"]) == len(exported.report["adjusted"])
    assert "audit chain intact" in exported.vault.cli("audit", "verify").stdout


# --- filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args, wanted", [
    (("--patient", "EXP-A"), lambda s: s.patient_id == "EXP-A"),
    (("--patient", "EXP-A", "--patient", "EXP-C"), lambda s: s.patient_id in ("EXP-A", "EXP-C")),
    (("--since", "20200101", "--until", "20211231"), lambda s: "20200101" <= s.study_date <= "20211231"),
    (("--modality", "ct"), lambda s: s.modality == "CT"),
    (("--modality", "PR", "--modality", "DOC"), lambda s: s.modality in ("PR", "DOC")),
], ids=["patient", "two-patients", "date-range", "modality", "two-modalities"])
def test_filters_export_exactly_what_they_select(exported: Exported, tmp_path: Path, args: tuple[str, ...],
                                                 wanted) -> None:
    expected = {uid for uid, s in exported.sources.items() if wanted(s)}
    assert expected and expected != set(exported.sources)
    proc, report = run_export(exported.vault, tmp_path / "out", *args)
    assert proc.returncode == 0, proc.stderr
    assert report is not None and report["instances"] == len(expected)
    files = listed(tmp_path / "out")
    assert set(files) == expected
    for uid in expected - {a["sop_instance_uid"] for a in report["adjusted"]}:
        assert sha256(files[uid]) == exported.sources[uid].sha256


def test_study_filter_takes_the_whole_study(exported: Exported, tmp_path: Path) -> None:
    study = next(s.study_uid for s in exported.sources.values() if s.patient_id == "EXP-B")
    proc, _report = run_export(exported.vault, tmp_path / "out", "--study", study)
    assert proc.returncode == 0, proc.stderr
    assert set(listed(tmp_path / "out")) == {uid for uid, s in exported.sources.items() if s.study_uid == study}
    assert len(listed(tmp_path / "out")) == 4  # 2 MR + presentation state + PDF


# --- bad input ----------------------------------------------------------------------------------


def test_non_empty_target_is_refused_and_left_as_it_was(exported: Exported, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("someone's files\n")
    before = tree(target)
    proc, _ = run_export(exported.vault, target)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "not empty" in proc.stderr
    assert tree(target) == before
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"x")
    proc, _ = run_export(exported.vault, a_file)
    assert proc.returncode == 1 and "not a directory" in proc.stderr
    assert a_file.read_bytes() == b"x"


def test_an_empty_existing_directory_is_fine(exported: Exported, tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    proc, report = run_export(exported.vault, target, "--patient", "EXP-C")
    assert proc.returncode == 0, proc.stderr
    assert report is not None and report["instances"] == 1
    assert (target / "DICOMDIR").is_file()


@pytest.mark.parametrize("args, message", [
    (("--since", "2020-01-01"), "--since must be a study date as YYYYMMDD"),
    (("--until", "20201301x"), "--until must be a study date as YYYYMMDD"),
    (("--since", "20230101", "--until", "20200101"), "is after --until"),
    (("--study", "not-a-uid"), "is not a DICOM UID"),
    (("--patient", "NOBODY-HERE"), "nothing matches patient NOBODY-HERE"),
    (("--since", "20990101"), "nothing matches study date 20990101"),
], ids=["bad-since", "bad-until", "reversed", "bad-uid", "no-patient", "no-date"])
def test_bad_selection_is_one_clear_line_and_writes_nothing(exported: Exported, tmp_path: Path,
                                                             args: tuple[str, ...], message: str) -> None:
    target = tmp_path / "out"
    proc, report = run_export(exported.vault, target, *args)
    assert proc.returncode == 1 and report is None
    assert message in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not target.exists()


def test_a_refused_export_is_audited_as_a_failure(exported: Exported, tmp_path: Path) -> None:
    target = tmp_path / "nothing"
    proc, _ = run_export(exported.vault, target, "--patient", "NOBODY-AUDITED")
    assert proc.returncode == 1
    rows = [r for r in audit_rows(exported.vault, "export") if r[0] == str(target)]
    assert len(rows) == 1 and rows[0][1] == "failure"
    assert "nothing matches" in rows[0][2]["error"] and rows[0][2]["selection"]["patients"] == ["NOBODY-AUDITED"]


# --- damaged and missing stored copies ---------------------------------------------------------


def object_path(vault: Vault, sop_uid: str) -> Path:
    from dicomvault.catalog import Catalog
    from dicomvault.config import load_settings
    from dicomvault.sites import open_site

    settings = load_settings(vault.config)
    catalog = Catalog(settings.catalog_url)
    try:
        (record,) = catalog.versions_for_uid(sop_uid)
    finally:
        catalog.close()
    path = open_site(settings.primary_site_url).path_of(record.object_id)  # type: ignore[attr-defined]
    assert path.is_relative_to(vault.site_root()), path
    return path


def test_damaged_and_missing_copies_are_reported_and_the_rest_exported(vault: Vault, ct_small: Path,
                                                                       tmp_path: Path) -> None:
    made = make_sources(ct_small, tmp_path / "in")[:4]  # EXP-A: one study, two series of two
    vault.cli("import", str(tmp_path / "in"))
    uids = [describe(p).sop_uid for p in made]
    damaged, missing = uids[1], uids[2]
    path = object_path(vault, damaged)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    object_path(vault, missing).unlink()

    out = tmp_path / "out"
    proc, report = run_export(vault, out, "--patient", "EXP-A")
    assert proc.returncode == 2, proc.stderr
    assert report is not None and report["ok"] is False
    failed = {f["sop_instance_uid"]: f["reason"] for f in report["failed"]}
    assert set(failed) == {damaged, missing}
    assert "damaged" in failed[damaged] or "cannot be trusted" in failed[damaged], failed[damaged]
    assert "missing" in failed[missing] or "not found" in failed[missing].lower(), failed[missing]
    assert report["instances"] == 2
    files = listed(out)
    assert set(files) == {uids[0], uids[3]}
    assert len([p for p in (out / "DICOM").rglob("*") if p.is_file()]) == 2  # no file for the failed ones
    for uid, source in zip(uids, made):
        if uid in files:
            assert sha256(files[uid]) == sha256(source)

    (_subject, outcome, detail), = [r for r in audit_rows(vault, "export") if r[0] == str(out)]
    assert outcome == "partial" and detail["failed_count"] == 2
    assert {f["sop_instance_uid"] for f in detail["failed"]} == {damaged, missing}

    text = vault.cli("export", "--to", str(tmp_path / "out-text"), "--patient", "EXP-A", check=False)
    assert text.returncode == 2
    assert f"FAILED {damaged}" in text.stdout and f"FAILED {missing}" in text.stdout
    assert "exported 2 instance(s)" in text.stdout


def test_when_nothing_can_be_read_no_file_set_is_left(vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    made = make_sources(ct_small, tmp_path / "in")
    vault.cli("import", str(tmp_path / "in"))
    only = describe(made[-1])  # EXP-C has a single instance
    assert only.patient_id == "EXP-C"
    object_path(vault, only.sop_uid).unlink()
    out = tmp_path / "out"
    proc, report = run_export(vault, out, "--patient", "EXP-C")
    assert proc.returncode == 1 and report is None
    assert "could be exported" in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not out.exists()


def test_a_meta_less_copy_gets_the_encoding_it_really_has(vault: Vault, tmp_path: Path) -> None:
    """A bare big-endian dataset: the catalog cannot know its encoding (no meta), the export
    must not label it implicit VR, or every reader would misparse it."""
    from pydicom.data import get_testdata_file

    source = Path(shutil.copy(get_testdata_file("ExplVR_BigEndNoMeta.dcm"), tmp_path / "bare.dcm"))
    vault.cli("import", str(source))
    out = tmp_path / "out"
    proc, report = run_export(vault, out)
    assert proc.returncode == 0, proc.stderr
    assert report is not None and len(report["adjusted"]) == 1
    (written,) = listed(out).values()
    assert pydicom.dcmread(written).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
    assert dataset_bytes(written.read_bytes()) == source.read_bytes()
    dump = subprocess.run([dcmtk("dcmdump"), str(written)], capture_output=True, encoding="latin-1", timeout=60)
    assert dump.returncode == 0 and not re.search(r"^\s*[EW]:", dump.stdout + dump.stderr, re.M), dump.stderr
    assert "BigEndianExplicit" in dump.stdout


def test_a_full_disk_leaves_no_half_file_set(exported: Exported, tmpfs: Path) -> None:
    """The stick fills up mid-way: the export fails with the reason and takes back what it
    wrote, so nobody mistakes a partial folder for the patient's images."""
    remount(tmpfs, "size=1m")  # the corpus is a few MB
    target = tmpfs / "usb"
    proc, report = run_export(exported.vault, target)
    assert proc.returncode == 1 and report is None
    assert "No space left on device" in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert list(tmpfs.iterdir()) == []
    (_subject, outcome, detail), = [r for r in audit_rows(exported.vault, "export") if r[0] == str(target)]
    assert outcome == "failure" and "No space left" in detail["error"]
