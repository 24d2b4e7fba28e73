"""The fast header walk must read exactly what pydicom reads, on the whole corpus."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from dicomvault.dicom import part10
from dicomvault.dicom.header import HeaderWalkError


def test_fast_walk_matches_pydicom_on_every_corpus_file(corpus: list[Path]) -> None:
    compared = 0
    for path in corpus:
        data = path.read_bytes()
        try:
            offset, ts, _media = part10._read_meta(data)
        except part10.DicomFormatError:
            continue
        if not offset or not ts:
            continue
        try:
            fast = part10._fast_values(data, offset, ts)
        except (HeaderWalkError, LookupError, ValueError):
            continue  # the fallback path handles it; parse_part10 tests cover that
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                slow, _ = part10._pydicom_values(data, offset)
            except part10.DicomFormatError:
                continue
        assert fast == slow, path.name
        compared += 1
    assert compared >= 200, f"only {compared} files compared"


def test_undefined_length_sequences_are_skipped(tmp_path: Path) -> None:
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = generate_uid()
    inner.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ds.ReferencedStudySequence = Sequence([inner])
    ds.PatientName = "Seq^Test"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "seq.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    # Rewrite the sequence with undefined lengths, as many modalities send it.
    elem = ds["ReferencedStudySequence"]
    elem.is_undefined_length = True
    elem.value[0].is_undefined_length_sequence_item = True
    ds.save_as(path, enforce_file_format=True)
    undefined = path.read_bytes()
    assert undefined != raw and b"\xfe\xff\xdd\xe0" in undefined
    parsed = part10.parse_part10(undefined)
    assert parsed.attributes.patient_name == "Seq^Test"
    assert parsed.attributes.study_uid == ds.StudyInstanceUID


def test_every_accepted_corpus_file_cut_short_is_refused_as_truncated(corpus: list[Path]) -> None:
    """Dropping the last byte, or cutting inside the dataset, always lands inside an element.

    (A cut exactly on an element boundary is indistinguishable from a complete file and is
    caught only if it removes a required UID; dropping the last byte never falls on one: it
    always belongs to the last element. Files the walker leaves to pydicom (deflated, absurdly
    nested) are not checked here; files not in their declared encoding are refused outright.)
    """
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in corpus:
            data = path.read_bytes()
            try:
                parsed = part10.parse_part10(data)
            except part10.DicomFormatError:
                continue
            if parsed.dataset_offset == 0:
                continue  # meta-less legacy files are left to pydicom's judgement
            try:
                part10._fast_values(data, parsed.dataset_offset, parsed.attributes.transfer_syntax_uid)
            except (HeaderWalkError, LookupError, ValueError):
                continue  # odd encodings the walker cannot follow are left to pydicom too
            try:
                part10.parse_part10(data[:-1])
            except part10.DicomFormatError as exc:
                assert str(exc).startswith("truncated"), f"{path.name}: {exc}"
            else:
                raise AssertionError(f"{path.name} minus its last byte was accepted")
            checked += 1
    assert checked >= 200, f"only {checked} files checked"


def test_hand_packed_file_meta_equals_pydicom_writer() -> None:
    """build_part10 packs the meta group itself for speed; it must equal pydicom's output."""
    for sop_class, sop_uid, syntax in (
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"),  # even lengths
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", "1.2.840.10008.1.2"),  # odd lengths: padded
        ("1.2.840.10008.5.1.4.1.1.7", "2.25." + "9" * 39, "1.2.840.10008.1.2.4.90"),
    ):
        dataset = b"\x08\x00\x18\x00UI\x08\x001.2.3.4\x00"
        fast = part10.build_part10(sop_class, sop_uid, syntax, dataset)
        assert fast == part10.build_part10_with_pydicom(sop_class, sop_uid, syntax, dataset)
        assert part10._read_meta(fast)[1] == syntax


def test_uid_rules_of_ps3_5_9_1() -> None:
    """str.isdigit() would pass superscripts and Arabic-Indic digits: the rule is ASCII 0-9."""
    good = ["0", "1.2.840.10008.1.2.1", "2.25.0", "1.0.10", "1." + "2" * 62]
    bad = {"1." + "2" * 63: "over 64", "1.2.\u00b9\u00b2": "digits 0-9", "1.2.\u0663\u0664": "digits 0-9",
           "1..2": "empty component", "1.2.": "empty component", ".1.2": "empty component",
           "1.02": "leading zero", "01.2": "leading zero", "1.2 ": "digits 0-9", "1.2\x00": "digits 0-9"}
    assert [part10.uid_problem(uid) for uid in good] == [""] * len(good)
    wrong = {uid: part10.uid_problem(uid) for uid, words in bad.items() if words not in part10.uid_problem(uid)}
    assert not wrong, wrong


def test_strict_walk_accepts_an_undefined_length_un_sequence_in_implicit_vr() -> None:
    """A sequence of VR UN with undefined length holds implicit VR LE items (PS3.5 6.2.2),
    whatever the data set's syntax: the strict walk must follow it, not call it garbage."""
    import struct

    def explicit(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH2sH", group, elem, vr, len(value)) + value

    def implicit(group: int, elem: int, value: bytes) -> bytes:
        return struct.pack("<HHI", group, elem, len(value)) + value

    item = implicit(0x0008, 0x1150, b"1.2.840.10008.5.1.4.1.1.2\x00") + implicit(0x0008, 0x1155, b"1.2.3.4\x00")
    un_sequence = (struct.pack("<HH2sHI", 0x0009, 0x1010, b"UN", 0, 0xFFFFFFFF)
                   + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + item + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
                   + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    dataset = (explicit(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\x00")
               + explicit(0x0008, 0x0018, b"UI", b"1.2.3.5\x00") + un_sequence
               + explicit(0x0020, 0x000D, b"UI", b"1.2.3.6\x00") + explicit(0x0020, 0x000E, b"UI", b"1.2.3.7\x00"))
    data = part10.build_part10("1.2.840.10008.5.1.4.1.1.2", "1.2.3.5", "1.2.840.10008.1.2.1", dataset)
    assert part10.parse_part10(data).attributes.series_uid == "1.2.3.7"
    garbled = dataset.replace(b"\x20\x00\x0d\x00", b"\x20\x00\x0d\x00JUNK")
    with pytest.raises(part10.DicomFormatError, match="invalid explicit VR LE data set"):
        part10.parse_part10(part10.build_part10("1.2.840.10008.5.1.4.1.1.2", "1.2.3.5", "1.2.840.10008.1.2.1",
                                                garbled))


def test_deflated_data_set_is_walked_strictly_once_inflated(ct_small: Path) -> None:
    """Deflate wraps an explicit VR LE data set: inflated, it must be one (the pydicom path
    reads mis-encoded data sets leniently, so the strict walk runs after it)."""
    import zlib

    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(ct_small)

    def deflated(implicit: bool) -> bytes:
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
        write_dataset(buffer, ds)
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body = packer.compress(buffer.getvalue()) + packer.flush()
        return part10.build_part10(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1.99", body)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert part10.parse_part10(deflated(implicit=False)).attributes.sop_instance_uid == ds.SOPInstanceUID
        with pytest.raises(part10.DicomFormatError, match="invalid explicit VR LE data set: no valid VR"):
            part10.parse_part10(deflated(implicit=True))
