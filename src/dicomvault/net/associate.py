"""A-ASSOCIATE-RQ parsing and A-ASSOCIATE-AC encoding (PS3.8 9.3.2, 9.3.3, D.3.3).

Why not pynetdicom's PDU classes: they validate every UID of every item through pydicom as
they build Python objects, which for a C-GET requestor proposing 120 storage contexts with
role selection costs 45 ms on an idle machine and several times that under load, once per
association, before the first image moves. The byte layout is small and fixed; this reads
only what the acceptor needs and refuses anything that does not fit (the caller aborts).
The tests check both directions against pynetdicom's decoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .pdu import ProtocolError

ITEM_APPLICATION_CONTEXT = 0x10
ITEM_PRESENTATION_CONTEXT_RQ = 0x20
ITEM_PRESENTATION_CONTEXT_AC = 0x21
ITEM_ABSTRACT_SYNTAX = 0x30
ITEM_TRANSFER_SYNTAX = 0x40
ITEM_USER_INFORMATION = 0x50
SUB_MAXIMUM_LENGTH = 0x51
SUB_IMPLEMENTATION_CLASS_UID = 0x52
SUB_ROLE_SELECTION = 0x54
SUB_IMPLEMENTATION_VERSION = 0x55


@dataclass
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass
class AssociateRequest:
    called_ae: str
    calling_ae: str
    application_context: str
    ae_fields: bytes  # the 32 bytes of called + calling AE titles, echoed in the answer
    contexts: list[ProposedContext] = field(default_factory=list)
    max_pdu: int = 0  # the requestor's Maximum Length Received (0: no limit)
    implementation_class_uid: str = ""
    implementation_version: str = ""
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # SOP class -> (SCU, SCP)


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip("\x00 ")


def _items(data: bytes, start: int, end: int, what: str) -> list[tuple[int, bytes]]:
    """(type, value) of each item/sub-item in data[start:end] (2-byte big-endian lengths)."""
    items = []
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise ProtocolError(f"{what} ends inside an item header")
        kind, _reserved, length = struct.unpack_from(">BBH", data, pos)
        if pos + 4 + length > end:
            raise ProtocolError(f"{what}: item 0x{kind:02X} of {length} bytes does not fit")
        items.append((kind, data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return items


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """The A-ASSOCIATE-RQ whose PDU body (after the 6-byte PDU header) is ``body``."""
    if len(body) < 68:
        raise ProtocolError(f"A-ASSOCIATE-RQ of {len(body)} bytes is shorter than its fixed fields")
    request = AssociateRequest(called_ae=_text(body[4:20]), calling_ae=_text(body[20:36]), application_context="",
                               ae_fields=body[4:36])
    for kind, value in _items(body, 68, len(body), "A-ASSOCIATE-RQ"):
        if kind == ITEM_APPLICATION_CONTEXT:
            request.application_context = _text(value)
        elif kind == ITEM_PRESENTATION_CONTEXT_RQ:
            if len(value) < 4:
                raise ProtocolError("presentation context item shorter than 4 bytes")
            abstract, syntaxes = "", []
            for sub, sub_value in _items(value, 4, len(value), "presentation context"):
                if sub == ITEM_ABSTRACT_SYNTAX:
                    abstract = _text(sub_value)
                elif sub == ITEM_TRANSFER_SYNTAX:
                    syntaxes.append(_text(sub_value))
            request.contexts.append(ProposedContext(value[0], abstract, syntaxes))
        elif kind == ITEM_USER_INFORMATION:
            for sub, sub_value in _items(value, 0, len(value), "user information"):
                if sub == SUB_MAXIMUM_LENGTH and len(sub_value) == 4:
                    request.max_pdu = struct.unpack(">I", sub_value)[0]
                elif sub == SUB_IMPLEMENTATION_CLASS_UID:
                    request.implementation_class_uid = _text(sub_value)
                elif sub == SUB_IMPLEMENTATION_VERSION:
                    request.implementation_version = _text(sub_value)
                elif sub == SUB_ROLE_SELECTION and len(sub_value) >= 4:
                    (uid_length,) = struct.unpack_from(">H", sub_value, 0)
                    if 2 + uid_length + 2 > len(sub_value):
                        raise ProtocolError("role selection sub-item shorter than its UID length")
                    uid = _text(sub_value[2 : 2 + uid_length])
                    request.roles[uid] = (bool(sub_value[2 + uid_length]), bool(sub_value[3 + uid_length]))
    if not request.application_context:
        raise ProtocolError("A-ASSOCIATE-RQ without an application context")
    return request


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _uid(uid: str) -> bytes:
    return uid.encode("ascii")


def encode_associate_ac(request: AssociateRequest, results: list[tuple[int, int, str]], max_pdu: int,
                        implementation_class_uid: str, implementation_version: str,
                        roles: list[tuple[str, bool, bool]]) -> bytes:
    """A whole A-ASSOCIATE-AC PDU. ``results``: (context id, result, transfer syntax) per
    proposed context (the syntax is ignored by the requestor unless the result is 0)."""
    items = [_item(ITEM_APPLICATION_CONTEXT, _uid(request.application_context))]
    for context_id, result, syntax in results:
        items.append(_item(ITEM_PRESENTATION_CONTEXT_AC, bytes((context_id, 0, result, 0))
                           + _item(ITEM_TRANSFER_SYNTAX, _uid(syntax))))
    user = [_item(SUB_MAXIMUM_LENGTH, struct.pack(">I", max_pdu))]
    if implementation_class_uid:
        user.append(_item(SUB_IMPLEMENTATION_CLASS_UID, _uid(implementation_class_uid)))
    for uid, scu, scp in roles:
        raw = _uid(uid)
        user.append(_item(SUB_ROLE_SELECTION, struct.pack(">H", len(raw)) + raw + bytes((int(scu), int(scp)))))
    if implementation_version:
        user.append(_item(SUB_IMPLEMENTATION_VERSION, implementation_version.encode("ascii")[:16]))
    items.append(_item(ITEM_USER_INFORMATION, b"".join(user)))
    body = struct.pack(">HH", 1, 0) + request.ae_fields + bytes(32) + b"".join(items)
    return struct.pack(">BBI", 0x02, 0, len(body)) + body


# --- the requestor's side: A-ASSOCIATE-RQ out, A-ASSOCIATE-AC in ------------------------------

@dataclass
class AssociateAnswer:
    results: dict[int, tuple[int, str]] = field(default_factory=dict)  # context id -> (result, syntax)
    max_pdu: int = 0  # the acceptor's Maximum Length Received (0: no limit)


def _ae_field(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def encode_associate_rq(called_ae: str, calling_ae: str, application_context: str,
                        contexts: list[tuple[int, str, list[str]]], max_pdu: int,
                        implementation_class_uid: str, implementation_version: str) -> bytes:
    """A whole A-ASSOCIATE-RQ PDU; ``contexts``: (odd context id, abstract syntax, syntaxes).
    Used by the C-STORE requestor (restore, C-MOVE): pynetdicom's builder costs a second of
    imports and milliseconds per context before the first image moves."""
    items = [_item(ITEM_APPLICATION_CONTEXT, _uid(application_context))]
    for context_id, abstract, syntaxes in contexts:
        items.append(_item(ITEM_PRESENTATION_CONTEXT_RQ, bytes((context_id, 0, 0, 0))
                           + _item(ITEM_ABSTRACT_SYNTAX, _uid(abstract))
                           + b"".join(_item(ITEM_TRANSFER_SYNTAX, _uid(s)) for s in syntaxes)))
    user = [_item(SUB_MAXIMUM_LENGTH, struct.pack(">I", max_pdu))]
    if implementation_class_uid:
        user.append(_item(SUB_IMPLEMENTATION_CLASS_UID, _uid(implementation_class_uid)))
    if implementation_version:
        user.append(_item(SUB_IMPLEMENTATION_VERSION, implementation_version.encode("ascii")[:16]))
    items.append(_item(ITEM_USER_INFORMATION, b"".join(user)))
    body = struct.pack(">HH", 1, 0) + _ae_field(called_ae) + _ae_field(calling_ae) + bytes(32) + b"".join(items)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def parse_associate_ac(body: bytes) -> AssociateAnswer:
    """The A-ASSOCIATE-AC whose PDU body (after the 6-byte PDU header) is ``body``."""
    if len(body) < 68:
        raise ProtocolError(f"A-ASSOCIATE-AC of {len(body)} bytes is shorter than its fixed fields")
    answer = AssociateAnswer()
    for kind, value in _items(body, 68, len(body), "A-ASSOCIATE-AC"):
        if kind == ITEM_PRESENTATION_CONTEXT_AC:
            if len(value) < 4:
                raise ProtocolError("presentation context item shorter than 4 bytes")
            syntax = ""
            for sub, sub_value in _items(value, 4, len(value), "presentation context"):
                if sub == ITEM_TRANSFER_SYNTAX:
                    syntax = _text(sub_value)
            answer.results[value[0]] = (value[2], syntax)
        elif kind == ITEM_USER_INFORMATION:
            for sub, sub_value in _items(value, 0, len(value), "user information"):
                if sub == SUB_MAXIMUM_LENGTH and len(sub_value) == 4:
                    answer.max_pdu = struct.unpack(">I", sub_value)[0]
    return answer
