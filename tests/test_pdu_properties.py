"""Property-based tests of the Upper Layer parsers (net/pdu.py, net/associate.py).

Whatever bytes a peer sends, a parser returns a value or raises ``ProtocolError`` (which the
caller turns into an A-ABORT), never another exception that would escape as a crash. And
what we encode, we decode back unchanged.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomvault.net import pdu
from dicomvault.net.associate import (
    encode_associate_ac,
    encode_associate_rq,
    parse_associate_ac,
    parse_associate_rq,
)
from dicomvault.net.pdu import ProtocolError

settings.register_profile("dicomvault", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("dicomvault")

# --- strategies ------------------------------------------------------------------------------

uids = st.from_regex(r"[1-9][0-9]{0,5}(\.[0-9]{1,6}){0,8}", fullmatch=True)
ae_titles = st.from_regex(r"[A-Z0-9_]{1,16}", fullmatch=True)


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


@st.composite
def sub_items(draw: st.DrawFn) -> bytes:
    """Sub-items with known or arbitrary types; lengths may lie."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from([0x30, 0x40, 0x51, 0x52, 0x54, 0x55, 0x00, 0xFF]))
        value = draw(st.binary(max_size=40))
        if draw(st.booleans()):
            parts.append(_item(kind, value))
        else:  # a length that does not match the value
            parts.append(struct.pack(">BBH", kind, 0, draw(st.integers(0, 0xFFFF))) + value)
    return b"".join(parts)


@st.composite
def associate_bodies(draw: st.DrawFn) -> bytes:
    """A-ASSOCIATE-RQ/AC bodies: the fixed 68 bytes (sometimes cut short), then items whose
    types are the real ones, with plausible or hostile contents."""
    fixed = draw(st.binary(min_size=68, max_size=68))
    items = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from([0x10, 0x20, 0x21, 0x50, 0x00, 0xFF]))
        head = draw(st.binary(min_size=0, max_size=6))
        value = head + draw(sub_items())
        items.append(_item(kind, value) if draw(st.booleans()) else _item(kind, value)[:draw(st.integers(0, 8))])
    body = fixed + b"".join(items)
    return body[:draw(st.integers(0, len(body)))] if draw(st.booleans()) else body


def _mutated(data: bytes, draw: st.DrawFn) -> bytes:
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not raw:
            break
        pos = draw(st.integers(0, len(raw) - 1))
        raw[pos] = draw(st.integers(0, 255))
    return bytes(raw[: draw(st.integers(0, len(raw)))]) if draw(st.booleans()) else bytes(raw)


@st.composite
def mutated_rq(draw: st.DrawFn) -> bytes:
    contexts = [(1, draw(uids), [draw(uids)])]
    whole = encode_associate_rq(draw(ae_titles), draw(ae_titles), "1.2.840.10008.3.1.1.1", contexts, 16384,
                                draw(uids), "")
    return _mutated(whole[6:], draw)


# --- any bytes: a value or ProtocolError --------------------------------------------------------

def _value_or_protocol_error(parse, data: bytes):  # type: ignore[no-untyped-def]
    try:
        return parse(data)
    except ProtocolError:
        return None


@given(st.binary(max_size=64))
def test_pdu_header_parser_never_raises_anything_else(data: bytes) -> None:
    parsed = _value_or_protocol_error(pdu.parse_header, data)
    assert parsed is None or (len(data) == 6 and parsed == (data[0], struct.unpack(">I", data[2:6])[0]))


@given(st.binary(max_size=16))
def test_reject_and_abort_parsers_never_raise_anything_else(data: bytes) -> None:
    reject = _value_or_protocol_error(pdu.parse_reject, data)
    abort = _value_or_protocol_error(pdu.parse_abort, data)
    assert (reject is None) == (abort is None) == (len(data) < 4)


@given(st.binary(max_size=300) | st.lists(st.tuples(st.integers(0, 300), st.binary(max_size=40)), max_size=6).map(
    lambda items: b"".join(struct.pack(">I", length) + value for length, value in items)))
def test_pdv_parser_never_raises_anything_else(data: bytes) -> None:
    items = _value_or_protocol_error(pdu.pdv_items, data)
    if items is not None:  # a success accounts for every byte of the P-DATA-TF
        assert sum(6 + len(fragment) for _ctx, _control, fragment in items) == len(data)


@given(st.binary(max_size=300) | st.lists(st.tuples(st.integers(0, 3), st.integers(0, 0xFFFF), st.binary(max_size=12)),
                                         max_size=6).map(
    lambda elements: b"".join(struct.pack("<HHI", g, e, len(v)) + v for g, e, v in elements)))
def test_command_set_parser_never_raises_anything_else(data: bytes) -> None:
    command = _value_or_protocol_error(pdu.decode_command, data)
    if command is not None:
        for tag in command:
            assert tag >> 16 == 0
            pdu.command_us(command, tag)  # the accessors take any raw value
            pdu.command_uid(command, tag)


@given(st.binary(max_size=200) | associate_bodies() | mutated_rq())
def test_associate_rq_parser_never_raises_anything_else(body: bytes) -> None:
    request = _value_or_protocol_error(parse_associate_rq, body)
    if request is not None:
        assert request.application_context and len(request.ae_fields) == 32


@given(st.binary(max_size=200) | associate_bodies() | mutated_rq())
def test_associate_ac_parser_never_raises_anything_else(body: bytes) -> None:
    answer = _value_or_protocol_error(parse_associate_ac, body)
    assert answer is None or answer.max_pdu >= 0


# --- round trips ------------------------------------------------------------------------------

command_elements = st.dictionaries(st.integers(1, 0xFFFF), st.binary(max_size=70), max_size=12)


@given(command_elements)
def test_command_set_round_trip(elements: dict[int, bytes]) -> None:
    encoded = pdu.encode_command(elements)
    decoded = pdu.decode_command(encoded)
    group_length = decoded.pop(0x00000000)
    assert decoded == elements
    assert struct.unpack("<I", group_length)[0] == len(encoded) - 12


@given(st.integers(1, 255), st.integers(0, 3), st.binary(max_size=2000))
def test_single_pdv_round_trip(context_id: int, control: int, payload: bytes) -> None:
    whole = pdu.p_data(context_id, control, payload)
    kind, length = pdu.parse_header(whole[:6])
    assert (kind, length) == (pdu.P_DATA_TF, len(whole) - 6)
    assert [(c, m, bytes(f)) for c, m, f in pdu.pdv_items(whole[6:])] == [(context_id, control, payload)]


@given(st.integers(1, 255), st.binary(min_size=1, max_size=300), st.none() | st.binary(max_size=9000),
       st.sampled_from([0, 1030, 2048, 4096, 16384]))
def test_message_round_trip(context_id: int, command: bytes, dataset: bytes | None, max_pdu: int) -> None:
    """A DIMSE message cut into P-DATA-TF PDUs reads back as the same command and data set,
    each data set PDU within the peer's maximum."""
    stream = b"".join(bytes(b) for b in pdu.message(context_id, command, dataset, max_pdu))
    got_command, got_dataset, last = b"", b"", []
    pos = 0
    while pos < len(stream):
        kind, length = pdu.parse_header(stream[pos:pos + 6])
        assert kind == pdu.P_DATA_TF
        body = stream[pos + 6:pos + 6 + length]
        pos += 6 + length
        for ctx, control, fragment in pdu.pdv_items(body):
            assert ctx == context_id
            if control & 0x01:
                got_command += bytes(fragment)
            else:
                got_dataset += bytes(fragment)
                assert not max_pdu or length <= max_pdu
            last.append(bool(control & 0x02))
    assert got_command == command
    if dataset is None:
        assert last == [True]
    else:
        assert got_dataset == dataset
        assert last[0] and last[-1] and not any(last[1:-1])


@given(ae_titles, ae_titles, st.lists(st.tuples(uids, st.lists(uids, min_size=1, max_size=3)), min_size=1,
                                       max_size=8), st.integers(0, 2**32 - 1), uids)
def test_associate_rq_round_trip(called: str, calling: str, proposed: list[tuple[str, list[str]]], max_pdu: int,
                                 implementation: str) -> None:
    contexts = [(2 * i + 1, abstract, syntaxes) for i, (abstract, syntaxes) in enumerate(proposed)]
    whole = encode_associate_rq(called, calling, "1.2.840.10008.3.1.1.1", contexts, max_pdu, implementation, "VER")
    request = parse_associate_rq(whole[6:])
    assert (request.called_ae, request.calling_ae) == (called, calling)
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in request.contexts] == contexts
    assert (request.max_pdu, request.implementation_class_uid, request.implementation_version) == (
        max_pdu, implementation, "VER")


@given(st.lists(st.tuples(st.integers(0, 4), uids), min_size=1, max_size=8), st.integers(0, 2**32 - 1))
def test_associate_ac_round_trip(results: list[tuple[int, str]], max_pdu: int) -> None:
    whole = encode_associate_rq("DICOMVAULT", "PROBE", "1.2.840.10008.3.1.1.1", [(1, "1.2.3", ["1.2.840.10008.1.2"])],
                                16384, "1.2.3.4", "")
    request = parse_associate_rq(whole[6:])
    triples = [(2 * i + 1, result, syntax) for i, (result, syntax) in enumerate(results)]
    answer = parse_associate_ac(encode_associate_ac(request, triples, max_pdu, "1.2.3.4", "V", [])[6:])
    assert answer.results == {cid: (result, syntax) for cid, result, syntax in triples}
    assert answer.max_pdu == max_pdu


def test_a_short_reject_is_a_protocol_error_not_an_index_error() -> None:
    with pytest.raises(ProtocolError):
        pdu.parse_reject(b"\x00\x01")
