"""The DICOM Upper Layer state machine (net/fsm.py) and the two sides that drive it.

The table is tested cell by cell against PS3.8 Table 9-10 (as pynetdicom transcribes it) and
the next states PS3.8 Tables 9-6 to 9-9 give each action. The real acceptor (DicomListener)
and requestor (StoreRequestor) are tested over loopback sockets against raw-PDU peers written
here with net/pdu.py: release (who closes first, ARTIM), release collision, A-ABORT,
fragmented messages, and the requestor's error paths.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import free_port, wait_until

from dicomvault.config import DicomSettings
from dicomvault.net import acceptor as acceptor_module
from dicomvault.net import pdu
from dicomvault.net.acceptor import Association, DicomListener
from dicomvault.net.associate import encode_associate_ac, encode_associate_rq, parse_associate_rq
from dicomvault.net.fsm import (
    ACCEPTOR_TABLE,
    REQUESTOR_TABLE,
    Action,
    Event,
    InvalidTransition,
    Machine,
    State,
)
from dicomvault.net.requestor import AssociationRejected, MissingStatus, StoreRequestor

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# PS3.8 Tables 9-6 to 9-9: the state each action leads to (AR-8 depends on the role).
NEXT = {
    "AE-1": 4, "AE-2": 5, "AE-3": 6, "AE-4": 1, "AE-5": 2, "AE-6": 3, "AE-7": 6, "AE-8": 13,
    "DT-1": 6, "DT-2": 6,
    "AR-1": 7, "AR-2": 8, "AR-3": 1, "AR-4": 13, "AR-5": 1, "AR-6": 7, "AR-7": 8, "AR-9": 11, "AR-10": 12,
    "AA-1": 13, "AA-2": 1, "AA-3": 1, "AA-4": 1, "AA-5": 1, "AA-6": 13, "AA-7": 13, "AA-8": 13,
}


def _ps38_cells() -> dict[tuple[int, int], str]:
    from pynetdicom.fsm import TRANSITION_TABLE  # test-only: an independent transcription of Table 9-10

    return {(int(state[3:]), int(event[3:])): action for (event, state), action in TRANSITION_TABLE.items()}


PS38 = _ps38_cells()


# --- the table itself ------------------------------------------------------------------------


@pytest.mark.parametrize("requestor", [False, True], ids=["acceptor", "requestor"])
@pytest.mark.parametrize(("state", "event"), sorted(PS38), ids=[f"Sta{s}-Evt{e}" for s, e in sorted(PS38)])
def test_each_transition_gives_the_ps38_action_and_next_state(state: int, event: int, requestor: bool) -> None:
    machine = Machine(requestor=requestor, state=State(state))
    action = machine.fire(Event(event))
    assert action.label == PS38[state, event]
    expected = (9 if requestor else 10) if action is Action.AR_8 else NEXT[action.label]
    assert machine.state == State(expected)


def test_the_tables_have_exactly_the_ps38_cells() -> None:
    for table in (ACCEPTOR_TABLE, REQUESTOR_TABLE):
        cells = {(state.value, event.value) for state, row in table.items() for event in row}
        assert cells == set(PS38)


@pytest.mark.parametrize(("state", "event"),
                         [(s, e) for s in range(1, 14) for e in range(1, 20) if (s, e) not in PS38])
def test_an_event_not_valid_in_the_state_raises_and_keeps_the_state(state: int, event: int) -> None:
    machine = Machine(requestor=False, state=State(state))
    assert not machine.allows(Event(event))
    with pytest.raises(InvalidTransition):
        machine.fire(Event(event))
    assert machine.state == State(state)


@pytest.mark.parametrize("kind", [pdu.A_ASSOCIATE_RQ, pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ, pdu.A_RELEASE_RP,
                                  0x00, 0x08, 0xFF])
def test_an_unexpected_pdu_during_data_transfer_is_aa8(kind: int) -> None:
    machine = Machine(requestor=False, state=State.STA6)
    assert machine.pdu(kind) is Action.AA_8
    assert machine.state is State.STA13


def test_an_unknown_pdu_type_is_evt19() -> None:
    for state in (State.STA2, State.STA13):
        machine = Machine(requestor=False, state=state)
        assert machine.pdu(0x42) is (Action.AA_1 if state is State.STA2 else Action.AA_7)


def test_release_collision_on_the_requestor() -> None:
    machine = Machine(requestor=True, state=State.STA6)
    steps = [(Event.EVT11, Action.AR_1, State.STA7), (Event.EVT12, Action.AR_8, State.STA9),
             (Event.EVT14, Action.AR_9, State.STA11), (Event.EVT13, Action.AR_3, State.STA1)]
    for event, action, state in steps:
        assert (machine.fire(event), machine.state) == (action, state)


def test_release_collision_on_the_acceptor() -> None:
    machine = Machine(requestor=False, state=State.STA6)
    steps = [(Event.EVT11, Action.AR_1, State.STA7), (Event.EVT12, Action.AR_8, State.STA10),
             (Event.EVT13, Action.AR_10, State.STA12), (Event.EVT14, Action.AR_4, State.STA13),
             (Event.EVT17, Action.AR_5, State.STA1)]
    for event, action, state in steps:
        assert (machine.fire(event), machine.state) == (action, state)


def test_a_normal_release_on_the_acceptor_ends_in_sta13_until_the_peer_closes() -> None:
    machine = Machine(requestor=False)
    for event in (Event.EVT5, Event.EVT6, Event.EVT7, Event.EVT10, Event.EVT9):
        machine.fire(event)
    assert machine.pdu(pdu.A_RELEASE_RQ) is Action.AR_2 and machine.state is State.STA8
    assert machine.fire(Event.EVT14) is Action.AR_4 and machine.state is State.STA13
    assert machine.fire(Event.EVT17) is Action.AR_5 and machine.state is State.STA1


@pytest.mark.parametrize("state", [State.STA2, State.STA13])
def test_artim_expiry_closes_the_transport(state: State) -> None:
    machine = Machine(requestor=False, state=state)
    assert machine.fire(Event.EVT18) is Action.AA_2
    assert machine.state is State.STA1


@pytest.mark.parametrize("state", [s for s in State if s not in (State.STA2, State.STA13)])
def test_artim_expiry_where_no_artim_runs_is_invalid(state: State) -> None:
    with pytest.raises(InvalidTransition):
        Machine(requestor=False, state=state).fire(Event.EVT18)


@pytest.mark.parametrize("state", [State(n) for n in range(2, 14) if n != 4])
def test_an_a_abort_received_in_every_connected_state_closes(state: State) -> None:
    machine = Machine(requestor=False, state=state)
    action = machine.pdu(pdu.A_ABORT)
    assert action is (Action.AA_2 if state in (State.STA2, State.STA13) else Action.AA_3)
    assert machine.state is State.STA1


@pytest.mark.parametrize("state", [State(n) for n in range(3, 13)])
def test_a_local_abort_in_every_state_where_one_can_be_requested(state: State) -> None:
    machine = Machine(requestor=True, state=state)
    action = machine.fire(Event.EVT15)
    if state is State.STA4:  # no connection yet: just close
        assert (action, machine.state) == (Action.AA_2, State.STA1)
    else:  # send A-ABORT, wait in Sta13
        assert (action, machine.state) == (Action.AA_1, State.STA13)


def test_a_second_association_request_during_data_transfer_is_aa8() -> None:
    machine = Machine(requestor=False)
    machine.fire(Event.EVT5)
    assert machine.pdu(pdu.A_ASSOCIATE_RQ) is Action.AE_6
    assert machine.fire(Event.EVT7) is Action.AE_7
    assert machine.pdu(pdu.A_ASSOCIATE_RQ) is Action.AA_8
    assert machine.pdu(pdu.P_DATA_TF) is Action.AA_6  # ignored in Sta13
    assert machine.state is State.STA13


# --- raw-PDU helpers --------------------------------------------------------------------------


def recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    kind, length = pdu.parse_header(recv_exact(sock, 6))
    return kind, recv_exact(sock, length)


def read_message(sock: socket.socket) -> tuple[dict[int, bytes], bytes]:
    """The next whole DIMSE message (command, data set) from P-DATA-TF PDUs."""
    command, dataset = bytearray(), bytearray()
    decoded: dict[int, bytes] | None = None
    while True:
        kind, body = read_pdu(sock)
        assert kind == pdu.P_DATA_TF, f"expected P-DATA-TF, got 0x{kind:02X}"
        for _ctx, control, fragment in pdu.pdv_items(body):
            if control & 0x01:
                command += fragment
                if control & 0x02:
                    decoded = pdu.decode_command(bytes(command))
                    if pdu.command_us(decoded, pdu.TAG_DATASET_TYPE) == pdu.NO_DATASET:
                        return decoded, b""
            else:
                dataset += fragment
                if control & 0x02:
                    assert decoded is not None
                    return decoded, bytes(dataset)


def store_rsp(message_id: int, status: int | None = 0x0000, context_id: int = 1) -> bytes:
    elements = {pdu.TAG_AFFECTED_SOP_CLASS: pdu.uid_value(CT), pdu.TAG_COMMAND_FIELD: pdu.us(pdu.C_STORE_RSP),
                pdu.TAG_MESSAGE_ID_RESPONDED: pdu.us(message_id), pdu.TAG_DATASET_TYPE: pdu.us(pdu.NO_DATASET)}
    if status is not None:
        elements[pdu.TAG_STATUS] = pdu.us(status)
    return pdu.p_data(context_id, 0x03, pdu.encode_command(elements))


def store_command(message_id: int = 1, sop_instance: str = "1.2.3.4.5") -> bytes:
    return pdu.encode_command({
        pdu.TAG_AFFECTED_SOP_CLASS: pdu.uid_value(CT), pdu.TAG_COMMAND_FIELD: pdu.us(pdu.C_STORE_RQ),
        pdu.TAG_MESSAGE_ID: pdu.us(message_id), pdu.TAG_PRIORITY: pdu.us(0),
        pdu.TAG_DATASET_TYPE: pdu.us(0), pdu.TAG_AFFECTED_SOP_INSTANCE: pdu.uid_value(sop_instance),
    })


# --- the real acceptor ------------------------------------------------------------------------


class Listener:
    def __init__(self, port: int, listener: DicomListener, stored: list[tuple[str, bytes]]) -> None:
        self.port, self.listener, self.stored = port, listener, stored

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def associate(self, contexts: list[tuple[int, str, list[str]]] | None = None) -> socket.socket:
        sock = self.connect()
        sock.sendall(encode_associate_rq("DICOMVAULT", "PROBE", APPLICATION_CONTEXT,
                                         contexts or [(1, CT, [IMPLICIT]), (3, VERIFICATION, [IMPLICIT])],
                                         16384, "1.2.3.4", ""))
        kind, _ = read_pdu(sock)
        assert kind == pdu.A_ASSOCIATE_AC
        return sock

    def active(self) -> int:
        return self.listener._active


@pytest.fixture
def listener() -> Iterator[Listener]:
    yield from _listener(network_timeout=30)


@pytest.fixture
def impatient_listener() -> Iterator[Listener]:
    yield from _listener(network_timeout=0.5)


def _listener(network_timeout: float) -> Iterator[Listener]:
    stored: list[tuple[str, bytes]] = []

    def on_store(_assoc: Association, _sop_class: str, sop_instance: str, _syntax: str,
                 dataset: bytes) -> tuple[int, str]:
        stored.append((sop_instance, dataset))
        return 0x0000, ""

    port = free_port()
    server = DicomListener(DicomSettings(port=port, bind="127.0.0.1", network_timeout=network_timeout), on_store)
    server.start()
    try:
        yield Listener(port, server, stored)
    finally:
        server.stop()


def echo_works(listener: Listener) -> bool:
    with listener.associate() as sock:
        sock.sendall(pdu.p_data(3, 0x03, pdu.encode_command({
            pdu.TAG_AFFECTED_SOP_CLASS: pdu.uid_value(VERIFICATION), pdu.TAG_COMMAND_FIELD: pdu.us(pdu.C_ECHO_RQ),
            pdu.TAG_MESSAGE_ID: pdu.us(7), pdu.TAG_DATASET_TYPE: pdu.us(pdu.NO_DATASET)})))
        reply, _ = read_message(sock)
        sock.sendall(pdu.RELEASE_RQ)
        released = read_pdu(sock)[0] == pdu.A_RELEASE_RP
        return pdu.command_us(reply, pdu.TAG_STATUS) == 0 and released


def test_the_acceptor_does_not_close_first_after_a_release_rp(listener: Listener) -> None:
    sock = listener.associate()
    try:
        sock.sendall(pdu.RELEASE_RQ)
        assert read_pdu(sock) == (pdu.A_RELEASE_RP, b"\x00\x00\x00\x00")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):  # Sta13: the acceptor waits for us to close
            data = sock.recv(1)
            pytest.fail(f"the acceptor closed first or sent more: {data!r}")
        assert listener.active() == 1
    finally:
        sock.close()
    wait_until(lambda: listener.active() == 0, timeout=10, what="the acceptor to see our close (AR-5)")


def test_the_acceptor_closes_when_artim_expires_after_a_release(listener: Listener,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acceptor_module, "ARTIM_SECONDS", 0.3)
    with listener.associate() as sock:
        sock.sendall(pdu.RELEASE_RQ)
        assert read_pdu(sock)[0] == pdu.A_RELEASE_RP
        sock.settimeout(10)
        started = time.monotonic()
        assert sock.recv(1) == b"", "the acceptor must close once ARTIM expires (AA-2)"
        assert time.monotonic() - started >= 0.2
    assert echo_works(listener)


def test_pdus_after_the_release_rp_are_ignored_until_the_requestor_closes(listener: Listener) -> None:
    with listener.associate() as sock:
        sock.sendall(pdu.RELEASE_RQ)
        assert read_pdu(sock)[0] == pdu.A_RELEASE_RP
        sock.sendall(pdu.p_data(1, 0x03, store_command()))  # Sta13: AA-6, no answer, no abort
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)
    wait_until(lambda: listener.active() == 0, timeout=10, what="the association to end")
    assert listener.stored == []


def test_no_association_request_before_artim_expires_closes_without_an_abort(impatient_listener: Listener) -> None:
    with impatient_listener.connect() as sock:
        assert sock.recv(6) == b"", "Sta2 + ARTIM expiry is AA-2: close, no A-ABORT"


def test_silence_during_the_association_is_a_local_abort(impatient_listener: Listener) -> None:
    with impatient_listener.associate() as sock:
        kind, body = read_pdu(sock)  # Evt15 (our idle timeout) in Sta6: AA-1
        assert kind == pdu.A_ABORT
        assert sock.recv(1) == b""


def test_an_a_abort_mid_message_stores_nothing_and_closes(listener: Listener) -> None:
    with listener.associate() as sock:
        command = store_command()
        sock.sendall(pdu.p_data(1, 0x03, command) + pdu.p_data(1, 0x00, b"\x08\x00" * 50))  # data set not finished
        sock.sendall(pdu.abort_pdu(source=0))
        sock.settimeout(10)
        assert sock.recv(1) == b"", "after an A-ABORT the acceptor closes (AA-3)"
    assert listener.stored == []
    assert echo_works(listener)


def test_a_command_and_data_set_split_over_many_pdvs_are_reassembled(listener: Listener) -> None:
    command = store_command(message_id=42, sop_instance="1.2.3.99")
    dataset = bytes(range(256)) * 40 + b"tail"
    pieces = [command[i:i + 7] for i in range(0, len(command), 7)]
    pdvs = [(0x01 | (0x02 if i == len(pieces) - 1 else 0), piece) for i, piece in enumerate(pieces)]
    chunks = [dataset[i:i + 333] for i in range(0, len(dataset), 333)]
    pdvs += [(0x02 if i == len(chunks) - 1 else 0x00, chunk) for i, chunk in enumerate(chunks)]
    with listener.associate() as sock:
        # several PDVs per P-DATA-TF, and PDU boundaries that do not follow the command/data split
        for start in range(0, len(pdvs), 3):
            items = b"".join(struct.pack(">IBB", len(p) + 2, 1, control) + p for control, p in pdvs[start:start + 3])
            sock.sendall(struct.pack(">BBI", pdu.P_DATA_TF, 0, len(items)) + items)
        reply, _ = read_message(sock)
        assert pdu.command_us(reply, pdu.TAG_COMMAND_FIELD) == pdu.C_STORE_RSP
        assert pdu.command_us(reply, pdu.TAG_MESSAGE_ID_RESPONDED) == 42
        assert pdu.command_us(reply, pdu.TAG_STATUS) == 0
        sock.sendall(pdu.RELEASE_RQ)
        assert read_pdu(sock)[0] == pdu.A_RELEASE_RP
    assert listener.stored == [("1.2.3.99", dataset)]


@pytest.mark.parametrize("kind", [pdu.A_ASSOCIATE_RQ, pdu.A_RELEASE_RP, 0x0C])
def test_an_unexpected_pdu_during_the_association_is_answered_with_a_provider_abort(listener: Listener,
                                                                                   kind: int) -> None:
    with listener.associate() as sock:
        sock.sendall(struct.pack(">BBI", kind, 0, 4) + b"\x00" * 4)
        answer, body = read_pdu(sock)
        assert answer == pdu.A_ABORT
        assert pdu.parse_abort(body) == (2, 2)  # service provider, unexpected PDU (AA-8)
    assert echo_works(listener)


def test_the_acceptor_accepts_release_while_a_stream_of_stores_is_idle(listener: Listener) -> None:
    """A C-STORE, then release: the response is sent before the A-RELEASE-RP (DT-1, AR-4)."""
    with listener.associate() as sock:
        sock.sendall(b"".join(bytes(b) for b in pdu.message(1, store_command(5), b"\x00" * 100, 16384)))
        reply, _ = read_message(sock)
        assert pdu.command_us(reply, pdu.TAG_MESSAGE_ID_RESPONDED) == 5
        sock.sendall(pdu.RELEASE_RQ)
        assert read_pdu(sock)[0] == pdu.A_RELEASE_RP
    assert len(listener.stored) == 1


# --- the real requestor against a raw-PDU peer ------------------------------------------------


class RawPeer:
    """A one-thread acceptor speaking raw PDUs: ``script(conn, n)`` runs for the n-th connection."""

    def __init__(self, script: Callable[[socket.socket, int], Any], connections: int = 1) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.results: list[Any] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(script, connections), daemon=True)
        self._thread.start()

    def _run(self, script: Callable[[socket.socket, int], Any], connections: int) -> None:
        self.server.settimeout(10)
        try:
            for n in range(connections):
                conn, _ = self.server.accept()
                with conn:
                    conn.settimeout(10)
                    self.results.append(script(conn, n))
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.errors.append(exc)

    def finish(self) -> list[Any]:
        self._thread.join(timeout=30)
        self.server.close()
        assert not self._thread.is_alive(), "the peer's script did not finish"
        if self.errors:
            raise self.errors[0]
        return self.results


def accept(conn: socket.socket) -> None:
    kind, body = read_pdu(conn)
    assert kind == pdu.A_ASSOCIATE_RQ
    request = parse_associate_rq(body)
    results = [(c.context_id, 0, c.transfer_syntaxes[0]) for c in request.contexts]
    conn.sendall(encode_associate_ac(request, results, 16384, "1.2.3.4", "", []))


def closed_by_peer(conn: socket.socket) -> bool:
    """True once the requestor closes (recv gives b''), False if it sends anything first."""
    return conn.recv(65536) == b""


def requestor(peer: RawPeer) -> StoreRequestor:
    return StoreRequestor("127.0.0.1", peer.port, "PEER", "DICOMVAULT", timeout=10)


def test_the_requestor_closes_the_transport_after_the_release_rp() -> None:
    def script(conn: socket.socket, _n: int) -> tuple[bytes, bool]:
        accept(conn)
        command, dataset = read_message(conn)
        conn.sendall(store_rsp(pdu.command_us(command, pdu.TAG_MESSAGE_ID) or 0))
        kind, _ = read_pdu(conn)
        assert kind == pdu.A_RELEASE_RQ
        conn.sendall(pdu.RELEASE_RP)
        return dataset, closed_by_peer(conn)  # we never close first: the requestor must

    peer = RawPeer(script)
    scu = requestor(peer)
    assert scu.store(CT, "1.2.3.4", IMPLICIT, b"\x01\x02" * 10) == (0, "")
    scu.close()
    assert peer.finish() == [(b"\x01\x02" * 10, True)]


def test_the_requestor_answers_a_release_collision() -> None:
    def script(conn: socket.socket, _n: int) -> list[int]:
        accept(conn)
        seen = [read_pdu(conn)[0]]  # its A-RELEASE-RQ ...
        conn.sendall(pdu.RELEASE_RQ)  # ... crosses ours: collision
        seen.append(read_pdu(conn)[0])  # AR-9: it answers our request (Sta9 -> Sta11)
        conn.sendall(pdu.RELEASE_RP)  # we answer its request: AR-3, it closes
        assert closed_by_peer(conn)
        return seen

    peer = RawPeer(script)
    scu = requestor(peer)
    scu.prepare([(CT, IMPLICIT)])
    scu.close()
    assert peer.finish() == [[pdu.A_RELEASE_RQ, pdu.A_RELEASE_RP]]


def test_a_rejection_is_reported_and_nothing_is_sent_after_it() -> None:
    def script(conn: socket.socket, _n: int) -> bool:
        read_pdu(conn)
        conn.sendall(pdu.reject_pdu(1, 1, 3))
        return closed_by_peer(conn)  # AE-4: no A-RELEASE-RQ after a rejection

    peer = RawPeer(script)
    with pytest.raises(AssociationRejected, match=r"result 1, source 1, reason 3"):
        requestor(peer).store(CT, "1.2.3.4", IMPLICIT, b"\x00\x00")
    assert peer.finish() == [True]


def test_an_abort_awaiting_the_response_is_a_connection_error_after_one_retry() -> None:
    def script(conn: socket.socket, _n: int) -> bool:
        accept(conn)
        read_message(conn)
        conn.sendall(pdu.abort_pdu(source=0))
        return closed_by_peer(conn)  # AA-3: it closes, sends no release

    peer = RawPeer(script, connections=2)
    with pytest.raises(ConnectionError, match="aborted"):
        requestor(peer).store(CT, "1.2.3.4", IMPLICIT, b"\x00\x00")
    assert peer.finish() == [True, True]


def test_a_peer_closing_mid_response_is_retried_on_a_fresh_association() -> None:
    def script(conn: socket.socket, n: int) -> str:
        accept(conn)
        command, _ = read_message(conn)
        answer = store_rsp(pdu.command_us(command, pdu.TAG_MESSAGE_ID) or 0)
        if n == 0:
            conn.sendall(answer[:9])  # half a P-DATA-TF, then the connection drops
            return "dropped"
        conn.sendall(answer)
        read_pdu(conn)
        conn.sendall(pdu.RELEASE_RP)
        return "answered" if closed_by_peer(conn) else "left open"

    peer = RawPeer(script, connections=2)
    scu = requestor(peer)
    assert scu.store(CT, "1.2.3.4", IMPLICIT, b"\x00\x00") == (0, "")
    scu.close()
    assert peer.finish() == ["dropped", "answered"]


def test_a_peer_closing_mid_response_twice_raises() -> None:
    def script(conn: socket.socket, _n: int) -> None:
        accept(conn)
        read_message(conn)
        conn.sendall(store_rsp(1)[:9])

    peer = RawPeer(script, connections=2)
    with pytest.raises(ConnectionError, match="closed the connection"):
        requestor(peer).store(CT, "1.2.3.4", IMPLICIT, b"\x00\x00")
    peer.finish()


@pytest.mark.parametrize("reply", ["no status", "association accept"])
def test_a_broken_response_is_aborted_never_taken_for_success(reply: str) -> None:
    def script(conn: socket.socket, _n: int) -> tuple[int, int]:
        accept(conn)
        command, _ = read_message(conn)
        if reply == "no status":
            conn.sendall(store_rsp(pdu.command_us(command, pdu.TAG_MESSAGE_ID) or 0, status=None))
        else:  # a PDU the table does not allow in Sta6: AA-8
            conn.sendall(struct.pack(">BBI", pdu.A_ASSOCIATE_AC, 0, 4) + b"\x00" * 4)
        kind, body = read_pdu(conn)
        assert kind == pdu.A_ABORT
        assert closed_by_peer(conn)
        return pdu.parse_abort(body)

    # A missing Status is the peer's answer, only malformed: aborted, not sent again (the sender
    # records the instance as failed). A PDU out of place may be a stale association: one retry.
    attempts = 1 if reply == "no status" else 2
    peer = RawPeer(script, connections=attempts)
    with pytest.raises(MissingStatus if reply == "no status" else pdu.ProtocolError):
        requestor(peer).store(CT, "1.2.3.4", IMPLICIT, b"\x00\x00")
    assert peer.finish() == [(2, 2)] * attempts  # service-provider A-ABORT on each attempt


def test_a_peer_releasing_while_we_await_the_response_gets_its_release_rp() -> None:
    def script(conn: socket.socket, n: int) -> str:
        accept(conn)
        command, _ = read_message(conn)
        if n == 0:
            conn.sendall(pdu.RELEASE_RQ)  # Sta6 -> AR-2 on the requestor
            assert read_pdu(conn)[0] == pdu.A_RELEASE_RP  # AR-4
            return "released"  # we close first, as the acceptor of the release
        conn.sendall(store_rsp(pdu.command_us(command, pdu.TAG_MESSAGE_ID) or 0))
        read_pdu(conn)
        conn.sendall(pdu.RELEASE_RP)
        return "stored" if closed_by_peer(conn) else "left open"

    peer = RawPeer(script, connections=2)
    scu = requestor(peer)
    assert scu.store(CT, "1.2.3.4", IMPLICIT, b"\x00\x00") == (0, "")
    scu.close()
    assert peer.finish() == ["released", "stored"]


def test_the_requestor_reaches_the_real_acceptor_and_releases_cleanly(listener: Listener) -> None:
    scu = StoreRequestor("127.0.0.1", listener.port, "DICOMVAULT", "PROBE", timeout=10)
    assert scu.store(CT, "1.2.3.77", IMPLICIT, b"\x10\x00" * 3000) == (0, "")
    scu.close()
    # both sides followed the table: the acceptor waited in Sta13 and saw the requestor's close
    wait_until(lambda: listener.active() == 0, timeout=5, what="the association to end")
    assert listener.stored == [("1.2.3.77", b"\x10\x00" * 3000)]
