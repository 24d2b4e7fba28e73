"""net/associate.py against pynetdicom's PDU decoder, on real A-ASSOCIATE-RQs from DCMTK tools."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading

import pytest

from conftest import dcmtk
from dicomvault.net.associate import encode_associate_ac, parse_associate_rq
from dicomvault.net.pdu import ProtocolError


def capture_request(*tool_args: str) -> bytes:
    """Run a DCMTK tool against a socket that records its A-ASSOCIATE-RQ and hangs up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    captured: list[bytes] = []

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while len(data) < 6 or len(data) < 6 + struct.unpack(">I", data[2:6])[0]:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            captured.append(data)

    thread = threading.Thread(target=accept)
    thread.start()
    subprocess.run([*tool_args, "127.0.0.1", str(port)], capture_output=True, timeout=30)
    thread.join(timeout=30)
    server.close()
    assert captured, "the tool never sent an A-ASSOCIATE-RQ"
    return captured[0]


@pytest.fixture(scope="module")
def getscu_request() -> bytes:
    return capture_request(dcmtk("getscu"), "-to", "5", "-S", "-aet", "GETTER", "-aec", "ARCHIVE",
                           "-k", "QueryRetrieveLevel=STUDY")


def test_request_parsed_like_pynetdicom(getscu_request: bytes) -> None:
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import MaximumLengthNotification, SCP_SCU_RoleSelectionNegotiation

    ours = parse_associate_rq(getscu_request[6:])
    reference = A_ASSOCIATE_RQ()
    reference.decode(getscu_request)
    primitive = reference.to_primitive()
    assert (ours.calling_ae, ours.called_ae) == ("GETTER", "ARCHIVE")
    assert ours.application_context == str(primitive.application_context_name)
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in ours.contexts] == [
        (c.context_id, str(c.abstract_syntax), [str(ts) for ts in c.transfer_syntax])
        for c in primitive.presentation_context_definition_list
    ]
    assert len(ours.contexts) > 100, "getscu proposes every storage class"
    roles = {str(i.sop_class_uid): (bool(i.scu_role), bool(i.scp_role)) for i in primitive.user_information
             if isinstance(i, SCP_SCU_RoleSelectionNegotiation)}
    assert ours.roles == roles and any(scp for _scu, scp in roles.values())
    (max_length,) = [i for i in primitive.user_information if isinstance(i, MaximumLengthNotification)]
    assert ours.max_pdu == max_length.maximum_length_received
    assert ours.implementation_class_uid.startswith("1.2.276.0.7230010.3")


def test_answer_decodes_in_pynetdicom(getscu_request: bytes) -> None:
    from pynetdicom.pdu import A_ASSOCIATE_AC
    from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

    request = parse_associate_rq(getscu_request[6:])
    results = [(c.context_id, 0x00 if i % 2 == 0 else 0x03, c.transfer_syntaxes[0])
               for i, c in enumerate(request.contexts)]
    roles = [(uid, scu, scp) for uid, (scu, scp) in request.roles.items()]
    encoded = encode_associate_ac(request, results, 4 * 1024 * 1024, "1.2.3.4", "VERSION_1", roles)
    answer = A_ASSOCIATE_AC()
    answer.decode(encoded)
    primitive = answer.to_primitive()
    assert primitive.calling_ae_title.strip() == "GETTER" and primitive.called_ae_title.strip() == "ARCHIVE"
    decoded = [(c.context_id, c.result, str(c.transfer_syntax[0]) if c.transfer_syntax else "")
               for c in primitive.presentation_context_definition_results_list]
    assert [(cid, result) for cid, result, _ in decoded] == [(cid, result) for cid, result, _ in results]
    assert [ts for (_, result, ts) in decoded if result == 0] == [ts for (_, result, ts) in results if result == 0]
    got_roles = {str(i.sop_class_uid): (bool(i.scu_role), bool(i.scp_role)) for i in primitive.user_information
                 if isinstance(i, SCP_SCU_RoleSelectionNegotiation)}
    assert got_roles == request.roles
    assert str(primitive.implementation_class_uid) == "1.2.3.4"
    assert primitive.maximum_length_received == 4 * 1024 * 1024


@pytest.mark.parametrize("cut", [10, 70, 200])
def test_truncated_request_is_a_protocol_error(getscu_request: bytes, cut: int) -> None:
    with pytest.raises(ProtocolError):
        parse_associate_rq(getscu_request[6:6 + cut])


def test_our_request_decodes_in_pynetdicom_and_its_answer_decodes_in_ours() -> None:
    """The requestor side (restore, C-MOVE, replication to a PACS) against pynetdicom's codec."""
    from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import MaximumLengthNotification

    from dicomvault.net.associate import encode_associate_rq, parse_associate_ac

    contexts = [(1, "1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"]),
                (3, "1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]),
                (5, "1.2.826.0.1.3680043.9.7433.99.1", ["1.2.840.10008.1.2.1"])]
    encoded = encode_associate_rq("PACS", "DICOMVAULT", "1.2.840.10008.3.1.1.1", contexts, 1 << 20,
                                  "1.2.3.4", "DV_1")
    request = A_ASSOCIATE_RQ()
    request.decode(encoded)
    primitive = request.to_primitive()
    assert primitive.called_ae_title.strip() == "PACS" and primitive.calling_ae_title.strip() == "DICOMVAULT"
    assert [(c.context_id, str(c.abstract_syntax), [str(t) for t in c.transfer_syntax])
            for c in primitive.presentation_context_definition_list] == contexts
    assert str(primitive.implementation_class_uid) == "1.2.3.4"
    assert primitive.maximum_length_received == 1 << 20

    for context, result in zip(primitive.presentation_context_definition_list, (0, 4, 3)):
        context.result = result
        context.transfer_syntax = context.transfer_syntax[-1:]
    primitive.presentation_context_definition_results_list = primitive.presentation_context_definition_list
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            item.maximum_length_received = 16384
    answer = A_ASSOCIATE_AC()
    answer.from_primitive(primitive)
    parsed = parse_associate_ac(answer.encode()[6:])
    assert parsed.results == {1: (0, "1.2.840.10008.1.2.1"), 3: (4, "1.2.840.10008.1.2.1"),
                              5: (3, "1.2.840.10008.1.2.1")}
    assert parsed.max_pdu == 16384
