"""PDU framing, P-DATA fragments and DIMSE command sets: the few byte layouts that run once
per message, for both the acceptor and the requestor.

Association negotiation (A-ASSOCIATE-RQ/AC) lives in ``associate.py`` and the Upper Layer
state machine in ``fsm.py``; neither side uses pynetdicom's PDU classes. What lives here: the
6-byte PDU header, the short control PDUs, PDV items (PS3.8 9.3.5) and the implicit-VR
little-endian command set (PS3.7 9.3, 10.3), kept as raw bytes so the dataset is never
decoded or re-encoded. Every parser raises ``ProtocolError`` and nothing else on bad bytes.
"""

from __future__ import annotations

import socket
import ssl
import struct

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
PDU_TYPES = {A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT}

# Command Field values (PS3.7 E.1)
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
N_ACTION_RQ, N_ACTION_RSP = 0x0130, 0x8130
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101

TAG_AFFECTED_SOP_CLASS = 0x00000002
TAG_REQUESTED_SOP_CLASS = 0x00000003
TAG_COMMAND_FIELD = 0x00000100
TAG_MESSAGE_ID = 0x00000110
TAG_MESSAGE_ID_RESPONDED = 0x00000120
TAG_DATASET_TYPE = 0x00000800
TAG_STATUS = 0x00000900
TAG_ERROR_COMMENT = 0x00000902
TAG_AFFECTED_SOP_INSTANCE = 0x00001000
TAG_REQUESTED_SOP_INSTANCE = 0x00001001
TAG_ACTION_TYPE = 0x00001008
TAG_PRIORITY = 0x00000700
TAG_MOVE_DESTINATION = 0x00000600
TAG_REMAINING = 0x00001020
TAG_COMPLETED = 0x00001021
TAG_FAILED = 0x00001022
TAG_WARNING = 0x00001023
TAG_MOVE_ORIGINATOR_AE = 0x00001030
TAG_MOVE_ORIGINATOR_ID = 0x00001031

RELEASE_RQ = struct.pack(">BBIxxxx", A_RELEASE_RQ, 0, 4)
RELEASE_RP = struct.pack(">BBIxxxx", A_RELEASE_RP, 0, 4)
_HEADER = struct.Struct(">BBI")


class ProtocolError(Exception):
    """The peer broke the Upper Layer protocol: the association is aborted."""


def abort_pdu(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT (PS3.8 9.3.8); source 2 = service provider, 0 = service user."""
    return struct.pack(">BBIxxBB", A_ABORT, 0, 4, source, reason)


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4); result 1 = permanent, 2 = transient."""
    return struct.pack(">BBIxBBB", A_ASSOCIATE_RJ, 0, 4, result, source, reason)


def parse_header(header: bytes) -> tuple[int, int]:
    """(PDU type, length of the body that follows) of a 6-byte PDU header."""
    if len(header) != 6:
        raise ProtocolError(f"PDU header of {len(header)} bytes")
    kind, _reserved, length = _HEADER.unpack(header)
    return kind, length


def parse_reject(body: bytes) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ body (PS3.8 9.3.4)."""
    if len(body) < 4:
        raise ProtocolError(f"A-ASSOCIATE-RJ of {len(body)} bytes")
    return body[1], body[2], body[3]


def parse_abort(body: bytes) -> tuple[int, int]:
    """(source, reason) of an A-ABORT body (PS3.8 9.3.8)."""
    if len(body) < 4:
        raise ProtocolError(f"A-ABORT of {len(body)} bytes")
    return body[2], body[3]


def pdv_items(body: bytes) -> list[tuple[int, int, memoryview]]:
    """(context id, message control header, fragment) for each PDV item of a P-DATA-TF."""
    items = []
    view = memoryview(body)
    pos = 0
    while pos < len(body):
        if pos + 6 > len(body):
            raise ProtocolError("P-DATA-TF ends inside a PDV item header")
        (length,) = struct.unpack_from(">I", body, pos)
        if length < 2 or pos + 4 + length > len(body):
            raise ProtocolError(f"PDV item length {length} does not fit its P-DATA-TF")
        items.append((body[pos + 4], body[pos + 5], view[pos + 6 : pos + 4 + length]))
        pos += 4 + length
    return items


def p_data(context_id: int, control: int, payload: bytes) -> bytes:
    """One P-DATA-TF holding one PDV (responses are small: they always fit one PDU)."""
    return struct.pack(">BBIIBB", P_DATA_TF, 0, len(payload) + 6, len(payload) + 2, context_id, control) + payload


def message(context_id: int, command: bytes, dataset: bytes | None, max_pdu: int) -> list[bytes | memoryview]:
    """A whole DIMSE message as P-DATA-TF PDUs no larger than the peer's ``max_pdu``
    (0 = unlimited), for ``send_buffers``: small PDU headers interleaved with views into the
    data set, so the data set is never copied in Python (this runs for every instance a
    retrieval or a restore sends; the kernel gathers the pieces)."""
    fragment = max(1024, (max_pdu or (1 << 24)) - 6)  # PDV item header (4 + 2) inside the PDU
    buffers: list[bytes | memoryview] = [p_data(context_id, 0x03, command)]
    if dataset is None:
        return buffers
    if not dataset:
        buffers.append(p_data(context_id, 0x02, b""))
        return buffers
    view = memoryview(dataset)
    for start in range(0, len(dataset), fragment):
        piece = view[start:start + fragment]
        last = start + fragment >= len(dataset)
        buffers.append(_PDV_HEADER.pack(P_DATA_TF, 0, len(piece) + 6, len(piece) + 2, context_id,
                                        0x02 if last else 0x00))
        buffers.append(piece)
    return buffers


_PDV_HEADER = struct.Struct(">BBIIBB")
_TLS_WRITE = 256 * 1024
_MAX_IOV = 512  # well under every kernel's IOV_MAX (1024 on Linux)


def send_buffers(sock: socket.socket, buffers: list[bytes | memoryview]) -> None:
    """``sendall`` for a list of buffers, gathered by the kernel (``sendmsg``), no joining.
    A TLS socket has no ``sendmsg``: the buffers are joined into ~256 KiB writes instead."""
    if isinstance(sock, ssl.SSLSocket):
        batch: list[bytes | memoryview] = []
        size = 0
        for buffer in buffers:
            batch.append(buffer)
            size += len(buffer)
            if size >= _TLS_WRITE:
                sock.sendall(b"".join(batch))
                batch, size = [], 0
        if batch:
            sock.sendall(b"".join(batch))
        return
    pending = [memoryview(b) for b in buffers if len(b)]
    while pending:
        sent = sock.sendmsg(pending[:_MAX_IOV])
        while sent:
            head = pending[0]
            if sent >= len(head):
                sent -= len(head)
                pending.pop(0)
            else:
                pending[0] = head[sent:]
                sent = 0


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def text_value(text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def encode_command(elements: dict[int, bytes]) -> bytes:
    """An implicit VR little-endian command set with its group length, in tag order."""
    body = b"".join(_element(tag, elements[tag]) for tag in sorted(elements))
    return _element(0x00000000, struct.pack("<I", len(body))) + body


def decode_command(data: bytes) -> dict[int, bytes]:
    """Raw values of a command set's elements (implicit VR little endian, group 0000)."""
    elements: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        if pos + 8 > len(data):
            raise ProtocolError("command set ends inside an element header")
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if group != 0 or pos + length > len(data):
            raise ProtocolError(f"malformed command set element ({group:04X},{elem:04X})")
        elements[(group << 16) | elem] = data[pos : pos + length]
        pos += length
    return elements


def command_us(command: dict[int, bytes], tag: int) -> int | None:
    value = command.get(tag)
    return struct.unpack("<H", value[:2])[0] if value and len(value) >= 2 else None


def command_uid(command: dict[int, bytes], tag: int) -> str:
    return command.get(tag, b"").decode("ascii", "replace").rstrip("\x00 ")
