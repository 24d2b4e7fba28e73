"""The lean DICOM listener: protocol edges a PACS or an attacker can produce.

Real sockets against a real `dicomvault serve`: malformed PDUs, PDVs on contexts never
accepted, silence past the network timeout, too many associations, services we do not
offer. Each gets the DICOM answer the standard prescribes (A-ABORT, A-ASSOCIATE-RJ, a
rejected presentation context) and the server keeps serving. The pynetdicom engine is
still selectable and must store byte-exactly too.
"""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from conftest import Vault, dcmtk


def raw_connect(vault: Vault) -> socket.socket:
    return socket.create_connection(("127.0.0.1", vault.dicom_port), timeout=10)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            return -1, b""
        header += chunk
    kind, _, length = struct.unpack(">BBI", header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return kind, body


def associate_rq(calling: str = "PROBE", called: str = "DICOMVAULT") -> bytes:
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return rq.encode()


def serving(vault: Vault) -> bool:
    return vault.echo()


def test_garbage_instead_of_an_association_request_is_aborted(running_vault: Vault) -> None:
    with raw_connect(running_vault) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        kind, _ = read_pdu(sock)
    assert kind in (0x07, -1), f"expected A-ABORT or a closed connection, got PDU type {kind}"
    assert serving(running_vault)


def test_pdv_on_a_context_never_accepted_aborts_only_that_association(running_vault: Vault) -> None:
    other = AE(ae_title="OTHER")
    other.add_requested_context(Verification)
    bystander = other.associate("127.0.0.1", running_vault.dicom_port, ae_title="DICOMVAULT")
    assert bystander.is_established
    try:
        with raw_connect(running_vault) as sock:
            sock.sendall(associate_rq())
            kind, _ = read_pdu(sock)
            assert kind == 0x02, "A-ASSOCIATE-AC expected"
            item = struct.pack(">IBB", 2 + 4, 99, 0x03) + b"\x00\x00\x00\x00"  # context 99 was never proposed
            sock.sendall(struct.pack(">BBI", 0x04, 0, len(item)) + item)
            kind, body = read_pdu(sock)
            assert kind == 0x07, f"expected A-ABORT, got {kind}"
        assert bystander.send_c_echo().Status == 0x0000, "another association was disturbed"
    finally:
        bystander.release()
    assert serving(running_vault)


def test_silence_past_the_network_timeout_is_aborted(vault: Vault) -> None:
    vault.set_config("dicom", "network_timeout", "1.5")
    vault.start()
    with raw_connect(vault) as sock:
        sock.sendall(associate_rq())
        assert read_pdu(sock)[0] == 0x02
        sock.settimeout(15)
        kind, _ = read_pdu(sock)  # say nothing: the server must give up, not hold the slot forever
    assert kind in (0x07, -1)
    assert "timed out" in vault.log()
    assert serving(vault)


def test_too_many_associations_are_rejected_transiently(vault: Vault) -> None:
    vault.set_config("dicom", "max_associations", "2")
    vault.start()
    held = []
    try:
        for _ in range(2):
            sock = raw_connect(vault)
            sock.sendall(associate_rq())
            assert read_pdu(sock)[0] == 0x02
            held.append(sock)
        with raw_connect(vault) as third:
            third.sendall(associate_rq())
            kind, body = read_pdu(third)
        assert kind == 0x03, f"expected A-ASSOCIATE-RJ, got {kind}"
        result, source, reason = body[1], body[2], body[3]
        assert (result, source, reason) == (2, 3, 2), "transient, provider (presentation), local limit exceeded"
    finally:
        for sock in held:
            sock.close()


def test_a_service_we_do_not_offer_is_rejected_at_negotiation(running_vault: Vault) -> None:
    from pynetdicom.sop_class import ModalityWorklistInformationFind

    ae = AE(ae_title="FINDER")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", running_vault.dicom_port, ae_title="DICOMVAULT")
    try:
        assert assoc.is_established
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        rejected = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
        assert str(ModalityWorklistInformationFind) in rejected, "worklist is not a service we offer"
        assert {str(StudyRootQueryRetrieveInformationModelFind), str(Verification)} <= accepted
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


@pytest.mark.parametrize("engine", ["lean", "pynetdicom"])
def test_both_engines_store_byte_exactly(vault: Vault, ct_small: Path, tmp_path: Path, engine: str) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    vault.set_config("dicom", "engine", f'"{engine}"')
    vault.start()
    ds = pydicom.dcmread(ct_small)
    del ds[0xFFFCFFFC]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    sent = tmp_path / "sent.dcm"
    ds.save_as(sent, enforce_file_format=True)
    run = subprocess.run([dcmtk("storescu"), "-aec", "DICOMVAULT", "127.0.0.1", str(vault.dicom_port), str(sent)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    vault.wait_settled()
    vault.cli("get", str(ds.SOPInstanceUID), "--out", str(tmp_path / "got"))
    (got,) = list((tmp_path / "got").rglob("*.dcm"))
    assert dataset_of(got) == dataset_of(sent), f"{engine}: dataset bytes changed"


def dataset_of(path: Path) -> bytes:
    from pynetdicom.dsutils import split_dataset

    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]
