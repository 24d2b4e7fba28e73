"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) against a real `dicomvault serve`, driven by dicomweb-client.

One server (module scope) holds a small corpus with fresh UIDs, imported (kept whole, so WADO
must return the very files) plus one instance received over DIMSE (re-wrapped: its dataset
bytes must come back). Tests that store (STOW-RS) use their own patients, so searches on the
corpus stay exact. Separate servers check the default (disabled) and bearer tokens.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid
from requests import HTTPError

from conftest import Vault, dcmtk, make_vault
from dicomvault.config import load_settings
from dicomvault.dicom import split_part10
from dicomvault.serve.dicomweb.multipart import BodyTooLarge, MultipartError, read_parts

QUERY_LIMIT = 3
MAX_REQUEST = 4_000_000
EXPLICIT_LE, IMPLICIT_LE, RLE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.5"
DICOM_MULTIPART = re.compile(r'^multipart/related; type="application/dicom"; boundary=[0-9a-f]{32}$')


@dataclass
class Item:
    path: Path
    study: str
    series: str
    sop: str


@dataclass
class Corpus:
    vault: Vault
    base: str  # http://127.0.0.1:PORT/dicomweb
    items: dict[str, Item]

    def client(self, **kwargs) -> DICOMwebClient:
        return DICOMwebClient(url=self.base, **kwargs)

    def url(self, key: str) -> str:
        item = self.items[key]
        return f"{self.base}/studies/{item.study}/series/{item.series}/instances/{item.sop}"


def _testdata(name: str) -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name))


def _derive(source: Path, dest: Path, study: str, series: str, **attrs: str) -> Item:
    """A copy of a pydicom test file with new UIDs and the given attributes, saved as Part-10."""
    ds = pydicom.dcmread(source)
    sop = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return Item(dest, study, series, sop)


def split_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """An independent multipart/related splitter (not the server's code): (headers, content) per part."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    pieces = body.split(b"--" + boundary)
    assert pieces[-1] in (b"--\r\n", b"--"), "no close delimiter: the multipart body is incomplete"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n") and piece.endswith(b"\r\n"), "part not framed by CRLF"
        head, _, content = piece[2:-2].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if line)
        parts.append(({k.lower(): v for k, v in headers.items()}, content))
    return parts


def dataset_bytes(data: bytes) -> bytes:
    return data[split_part10(data)[0]:]


def audit_rows(vault: Vault, action: str, actor_prefix: str = "dicomweb:") -> list[dict]:
    url = load_settings(vault.config).catalog_url
    with sqlite3.connect(url.split("///", 1)[1]) as conn:
        rows = conn.execute("SELECT actor, action, subject, outcome, detail FROM audit_log "
                            "WHERE action = ? AND actor LIKE ? ORDER BY id", (action, actor_prefix + "%")).fetchall()
    return [{"actor": a, "action": b, "subject": s, "outcome": o, "detail": json.loads(d)} for a, b, s, o, d in rows]


def instance_count(vault: Vault) -> int:
    return vault.status()["counts"]["versions"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    root = tmp_path_factory.mktemp("dicomweb")
    vault = make_vault(root / "vault")
    vault.set_config("dicomweb", "enabled", "true")
    # These tests are about the services, not access (test_http_front_door.py): no token asked.
    vault.set_config("dicomweb", "anonymous_roles", '["read", "store"]')
    vault.set_config("dicomweb", "query_limit", str(QUERY_LIMIT))
    vault.set_config("dicomweb", "max_request_bytes", str(MAX_REQUEST))
    src, items = root / "incoming", {}
    study_a, series_a = generate_uid(), generate_uid()
    common_a = dict(PatientID="DWQ001", PatientName="Doe^Jane", StudyDate="20240105", Modality="CT",
                    AccessionNumber="DWACC1", StudyDescription="Chest")
    items["a1"] = _derive(_testdata("CT_small.dcm"), src / "a1.dcm", study_a, series_a, InstanceNumber="1", **common_a)
    items["a2"] = _derive(_testdata("CT_small.dcm"), src / "a2.dcm", study_a, series_a, InstanceNumber="2", **common_a)
    study_b = generate_uid()
    common_b = dict(PatientID="DWQ002", PatientName="Roe^Richard", StudyDate="20240620", Modality="MR",
                    AccessionNumber="DWACC2")
    items["native"] = _derive(_testdata("emri_small.dcm"), src / "b1.dcm", study_b, generate_uid(), **common_b)
    items["rle"] = _derive(_testdata("emri_small_RLE.dcm"), src / "b2.dcm", study_b, generate_uid(), **common_b)
    items["bits"] = _derive(_testdata("liver.dcm"), src / "c1.dcm", generate_uid(), generate_uid(),
                            PatientID="XDW003", PatientName="Poe^Edgar", StudyDate="20231231", Modality="OT")
    vault.cli("import", str(src))
    dimse = root / "dimse"
    items["dimse"] = _derive(_testdata("CT_small.dcm"), dimse / "d1.dcm", generate_uid(), generate_uid(),
                             PatientID="DIM005", PatientName="Dimse^Dora", StudyDate="20240301")
    ds = pydicom.dcmread(items["dimse"].path)
    del ds[0xFFFCFFFC]  # the trailing padding storescu drops, so the dataset sent equals the file's
    ds.save_as(items["dimse"].path, enforce_file_format=True)
    vault.start()
    sent = subprocess.run([dcmtk("storescu"), "-aec", vault.ae_title, "127.0.0.1", str(vault.dicom_port),
                           str(items["dimse"].path)], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    vault.wait_settled()
    yield Corpus(vault, f"http://127.0.0.1:{vault.http_port}/dicomweb", items)
    vault.stop()


def _uids(results: list[dict], tag: str = "0020000D") -> set[str]:
    return {r[tag]["Value"][0] for r in results}


# --- QIDO-RS --------------------------------------------------------------------------------


def test_qido_finds_exactly_the_matches(corpus: Corpus) -> None:
    client, items = corpus.client(), corpus.items
    a, b, c = items["a1"].study, items["native"].study, items["bits"].study
    assert _uids(client.search_for_studies(search_filters={"PatientID": "DWQ*"})) == {a, b}
    assert _uids(client.search_for_studies(
        search_filters={"PatientID": "DWQ*", "StudyDate": "20240101-20240131"})) == {a}
    assert _uids(client.search_for_studies(search_filters={"StudyDate": "-20231231"})) == {c}
    assert _uids(client.search_for_studies(search_filters={"00100020": "DWQ002"})) == {b}
    assert _uids(client.search_for_studies(search_filters={"StudyInstanceUID": f"{a},{c}"})) == {a, c}
    assert _uids(client.search_for_studies(search_filters={"ModalitiesInStudy": "MR", "PatientID": "DWQ*"})) == {b}
    assert _uids(client.search_for_studies(search_filters={"AccessionNumber": "DWACC?"})) == {a, b}
    assert _uids(client.search_for_studies(search_filters={"PatientName": "doe*"}, fuzzymatching=True)) == {a}
    assert client.search_for_studies(search_filters={"PatientName": "doe*"}) == []  # case-sensitive without fuzzy

    (study,) = client.search_for_studies(search_filters={"StudyInstanceUID": a})
    assert study["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert study["00080020"]["Value"] == ["20240105"]
    assert study["00080061"]["Value"] == ["CT"]
    assert study["00201206"]["Value"] == [1] and study["00201208"]["Value"] == [2]  # series, instances
    assert "00081030" not in study  # StudyDescription is not a default study attribute...
    (study,) = client.search_for_studies(search_filters={"StudyInstanceUID": a}, fields=["StudyDescription"])
    assert study["00081030"]["Value"] == ["Chest"]  # ...but comes with includefield
    assert study["00081190"]["Value"] == [f"{corpus.base}/studies/{a}"]

    series = client.search_for_series(study_instance_uid=b)
    assert _uids(series, "0020000E") == {items["native"].series, items["rle"].series}
    assert {s["00080060"]["Value"][0] for s in series} == {"MR"}
    assert all("00100020" not in s for s in series)  # study attributes only for /series (all series)
    (one,) = client.search_for_series(search_filters={"SeriesInstanceUID": items["rle"].series})
    assert one["0020000D"]["Value"] == [b] and one["00100020"]["Value"] == ["DWQ002"]

    instances = client.search_for_instances(study_instance_uid=a, series_instance_uid=items["a1"].series)
    assert _uids(instances, "00080018") == {items["a1"].sop, items["a2"].sop}
    assert [i["00200013"]["Value"] for i in instances] == [[1], [2]]
    assert _uids(client.search_for_instances(study_instance_uid=b), "00080018") == {
        items["native"].sop, items["rle"].sop}
    (found,) = client.search_for_instances(search_filters={"SOPInstanceUID": items["bits"].sop})
    assert found["00081190"]["Value"] == [corpus.url("bits")]
    retrieved = requests.get(found["00081190"]["Value"][0], timeout=30)
    assert retrieved.status_code == 200
    assert [p for _h, p in split_multipart(retrieved.headers["content-type"], retrieved.content)] == [
        items["bits"].path.read_bytes()]


def test_qido_pages_and_content_type(corpus: Corpus) -> None:
    client, items = corpus.client(), corpus.items
    first = client.search_for_studies(search_filters={"PatientID": "DWQ*"}, limit=1)
    second = client.search_for_studies(search_filters={"PatientID": "DWQ*"}, limit=1, offset=1)
    assert len(first) == len(second) == 1
    assert _uids(first) | _uids(second) == {items["a1"].study, items["native"].study}

    # Four instances match; the server sends query_limit (3) of them and says there are more.
    response = requests.get(f"{corpus.base}/instances", params={"PatientID": "DWQ*"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    assert len(response.json()) == QUERY_LIMIT
    assert "additional results" in response.headers["warning"]
    rest = requests.get(f"{corpus.base}/instances", params={"PatientID": "DWQ*", "offset": QUERY_LIMIT}, timeout=30)
    assert len(rest.json()) == 1 and "warning" not in rest.headers
    assert len(client.search_for_instances(search_filters={"PatientID": "DWQ*"}, get_remaining=True)) == 4

    empty = requests.get(f"{corpus.base}/studies", params={"PatientID": "NOBODY"}, timeout=30)
    assert empty.status_code == 200 and empty.json() == []


# --- WADO-RS --------------------------------------------------------------------------------


def test_wado_returns_the_original_files(corpus: Corpus) -> None:
    client, items = corpus.client(), corpus.items
    a = items["a1"]
    response = requests.get(f"{corpus.base}/studies/{a.study}", timeout=30,
                            headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200
    assert DICOM_MULTIPART.match(response.headers["content-type"]), response.headers["content-type"]
    parts = split_multipart(response.headers["content-type"], response.content)
    assert {p for _h, p in parts} == {items["a1"].path.read_bytes(), items["a2"].path.read_bytes()}
    assert all(h["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}" for h, _p in parts)

    datasets = client.retrieve_study(a.study)
    assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted([items["a1"].sop, items["a2"].sop])
    for ds in datasets:
        key = "a1" if ds.SOPInstanceUID == items["a1"].sop else "a2"
        assert ds == pydicom.dcmread(items[key].path)

    for key in ("native", "rle", "bits"):
        item = items[key]
        ds = client.retrieve_instance(item.study, item.series, item.sop)
        assert ds == pydicom.dcmread(item.path)
        raw = requests.get(corpus.url(key), timeout=30)
        assert [p for _h, p in split_multipart(raw.headers["content-type"], raw.content)] == [item.path.read_bytes()]
    series = requests.get(f"{corpus.base}/studies/{items['rle'].study}/series/{items['rle'].series}", timeout=30)
    assert [p for _h, p in split_multipart(series.headers["content-type"], series.content)] == [
        items["rle"].path.read_bytes()]

    # Received over DIMSE: stored in a deterministic Part-10 wrapper; the dataset is the one sent.
    dimse = items["dimse"]
    raw = requests.get(f"{corpus.base}/studies/{dimse.study}", timeout=30)
    (part,) = [p for _h, p in split_multipart(raw.headers["content-type"], raw.content)]
    assert dataset_bytes(part) == dataset_bytes(dimse.path.read_bytes())


def test_wado_transfer_syntax_negotiation(corpus: Corpus) -> None:
    client, items = corpus.client(), corpus.items
    a1 = items["a1"]
    # Explicit -> Implicit VR Little Endian: lossless and cheap, so it is done.
    implicit = requests.get(corpus.url("a1"), timeout=30, headers={
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={IMPLICIT_LE}'})
    assert implicit.status_code == 200
    (part,) = [p for _h, p in split_multipart(implicit.headers["content-type"], implicit.content)]
    ds = pydicom.dcmread(io.BytesIO(part))
    assert ds.file_meta.TransferSyntaxUID == IMPLICIT_LE
    original = pydicom.dcmread(a1.path)
    assert ds.PixelData == original.PixelData and ds.PatientID == original.PatientID
    # The stored syntax, when asked for explicitly, means the stored bytes.
    same = requests.get(corpus.url("a1"), timeout=30, headers={
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'})
    assert [p for _h, p in split_multipart(same.headers["content-type"], same.content)] == [a1.path.read_bytes()]
    # RLE -> Explicit VR Little Endian would mean decompressing: refused before any byte is sent.
    rle = items["rle"]
    with pytest.raises(HTTPError) as refused:
        client.retrieve_instance(rle.study, rle.series, rle.sop, media_types=(("application/dicom", EXPLICIT_LE),))
    assert refused.value.response.status_code == 406
    assert "not offered" in refused.value.response.text and RLE in refused.value.response.text
    study = requests.get(f"{corpus.base}/studies/{rle.study}", timeout=30, headers={
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'})
    assert study.status_code == 406  # one instance of the study cannot be sent as asked


def test_metadata_is_dicom_json_of_the_stored_header(corpus: Corpus) -> None:
    client, items = corpus.client(), corpus.items
    native, rle = items["native"], items["rle"]
    response = requests.get(f"{corpus.base}/studies/{native.study}/metadata", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom+json"
    by_sop = {m["00080018"]["Value"][0]: m for m in client.retrieve_study_metadata(native.study)}
    assert set(by_sop) == {native.sop, rle.sop}

    meta = by_sop[native.sop]
    assert meta["00083002"]["Value"] == [EXPLICIT_LE]  # Available Transfer Syntax UID: as stored
    pixel_uri = meta["7FE00010"]["BulkDataURI"]
    assert pixel_uri == f"{corpus.url('native')}/bulkdata/7FE00010"
    del meta["00083002"]
    rebuilt = pydicom.Dataset.from_json(  # dicomweb-client gives bytearrays: pydicom wants bytes
        meta, bulk_data_uri_handler=lambda _t, _v, uri: bytes(client.retrieve_bulkdata(uri)[0]))
    assert rebuilt == pydicom.dcmread(native.path)  # every element, pixel data through its BulkDataURI

    meta = by_sop[rle.sop]
    assert meta["00083002"]["Value"] == [RLE]
    frames = client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"])
    original = pydicom.dcmread(rle.path)
    assert frames == list(generate_frames(original.PixelData, number_of_frames=10))
    del meta["00083002"], meta["7FE00010"]
    del original.PixelData
    assert pydicom.Dataset.from_json(meta) == original

    single = client.retrieve_instance_metadata(items["a1"].study, items["a1"].series, items["a1"].sop)
    assert single["00100020"]["Value"] == ["DWQ001"]
    assert len(requests.get(f"{corpus.url('a1')}/metadata", timeout=30).json()) == 1  # always an array
    # Every BulkDataURI (a private OB element and Pixel Data here) gives the element's value;
    # /bulkdata gives them all, each part saying which one it is.
    uris = {tag: single[tag]["BulkDataURI"] for tag in single if "BulkDataURI" in single[tag]}
    original = pydicom.dcmread(items["a1"].path)
    assert set(uris) == {"00431029", "7FE00010"}
    for tag, uri in uris.items():
        assert client.retrieve_bulkdata(uri) == [original[int(tag, 16)].value]
    everything = requests.get(f"{corpus.url('a1')}/bulkdata", timeout=30)
    assert {h["content-location"]: p for h, p in split_multipart(everything.headers["content-type"],
                                                                  everything.content)} == {
        uri: original[int(tag, 16)].value for tag, uri in uris.items()}
    assert requests.get(f"{corpus.url('a1')}/bulkdata/00100010", timeout=30).status_code == 404  # not bulk data


def test_frames_native_encapsulated_and_bit_packed(corpus: Corpus) -> None:
    client, items = corpus.client(), corpus.items
    native = items["native"]
    original = pydicom.dcmread(native.path)
    size = 64 * 64 * 2
    frames = client.retrieve_instance_frames(native.study, native.series, native.sop, frame_numbers=[1, 3, 10])
    assert frames == [original.PixelData[(n - 1) * size:n * size] for n in (1, 3, 10)]
    raw = requests.get(f"{corpus.url('native')}/frames/2", timeout=30)
    assert raw.headers["content-type"].startswith('multipart/related; type="application/octet-stream"; boundary=')

    rle = items["rle"]
    original = pydicom.dcmread(rle.path)
    frames = client.retrieve_instance_frames(rle.study, rle.series, rle.sop, frame_numbers=[2, 5])
    for frame, number in zip(frames, (2, 5)):  # each is a complete RLE frame: it decodes to that frame
        one = pydicom.dcmread(rle.path)
        one.NumberOfFrames, one.PixelData = 1, encapsulate([frame])
        assert np.array_equal(one.pixel_array, original.pixel_array[number - 1])
    raw = requests.get(f"{corpus.url('rle')}/frames/1", timeout=30)
    assert raw.headers["content-type"].startswith('multipart/related; type="image/dicom-rle"; boundary=')
    ((headers, _frame),) = split_multipart(raw.headers["content-type"], raw.content)
    assert headers["content-type"] == f"image/dicom-rle; transfer-syntax={RLE}"
    refused = requests.get(f"{corpus.url('rle')}/frames/1", timeout=30,
                           headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert refused.status_code == 406 and "decompression is not offered" in refused.text
    # OHIF's way: octet-stream in any transfer syntax; the compressed frame, labelled with its syntax.
    as_octets = requests.get(f"{corpus.url('rle')}/frames/2", timeout=30, headers={
        "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"})
    ((headers, frame),) = split_multipart(as_octets.headers["content-type"], as_octets.content)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={RLE}"
    assert frame == list(generate_frames(original.PixelData, number_of_frames=10))[1]

    bits = items["bits"]
    original = pydicom.dcmread(bits.path)
    (frame,) = client.retrieve_instance_frames(bits.study, bits.series, bits.sop, frame_numbers=[2])
    assert frame == np.packbits(original.pixel_array[1].ravel(), bitorder="little").tobytes()

    for frames_path, status in (("11", 404), ("0", 400), ("1,x", 400)):
        bad = requests.get(f"{corpus.url('native')}/frames/{frames_path}", timeout=30)
        assert bad.status_code == status, (frames_path, bad.text)
        assert bad.text.strip()


# --- STOW-RS --------------------------------------------------------------------------------


def _new_instances(tmp_path: Path, patient_id: str, count: int) -> list[pydicom.Dataset]:
    study, series = generate_uid(), generate_uid()
    return [pydicom.dcmread(_derive(_testdata("CT_small.dcm"), tmp_path / f"{patient_id}_{i}.dcm", study, series,
                                    PatientID=patient_id, InstanceNumber=str(i + 1)).path) for i in range(count)]


def _encoded(ds: pydicom.Dataset) -> bytes:
    """What dicomweb-client sends for ``ds`` (it encodes with pydicom.dcmwrite)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)
    return buffer.getvalue()


def _post(corpus: Corpus, parts: list[bytes], path: str = "/studies", part_type: str = "application/dicom",
          content_type: str | None = None) -> requests.Response:
    boundary = "dvtest-boundary-1234"
    body = b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    body += f"--{boundary}--\r\n".encode()
    content_type = content_type or f'multipart/related; type="application/dicom"; boundary={boundary}'
    return requests.post(corpus.base + path, data=body, headers={"Content-Type": content_type}, timeout=60)


def test_stow_stores_durably_and_retrieves_byte_identical(corpus: Corpus, tmp_path: Path) -> None:
    # A small chunk size makes dicomweb-client send with chunked transfer encoding: parts cross chunks.
    client = corpus.client(chunk_size=8192)
    datasets = _new_instances(tmp_path, "STW001", 2)
    study = datasets[0].StudyInstanceUID
    result = client.store_instances(datasets)
    assert sorted(item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence) == sorted(
        ds.SOPInstanceUID for ds in datasets)
    assert "FailedSOPSequence" not in result
    assert result.RetrieveURL == f"{corpus.base}/studies/{study}"
    # The answer means indexed: found at once, no waiting.
    assert _uids(client.search_for_instances(search_filters={"PatientID": "STW001"}), "00080018") == {
        ds.SOPInstanceUID for ds in datasets}
    raw = requests.get(f"{corpus.base}/studies/{study}", timeout=30)
    assert sorted(p for _h, p in split_multipart(raw.headers["content-type"], raw.content)) == sorted(
        _encoded(ds) for ds in datasets)

    # Raw POST of a Part-10 file: 200, DICOM JSON, and the very bytes come back.
    (extra,) = _new_instances(tmp_path, "STW002", 1)
    data = _encoded(extra)
    response = _post(corpus, [data], f"/studies/{extra.StudyInstanceUID}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    body = pydicom.Dataset.from_json(response.json())
    assert body.ReferencedSOPSequence[0].RetrieveURL == (
        f"{corpus.base}/studies/{extra.StudyInstanceUID}/series/{extra.SeriesInstanceUID}/instances/{extra.SOPInstanceUID}")
    got = requests.get(body.ReferencedSOPSequence[0].RetrieveURL, timeout=30)
    assert [p for _h, p in split_multipart(got.headers["content-type"], got.content)] == [data]
    before = instance_count(corpus.vault)
    again = _post(corpus, [data])  # the same instance again: stored already, not a second version
    assert again.status_code == 200 and instance_count(corpus.vault) == before


def test_stow_refusals(corpus: Corpus, tmp_path: Path) -> None:
    good, other = _new_instances(tmp_path, "STW003", 1)[0], _new_instances(tmp_path, "STW004", 1)[0]
    before = instance_count(corpus.vault)

    wrong_study = _post(corpus, [_encoded(other)], f"/studies/{good.StudyInstanceUID}")
    assert wrong_study.status_code == 409
    failed = pydicom.Dataset.from_json(wrong_study.json()).FailedSOPSequence
    assert [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in failed] == [(other.SOPInstanceUID, 0xA900)]
    assert "not to" in wrong_study.headers["warning"]

    not_dicom = _post(corpus, [b"this is a text file, not an image" * 10])
    assert not_dicom.status_code == 409
    assert pydicom.Dataset.from_json(not_dicom.json()).FailedSOPSequence[0].FailureReason == 0xC000
    assert "not a DICOM Part-10 file" in not_dicom.headers["warning"]
    truncated = _encoded(other)[:2000]
    assert _post(corpus, [truncated]).status_code == 409
    assert instance_count(corpus.vault) == before  # nothing stored by any of them

    mixed = _post(corpus, [_encoded(good), b"junk" * 100])
    assert mixed.status_code == 202
    body = pydicom.Dataset.from_json(mixed.json())
    assert [i.ReferencedSOPInstanceUID for i in body.ReferencedSOPSequence] == [good.SOPInstanceUID]
    assert len(body.FailedSOPSequence) == 1
    assert instance_count(corpus.vault) == before + 1

    data = _encoded(other)
    for content_type, status, words in (
        ("application/dicom", 415, "multipart/related"),
        ('multipart/related; type="application/dicom+json"; boundary=dvtest-boundary-1234', 415, "not supported"),
        ('multipart/related; type="application/dicom"', 400, "no boundary"),
        ('multipart/related; type="application/dicom"; boundary=another-boundary', 400, "boundary"),
    ):
        refused = _post(corpus, [data], content_type=content_type)
        assert refused.status_code == status, (content_type, refused.text)
        assert words in refused.text
    boundary = "dvtest-boundary-1234"
    cut = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data  # no closing delimiter
    refused = requests.post(f"{corpus.base}/studies", data=cut, timeout=30, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert refused.status_code == 400 and "cut short" in refused.text
    # Larger than max_request_bytes: refused on the declared length, before any body byte is read.
    conn = http.client.HTTPConnection("127.0.0.1", corpus.vault.http_port, timeout=30)
    conn.putrequest("POST", "/dicomweb/studies")
    conn.putheader("Content-Type", f'multipart/related; type="application/dicom"; boundary={boundary}')
    conn.putheader("Content-Length", str(MAX_REQUEST + 1))
    conn.endheaders()
    too_big = conn.getresponse()
    assert too_big.status == 413 and b"max_request_bytes" in too_big.read()
    conn.close()
    assert instance_count(corpus.vault) == before + 1  # only the good half of `mixed`

    assert requests.get(f"{corpus.base}/studies", params={"PatientID": "STW004"}, timeout=30).json() == []
    assert requests.get(f"http://127.0.0.1:{corpus.vault.http_port}/healthz", timeout=10).status_code == 200


# --- errors, audit ----------------------------------------------------------------------------


def test_bad_requests_get_a_reason_and_the_server_keeps_serving(corpus: Corpus) -> None:
    a1 = corpus.items["a1"]
    for path, params, status, words in (
        ("/studies/1.2.03.4", None, 400, "not a valid UID"),
        ("/studies/not-a-uid/metadata", None, 400, "not a valid UID"),
        ("/studies/1.2.3.4.5.6", None, 404, "not in this archive"),
        (f"/studies/{a1.study}/series/1.2.3.4", None, 404, "not in study"),
        (f"/studies/{a1.study}/series/{a1.series}/instances/1.2.3/metadata", None, 404, "is not in series"),
        ("/studies", {"StudyDate": "2024-01-01"}, 400, "StudyDate"),
        ("/studies", {"StudyDate": "20240101-20249999"}, 400, "StudyDate"),
        ("/studies", {"StudyInstanceUID": "1.2.*"}, 400, "StudyInstanceUID"),
        ("/studies", {"NoSuchAttribute": "x"}, 400, "not a DICOM attribute"),
        ("/studies", {"Modality": "CT"}, 400, "ModalitiesInStudy"),
        ("/studies", {"limit": "-1"}, 400, "limit"),
        ("/studies", {"offset": "many"}, 400, "offset"),
        ("/studies", {"fuzzymatching": "maybe"}, 400, "fuzzymatching"),
        ("/studies", {"includefield": "NotAnAttribute"}, 400, "NotAnAttribute"),
    ):
        response = requests.get(corpus.base + path, params=params, timeout=30)
        assert response.status_code == status, (path, params, response.status_code, response.text)
        assert words in response.text, (path, params, response.text)
        assert response.headers["content-type"].startswith("text/plain")
    client = corpus.client()
    with pytest.raises(HTTPError) as unknown:
        client.retrieve_study("1.2.3.4.5.6")
    assert unknown.value.response.status_code == 404
    assert _uids(client.search_for_studies(search_filters={"PatientID": "DWQ001"})) == {a1.study}


def test_each_request_is_audited_once(corpus: Corpus) -> None:
    a1 = corpus.items["a1"]
    reads, queries = len(audit_rows(corpus.vault, "read")), len(audit_rows(corpus.vault, "query"))
    assert len(corpus.client().retrieve_study(a1.study)) == 2
    rows = audit_rows(corpus.vault, "read")
    assert len(rows) == reads + 1  # one row for the request, not one per instance
    assert rows[-1]["actor"] == "dicomweb:127.0.0.1" and rows[-1]["subject"] == a1.study
    assert rows[-1]["outcome"] == "success" and rows[-1]["detail"]["instances"] == 2
    corpus.client().search_for_studies(search_filters={"PatientID": "DWQ001"})
    rows = audit_rows(corpus.vault, "query")
    assert len(rows) == queries + 1 and rows[-1]["detail"]["filters"] == {"PatientID": "DWQ001"}
    requests.get(f"{corpus.base}/studies/1.2.3.4.5.6", timeout=30)
    assert audit_rows(corpus.vault, "read")[-1]["outcome"] == "failure"
    corpus.vault.cli("audit", "verify")


def _damage(vault: Vault, sop_uid: str) -> None:
    """Flip one byte in the middle of the sealed object holding ``sop_uid`` on the primary site."""
    url = load_settings(vault.config).catalog_url
    with sqlite3.connect(url.split("///", 1)[1]) as conn:
        (object_id,) = conn.execute("SELECT v.object_id FROM versions v JOIN instances i ON v.instance_pk = i.id "
                                    "WHERE i.sop_instance_uid = ?", (sop_uid,)).fetchone()
    path = vault.root / "objects" / "objects" / object_id[:2] / object_id[2:4] / object_id  # site root: objects/
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_object_is_never_served(vault: Vault, tmp_path: Path) -> None:
    vault.set_config("dicomweb", "enabled", "true")
    vault.set_config("dicomweb", "anonymous_roles", '["read"]')
    study, series = generate_uid(), generate_uid()
    items = [_derive(_testdata("CT_small.dcm"), tmp_path / "in" / f"{i}.dcm", study, series, InstanceNumber=str(i + 1))
             for i in range(2)]
    vault.cli("import", str(tmp_path / "in"))
    first, second = sorted(items, key=lambda item: item.sop)  # the order WADO-RS sends them in
    _damage(vault, second.sop)
    vault.start()
    base = f"http://127.0.0.1:{vault.http_port}/dicomweb/studies/{study}/series/{series}/instances"

    refused = requests.get(f"{base}/{second.sop}", timeout=30)
    assert refused.status_code == 500 and "failed verification" in refused.text
    assert requests.get(f"{base}/{second.sop}/metadata", timeout=30).status_code == 500
    whole = requests.get(f"{base}/{first.sop}", timeout=30)
    assert [p for _h, p in split_multipart(whole.headers["content-type"], whole.content)] == [first.path.read_bytes()]
    # The study's stream has started with the good instance when the damaged one comes up: it is
    # cut short (no closing boundary), never completed with wrong bytes.
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        requests.get(f"http://127.0.0.1:{vault.http_port}/dicomweb/studies/{study}", timeout=30)
    last = audit_rows(vault, "read")[-1]
    assert last["outcome"] == "failure" and last["detail"]["instances"] == 1 and "verification" in last["detail"]["error"]
    assert requests.get(f"http://127.0.0.1:{vault.http_port}/healthz", timeout=10).status_code == 200


# --- switches -------------------------------------------------------------------------------


def test_disabled_by_default(running_vault: Vault) -> None:
    response = requests.get(f"http://127.0.0.1:{running_vault.http_port}/dicomweb/studies", timeout=10)
    assert response.status_code == 404 and "enabled = true" in response.text


def test_bearer_tokens(vault: Vault) -> None:
    """An old [dicomweb] tokens_file (name:token lines, no roles) still works: its tokens read."""
    token = "k" * 40
    tokens = vault.root / "keys" / "dicomweb-tokens"
    tokens.write_text(f"viewer:{token}\n")
    tokens.chmod(0o600)
    vault.set_config("dicomweb", "enabled", "true")
    vault.set_config("dicomweb", "tokens_file", '"keys/dicomweb-tokens"')
    vault.start()
    base = f"http://127.0.0.1:{vault.http_port}/dicomweb"
    for headers in ({}, {"Authorization": "Bearer " + "x" * 40}, {"Authorization": f"Basic {token}"}):
        denied = requests.get(f"{base}/studies", headers=headers, timeout=10)
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
    client = DICOMwebClient(url=base, headers={"Authorization": f"Bearer {token}"})
    assert client.search_for_studies() == []
    assert audit_rows(vault, "query")[-1]["actor"] == "dicomweb:viewer@127.0.0.1"
    assert audit_rows(vault, "login")[0]["outcome"] == "failure"


# --- the streaming multipart reader on its own ------------------------------------------------


def _read_all(body: bytes, boundary: str, chunk: int, cap: int = 10**9) -> list[bytes]:
    async def chunks():
        for i in range(0, len(body), chunk):
            yield body[i:i + chunk]

    async def collect() -> list[bytes]:
        return [part.body async for part in read_parts(chunks(), boundary, cap)]

    return asyncio.run(collect())


def test_multipart_reader_is_independent_of_chunking() -> None:
    boundary = "b0undary"
    payloads = [b"first\r\n--b0undar", b"", b"\r\n\r\nx--b0undary-not-quite", bytes(range(256)) * 40]
    body = b"preamble\r\n" + b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in payloads
    ) + f"--{boundary}--\r\nepilogue".encode()
    for chunk in (1, 2, 7, 64, 4096, len(body)):
        assert _read_all(body, boundary, chunk) == payloads, chunk
    with pytest.raises(MultipartError, match="cut short"):
        _read_all(body[: body.index(b"--b0undary--") - 5], boundary, 100)
    with pytest.raises(MultipartError, match="does not contain the boundary"):
        _read_all(body, "other", 100)
    with pytest.raises(BodyTooLarge, match="max_request_bytes"):
        _read_all(body, boundary, 100, cap=len(body) // 2)  # no declared length: counted while streaming
