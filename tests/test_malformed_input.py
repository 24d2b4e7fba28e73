"""No malformed input stored (issue 18 section 5): UIDs, C-STORE requests, data set encodings.

Crafted instances go in through every front door: raw DIMSE associations to a real ``serve``
(both engines), STOW-RS and ``import``. Each refusal is checked three ways: the status and
the reason the sender gets, nothing stored (catalog counts, object files, no stray intent),
and the same association (or server) storing a good instance right after.

The DIMSE sender here is a small raw SCU (sockets and hand-packed PDUs): pynetdicom as an SCU
refuses to put an over-long or non-ASCII UID on the wire, and a real attacker is not so polite.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from conftest import Vault, audit_rows, make_vault
from test_bad_input import assert_grew_by, settled_snapshot

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
CONTEXTS = {1: (CT, EXPLICIT), 3: (CT, IMPLICIT), 5: (VERIFICATION, IMPLICIT)}
EXPLICIT_CX, IMPLICIT_CX = 1, 3
ENGINES = ["lean", "pynetdicom"]


# --- crafting data sets -------------------------------------------------------------------


def ct_dataset(ct_small: Path) -> pydicom.Dataset:
    """CT_small with fresh UIDs and without its trailing padding item."""
    ds = pydicom.dcmread(ct_small)
    del ds[0xFFFCFFFC]
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    return ds


def encode(ds: pydicom.Dataset, implicit: bool = False) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def element_at(data: bytes, tag: int) -> int:
    """Offset of the explicit-VR-LE element ``tag`` in ``data`` (top level, found by its header)."""
    at = data.find(struct.pack("<HH", tag >> 16, tag & 0xFFFF))
    assert at >= 0, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) not in the data set"
    return at


def with_raw_uid(data: bytes, tag: int, raw: bytes) -> bytes:
    """Explicit-VR-LE ``data`` with the UI element ``tag`` given exactly the bytes ``raw``:
    what pydicom would refuse to write (non-ASCII, over-long)."""
    at = element_at(data, tag)
    assert data[at + 4 : at + 6] == b"UI"
    (length,) = struct.unpack_from("<H", data, at + 6)
    return data[:at] + struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, b"UI", len(raw)) + raw + data[at + 8 + length :]


def uid_bytes(uid: str) -> bytes:
    raw = uid.encode("latin-1")
    return raw + b"\x00" if len(raw) % 2 else raw


LONG_UID = "1.2.826.0.1.3680043.8.498." + "1" * 40  # 66 characters
SOP, STUDY, SERIES = 0x00080018, 0x0020000D, 0x0020000E
# (tag, value bytes, attribute the reason must name, what the reason must say)
BAD_UIDS = {
    "sop-instance-longer-than-64": (SOP, uid_bytes(LONG_UID), "SOPInstanceUID", "over 64 characters"),
    "study-latin1-superscripts": (STUDY, uid_bytes("1.2.826.0.1.\xb9\xb2\xb3"), "StudyInstanceUID", "not only digits 0-9"),
    "series-arabic-indic-digits": (SERIES, "1.2.826.0.1.٣٤٥".encode() + b"\x00", "SeriesInstanceUID", "not only digits 0-9"),
    "sop-instance-empty-component": (SOP, uid_bytes("1.2.826..1.5"), "SOPInstanceUID", "empty component"),
    "study-leading-zero": (STUDY, uid_bytes("1.2.826.0.1.05"), "StudyInstanceUID", "leading zero in a component"),
    "series-nuls-beyond-padding": (SERIES, b"1.2.826.0.1.7\x00\x00\x00", "SeriesInstanceUID", "not only digits 0-9"),
}


def with_garbage(data: bytes, before: int) -> bytes:
    at = element_at(data, before)
    return data[:at] + b"\x13\x37GARBAGE!" + data[at:]


# --- a raw DIMSE sender -------------------------------------------------------------------


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def command_set(elements: dict[int, bytes]) -> bytes:
    body = b"".join(_element(tag, elements[tag]) for tag in sorted(elements))
    return _element(0x00000000, struct.pack("<I", len(body))) + body


def parse_command(data: bytes) -> dict[int, bytes]:
    elements, pos = {}, 0
    while pos + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        elements[(group << 16) | elem] = data[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return elements


class RawScu:
    """One association to the archive with CT Image Storage in explicit and implicit VR LE."""

    def __init__(self, vault: Vault) -> None:
        from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
        from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
        from pynetdicom.presentation import build_context

        primitive = A_ASSOCIATE()
        primitive.application_context_name = "1.2.840.10008.3.1.1.1"
        primitive.calling_ae_title, primitive.called_ae_title = "MALFORMED", vault.ae_title
        contexts = []
        for context_id, (abstract, syntax) in CONTEXTS.items():
            context = build_context(abstract, [syntax])
            context.context_id = context_id
            contexts.append(context)
        primitive.presentation_context_definition_list = contexts
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = 65536
        primitive.user_information = [max_length]
        rq = A_ASSOCIATE_RQ()
        rq.from_primitive(primitive)
        self.sock = socket.create_connection(("127.0.0.1", vault.dicom_port), timeout=30)
        self.sock.sendall(rq.encode())
        kind, body = self.read_pdu()
        assert kind == 0x02, f"association not accepted (PDU type {kind})"
        ac = A_ASSOCIATE_AC()
        ac.decode(bytes([0x02, 0]) + struct.pack(">I", len(body)) + body)
        accepted = {item.context_id for item in ac.presentation_context if item.result == 0}
        assert accepted == set(CONTEXTS), f"contexts accepted: {accepted}"
        self.message_id = 0

    def read_pdu(self) -> tuple[int, bytes]:
        def exact(count: int) -> bytes:
            data = b""
            while len(data) < count:
                chunk = self.sock.recv(count - len(data))
                if not chunk:
                    return data
                data += chunk
            return data

        header = exact(6)
        if len(header) < 6:
            return -1, b""
        kind, _, length = struct.unpack(">BBI", header)
        return kind, exact(length)

    def _send_pdv(self, context_id: int, control: int, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">BBIIBB", 0x04, 0, len(payload) + 6, len(payload) + 2, context_id, control)
                          + payload)

    def request(self, context_id: int, elements: dict[int, bytes], dataset: bytes | None) -> dict[int, bytes] | None:
        """Send one request; its response command set, or None if the association ended instead."""
        self.message_id += 1
        elements[0x00000110] = struct.pack("<H", self.message_id)
        elements[0x00000800] = struct.pack("<H", 0x0101 if dataset is None else 0x0000)
        self._send_pdv(context_id, 0x03, command_set(elements))
        if dataset is not None:
            for start in range(0, len(dataset), 16000):
                piece = dataset[start : start + 16000]
                self._send_pdv(context_id, 0x02 if start + 16000 >= len(dataset) else 0x00, piece)
        command = b""
        while True:
            kind, body = self.read_pdu()
            if kind != 0x04:
                return None  # A-ABORT (0x07) or the connection closed
            pos = 0
            while pos < len(body):
                (length,) = struct.unpack_from(">I", body, pos)
                control = body[pos + 5]
                command += body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 0x03 == 0x03:
                    return parse_command(command)

    def store(self, dataset: bytes, sop_instance: bytes | None, sop_class: bytes | None = uid_bytes(CT),
              context_id: int = EXPLICIT_CX) -> tuple[int, str] | None:
        """(status, Error Comment) of a C-STORE, or None if the association was ended."""
        elements = {0x00000100: struct.pack("<H", 0x0001), 0x00000700: struct.pack("<H", 0)}
        if sop_class is not None:
            elements[0x00000002] = sop_class
        if sop_instance is not None:
            elements[0x00001000] = sop_instance
        response = self.request(context_id, elements, dataset)
        if response is None:
            return None
        (status,) = struct.unpack("<H", response[0x00000900])
        return status, response.get(0x00000902, b"").decode("ascii", "replace").strip()

    def echo(self) -> int | None:
        response = self.request(5, {0x00000002: uid_bytes(VERIFICATION), 0x00000100: struct.pack("<H", 0x0030)}, None)
        return None if response is None else struct.unpack("<H", response[0x00000900])[0]

    def store_good(self, ct_small: Path) -> int | None:
        ds = ct_dataset(ct_small)
        answer = self.store(encode(ds), uid_bytes(ds.SOPInstanceUID))
        return None if answer is None else answer[0]

    def release(self) -> None:
        try:
            self.sock.sendall(struct.pack(">BBIxxxx", 0x05, 0, 4))
            self.read_pdu()
        finally:
            self.sock.close()


# --- servers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vaults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Vault]]:
    started = {}
    try:
        for engine in ENGINES:
            vault = make_vault(tmp_path_factory.mktemp(f"malformed-{engine}") / "vault")
            vault.set_config("dicom", "engine", f'"{engine}"')
            vault.set_config("dicomweb", "enabled", "true")
            vault.start()
            started[engine] = vault
        yield started
    finally:
        for vault in started.values():
            vault.stop()


@pytest.fixture(params=ENGINES)
def served(request: pytest.FixtureRequest, vaults: dict[str, Vault]) -> Iterator[Vault]:
    vault = vaults[request.param]
    yield vault
    assert vault.process is not None and vault.process.poll() is None, "the server died:\n" + vault.log()[-3000:]


@pytest.fixture
def lean(vaults: dict[str, Vault]) -> Vault:
    return vaults["lean"]


def refused_then_good(vault: Vault, ct_small: Path, dataset: bytes, sop_instance: bytes | None,
                      sop_class: bytes | None = uid_bytes(CT), context_id: int = EXPLICIT_CX) -> tuple[int, str]:
    """Send one bad C-STORE, then a good one on the same association; nothing but the good one
    may be stored. Returns the bad one's (status, Error Comment)."""
    before = settled_snapshot(vault)
    scu = RawScu(vault)
    try:
        answer = scu.store(dataset, sop_instance, sop_class, context_id)
        assert answer is not None, f"the association was ended instead of answered:\n{vault.log()[-2000:]}"
        assert scu.echo() == 0x0000, "C-ECHO failed after the refusal"
        assert scu.store_good(ct_small) == 0x0000, "a good instance was refused after the bad one"
    finally:
        scu.release()
    assert_grew_by(before, settled_snapshot(vault), 1)
    return answer


# --- UIDs (PS3.5 9.1) ---------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_UIDS))
def test_c_store_with_an_invalid_uid_is_refused_and_nothing_stored(
    served: Vault, ct_small: Path, case: str
) -> None:
    tag, raw, attribute, words = BAD_UIDS[case]
    ds = ct_dataset(ct_small)
    data = with_raw_uid(encode(ds), tag, raw)
    # The request announces what the data set says (a bad SOP Instance UID is in both).
    affected = raw if tag == SOP else uid_bytes(ds.SOPInstanceUID)
    status, comment = refused_then_good(served, ct_small, data, affected)
    assert status == 0xC000, (hex(status), comment)
    if tag == SOP and comment.startswith("invalid Affected SOP Instance UID"):
        assert words in comment, comment  # judged on the request first: the same reason
    else:
        assert f"invalid UID in {attribute}" in comment and words in comment, comment


def test_a_uid_longer_than_64_is_not_cut_onto_another_instance(served: Vault, ct_small: Path) -> None:
    """The old cut stored a 66-character UID as its first 64: a second instance collided."""
    ds = ct_dataset(ct_small)
    ds.SOPInstanceUID = LONG_UID[:64]
    scu = RawScu(served)
    try:
        assert scu.store(encode(ds), uid_bytes(ds.SOPInstanceUID)) == (0x0000, "")
    finally:
        scu.release()
    served.wait_settled()
    longer = with_raw_uid(encode(ct_dataset(ct_small)), SOP, uid_bytes(LONG_UID))
    status, comment = refused_then_good(served, ct_small, longer, uid_bytes(LONG_UID))
    assert status == 0xC000 and "over 64 characters" in comment, comment
    studies = json.loads(served.cli("find", "--json", "--study-uid", str(ds.StudyInstanceUID)).stdout)
    assert [row["instances"] for row in studies] == [1], studies


# --- the request and its data set ---------------------------------------------------------


def test_data_set_sop_instance_other_than_the_request_is_refused(served: Vault, ct_small: Path) -> None:
    ds = ct_dataset(ct_small)
    status, comment = refused_then_good(served, ct_small, encode(ds), uid_bytes(generate_uid()))
    assert status == 0xA900 and "SOPInstanceUID" in comment, (hex(status), comment)


def test_data_set_sop_class_other_than_the_request_is_refused(served: Vault, ct_small: Path) -> None:
    ds = ct_dataset(ct_small)
    ds.SOPClassUID = MR
    status, comment = refused_then_good(served, ct_small, encode(ds), uid_bytes(ds.SOPInstanceUID))
    assert status == 0xA900 and "SOPClassUID" in comment, (hex(status), comment)


def test_request_without_affected_sop_instance_uid_is_refused(lean: Vault, ct_small: Path) -> None:
    """Lean engine only: pynetdicom 3.0.4 fails inside its own C-STORE-RQ handler (logging the
    missing UID) and never calls ours, so that engine leaves such a request unanswered."""
    ds = ct_dataset(ct_small)
    status, comment = refused_then_good(lean, ct_small, encode(ds), None)
    assert status == 0xC000 and "no Affected SOP Instance UID" in comment, (hex(status), comment)


@pytest.mark.parametrize("raw", [b"1.2.826.0.1.\xb9\xb2\xff\x00", uid_bytes("1.2." + "9" * 70)], ids=["non-ascii", "too-long"])
def test_malformed_affected_sop_instance_uid_is_answered_not_aborted(served: Vault, ct_small: Path, raw: bytes) -> None:
    ds = ct_dataset(ct_small)
    audited = len(audit_rows(served, "store"))
    status, comment = refused_then_good(served, ct_small, encode(ds), raw)
    assert status == 0xC000 and comment.startswith("invalid Affected SOP Instance UID"), (hex(status), comment)
    refusals = [row for row in audit_rows(served, "store")[audited:] if row[1] == "rejected"]
    assert [detail["reason"][:33] for _subject, _outcome, detail in refusals] == ["invalid Affected SOP Instance UID"]


# --- data sets not in their transfer syntax -----------------------------------------------


SYNTAX_CASES = {
    "implicit-vr-on-explicit-context": (lambda ds: encode(ds, implicit=True), EXPLICIT_CX, "no valid VR (implicit VR?)"),
    "explicit-vr-on-implicit-context": (lambda ds: encode(ds), IMPLICIT_CX, "explicit VR"),
    "garbage-among-the-header": (lambda ds: with_garbage(encode(ds), 0x00100010), EXPLICIT_CX, "invalid VR"),
    "garbage-before-pixel-data": (lambda ds: with_garbage(encode(ds), 0x7FE00010), EXPLICIT_CX, "invalid VR"),
    "element-out-of-order": (lambda ds: swapped(encode(ds)), EXPLICIT_CX, "out of order"),
}


def swapped(data: bytes) -> bytes:
    """(0028,0010) Rows moved before (0028,0002): every element well formed, the order is not."""
    rows, samples = element_at(data, 0x00280010), element_at(data, 0x00280002)
    rows_element = data[rows : rows + 10]
    without = data[:rows] + data[rows + 10 :]
    return without[:samples] + rows_element + without[samples:]


@pytest.mark.parametrize("case", list(SYNTAX_CASES))
def test_data_set_not_in_its_transfer_syntax_is_refused(served: Vault, ct_small: Path, case: str) -> None:
    make, context_id, words = SYNTAX_CASES[case]
    ds = ct_dataset(ct_small)
    status, comment = refused_then_good(served, ct_small, make(ds), uid_bytes(ds.SOPInstanceUID),
                                        context_id=context_id)
    assert status == 0xC000 and comment.startswith("invalid ") and words in comment, (hex(status), comment)


# --- STOW-RS and import ---------------------------------------------------------------------


def part10(dataset: bytes, sop_instance: str, transfer_syntax: str = EXPLICIT) -> bytes:
    from dicomvault.dicom.part10 import build_part10_with_pydicom

    return build_part10_with_pydicom(CT, sop_instance, transfer_syntax, dataset)


def bad_files(ct_small: Path) -> dict[str, tuple[bytes, str]]:
    """{name: (Part-10 bytes, words the refusal must contain)}."""
    files = {}
    for case, (tag, raw, attribute, words) in BAD_UIDS.items():
        ds = ct_dataset(ct_small)
        files[case] = (part10(with_raw_uid(encode(ds), tag, raw), ds.SOPInstanceUID), f"invalid UID in {attribute}")
    for case, (make, context_id, words) in SYNTAX_CASES.items():
        ds = ct_dataset(ct_small)
        files[case] = (part10(make(ds), ds.SOPInstanceUID, CONTEXTS[context_id][1]), words)
    return files


def stow(vault: Vault, parts: list[bytes]) -> requests.Response:
    boundary = "malformed-boundary-42"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    body += f"--{boundary}--\r\n".encode()
    return requests.post(f"http://127.0.0.1:{vault.http_port}/dicomweb/studies", data=body, timeout=60,
                         headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                                  "Authorization": f"Bearer {vault.api_token()}"})  # init's admin token may STOW


@pytest.mark.parametrize("kind", ["uids", "syntax"])
def test_stow_refuses_each_malformed_instance_and_stores_the_good_one(lean: Vault, ct_small: Path, kind: str) -> None:
    files = {name: f for name, f in bad_files(ct_small).items() if (name in BAD_UIDS) == (kind == "uids")}
    good_ds = ct_dataset(ct_small)
    good = part10(encode(good_ds), good_ds.SOPInstanceUID)
    before = settled_snapshot(lean)
    response = stow(lean, [data for data, _ in files.values()] + [good])
    assert response.status_code == 202, response.text
    answer = pydicom.Dataset.from_json(response.json())
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [good_ds.SOPInstanceUID]
    assert len(answer.FailedSOPSequence) == len(files)
    assert all(f.FailureReason == 0xC000 for f in answer.FailedSOPSequence)
    warnings = response.headers.get("warning", "")
    missing = [name for name, (_data, words) in files.items() if words not in warnings]
    assert not missing, f"reasons not in the Warning header for {missing}: {warnings[:2000]}"
    assert_grew_by(before, settled_snapshot(lean), 1)


def test_import_refuses_each_malformed_file_with_its_reason(lean: Vault, ct_small: Path, tmp_path: Path) -> None:
    files = bad_files(ct_small)
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name, (data, _words) in files.items():
        (folder / f"{name}.dcm").write_bytes(data)
    good_ds = ct_dataset(ct_small)
    (folder / "zz-good.dcm").write_bytes(part10(encode(good_ds), good_ds.SOPInstanceUID))
    before = settled_snapshot(lean)
    run = lean.cli("import", "--json", str(folder), check=False)
    report = json.loads(run.stdout)
    assert report["stored"] == 1, report
    reasons = {Path(r["path"]).stem: r["reason"] for r in report["refused"]}
    assert set(reasons) == set(files), report
    wrong = {name: reasons[name] for name, (_data, words) in files.items() if words not in reasons[name]}
    assert not wrong, wrong
    assert_grew_by(before, settled_snapshot(lean), 1)
