"""A lean C-STORE requestor: sends datasets exactly as stored, over one kept-open association.

pynetdicom's ``send_c_store`` wants a pydicom Dataset (decoding costs CPU and can change
bytes) and never sets TCP_NODELAY. This sends the stored dataset bytes unchanged, in PDVs
sized to the peer's maximum PDU length, with Nagle off. Negotiation uses our own small
A-ASSOCIATE codec (``associate.py``), like the acceptor, and every PDU goes through the
Upper Layer state machine (``fsm.py``) as association-requestor. Blocking sockets: each
sender thread (replication worker, restore association, C-MOVE) owns one.
"""

from __future__ import annotations

import socket
import ssl

from . import pdu
from .associate import encode_associate_rq, parse_associate_ac
from .fsm import SENDS_ABORT, Action, Event, Machine, State

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
ARTIM_SECONDS = 10.0  # after our A-RELEASE-RP, how long the acceptor may take to close
MAX_CONTEXTS = 126  # odd context ids 1..255, with room to spare
CONTEXT_RESULTS = {  # PS3.8 9.3.3.2, A-ASSOCIATE-AC presentation context result/reason
    1: "rejected by the receiver (user rejection)",
    2: "rejected by the receiver (no reason given)",
    3: "SOP class not supported by the receiver (abstract syntax not supported)",
    4: "transfer syntax not supported by the receiver",
}


class MissingStatus(pdu.ProtocolError):
    """A C-STORE-RSP without its mandatory Status (PS3.7 9.3.1.2): the association is aborted
    and the instance is not taken as stored; it is not resent (the peer answered, badly)."""


class TlsFailed(ConnectionError):
    """The TLS handshake failed (untrusted or mismatched certificate, no common protocol):
    the peer is unreachable for us, like a refused connection."""


class AssociationRejected(Exception):
    """The peer refused the association or the presentation context we need."""


class StoreRequestor:
    def __init__(self, host: str, port: int, called_ae: str, calling_ae: str, timeout: float = 30.0,
                 implementation_class_uid: str = "", implementation_version: str = "",
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.ssl_context = ssl_context  # DIMSE over TLS (net/tls.py client_context); None: plain TCP
        self.called_ae, self.calling_ae = called_ae, calling_ae
        self.timeout = timeout
        self.implementation_class_uid = implementation_class_uid
        self.implementation_version = implementation_version
        self._sock: socket.socket | None = None
        self._wanted: list[tuple[str, str]] = []  # (abstract, transfer syntax) proposed
        self._accepted: dict[tuple[str, str], int] = {}
        self._refused: dict[tuple[str, str], int] = {}  # pair -> presentation context result
        self._peer_max = 16384
        self._message_id = 0
        self._machine = Machine(requestor=True)

    # --- the Upper Layer (fsm.py): every PDU in or out goes through the state machine -----

    def _drop(self) -> None:
        """Close the transport at once (AE-4, AR-3, AA-2, AA-3, AA-4): back to Sta1."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._machine = Machine(requestor=True)

    def _abort(self, event: Event) -> None:
        """A local abort (Evt15) or an invalid PDU (Evt19): fire it, then ``_aborted``."""
        self._aborted(self._machine.fire(event) if self._machine.allows(event) else None)

    def _aborted(self, action: Action | None) -> None:
        """Send the A-ABORT the table chose (AA-1: service user; AA-7, AA-8: service provider,
        unexpected PDU), then close without waiting in Sta13: nothing the peer says matters."""
        if action in SENDS_ABORT and self._sock is not None:
            try:
                self._sock.sendall(pdu.abort_pdu(*((0, 0) if action is Action.AA_1 else (2, 2))))
            except OSError:
                pass
        self._drop()

    def _recv_exact(self, count: int) -> bytes:
        assert self._sock is not None
        chunks = []
        while count:
            chunk = self._sock.recv(min(count, 1 << 20))
            if not chunk:
                raise ConnectionError(f"{self.called_ae}@{self.host}:{self.port} closed the connection")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def _read_pdu(self) -> tuple[Action, int, bytes]:
        """The next PDU, fired through the state machine: (action, PDU type, body). A closed
        connection is Evt17, a timeout or another socket error a local abort (Evt15)."""
        try:
            kind, length = pdu.parse_header(self._recv_exact(6))
            body = self._recv_exact(length)
        except ConnectionError:
            self._machine.fire(Event.EVT17)
            self._drop()
            raise
        except OSError:
            self._abort(Event.EVT15)
            raise
        return self._machine.pdu(kind), kind, body

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError:
            self._drop()  # the transport is gone (Evt17)
            raise

    def _await_close(self) -> None:
        """Sta13 after our A-RELEASE-RP: the acceptor closes first, we wait for it at most
        ARTIM, ignoring whatever it still sends (AA-6), then close (AR-5 or AA-2)."""
        assert self._sock is not None
        try:
            self._sock.settimeout(min(ARTIM_SECONDS, self.timeout))
            while self._sock.recv(65536):
                pass
        except OSError:
            pass
        self._drop()

    def _associate(self) -> None:
        self.close()
        self._drop()  # Sta1 even if an earlier attempt failed half-way
        where = f"{self.called_ae}@{self.host}:{self.port}"
        self._machine.fire(Event.EVT1)  # AE-1: connect
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError:
            self._machine.fire(Event.EVT17)  # AA-4
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            try:  # the handshake, bounded by the socket's timeout; the host name is checked
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
            except OSError as exc:
                sock.close()
                self._machine.fire(Event.EVT17)  # AA-4: the transport is gone
                raise TlsFailed(f"TLS with {where} failed: {getattr(exc, 'reason', None) or exc}") from exc
        self._sock = sock
        self._machine.fire(Event.EVT2)  # AE-2: send the A-ASSOCIATE-RQ
        contexts = [(2 * i + 1, abstract, [syntax]) for i, (abstract, syntax) in enumerate(self._wanted)]
        self._send(encode_associate_rq(self.called_ae, self.calling_ae, APPLICATION_CONTEXT, contexts, 1 << 20,
                                       self.implementation_class_uid, self.implementation_version))
        action, kind, body = self._read_pdu()
        if action is Action.AE_4:
            self._drop()
            try:
                result, source, reason = pdu.parse_reject(body)
            except pdu.ProtocolError:
                raise AssociationRejected(f"{where} rejected the association (short A-ASSOCIATE-RJ)") from None
            raise AssociationRejected(f"{where} rejected the association (result {result}, source {source}, "
                                      f"reason {reason}): check its AE title and that it knows our AE title")
        if action is Action.AA_3:
            self._drop()
            raise AssociationRejected(f"{where} aborted the association during negotiation")
        if action is not Action.AE_3:  # AA-8: any other PDU while awaiting the answer
            self._aborted(action)
            raise AssociationRejected(f"{where} answered PDU type 0x{kind:02X}")
        try:
            answer = parse_associate_ac(body)
        except pdu.ProtocolError:
            self._abort(Event.EVT19)
            raise
        self._accepted, self._refused = {}, {}
        by_id = {2 * i + 1: pair for i, pair in enumerate(self._wanted)}
        for context_id, (result, _syntax) in answer.results.items():
            if context_id not in by_id:
                continue
            if result == 0:
                self._accepted[by_id[context_id]] = context_id
            else:
                self._refused[by_id[context_id]] = result
        self._peer_max = answer.max_pdu  # 0: no limit

    def _context_for(self, abstract: str, syntax: str) -> int:
        pair = (abstract, syntax)
        if self._sock is not None and pair in self._accepted:
            return self._accepted[pair]
        if pair not in self._wanted:
            self._wanted.append(pair)
            del self._wanted[:-MAX_CONTEXTS]
        self._associate()
        if pair not in self._accepted:
            raise AssociationRejected(f"{self.called_ae} does not accept {abstract} in transfer syntax {syntax}")
        return self._accepted[pair]

    def prepare(self, pairs: list[tuple[str, str]]) -> None:
        """Propose every (SOP class, transfer syntax) in ``pairs`` on one fresh association, so
        a whole retrieval runs on it; ``accepts`` then says what the peer took."""
        wanted = list(dict.fromkeys(pairs))[:MAX_CONTEXTS]
        if self._sock is not None and all(pair in self._accepted for pair in wanted):
            return
        self._wanted = wanted
        self._associate()

    def accepts(self, sop_class: str, syntax: str) -> bool:
        return self._sock is not None and (sop_class, syntax) in self._accepted

    def refusal(self, sop_class: str, syntax: str) -> str | None:
        """Why the peer refused this proposed pair at negotiation (None: accepted or not proposed)."""
        result = self._refused.get((sop_class, syntax))
        if result is None:
            return None
        return CONTEXT_RESULTS.get(result, f"presentation context result {result}")

    def close(self) -> None:
        """Release the association (AR-1) and close the transport once the A-RELEASE-RP is
        in (AR-3): the requestor closes first (PS3.8 Sta13 is the acceptor's side)."""
        if self._sock is None:
            return
        if self._machine.state is not State.STA6:
            self._drop()
            return
        try:
            self._machine.fire(Event.EVT11)
            self._send(pdu.RELEASE_RQ)
            while True:
                action, _kind, _body = self._read_pdu()
                if action is Action.AR_6:  # P-DATA still arriving in Sta7: nothing waits for it
                    continue
                if action is Action.AR_8:  # release collision; as requestor: Sta9
                    self._machine.fire(Event.EVT14)  # AR-9: send A-RELEASE-RP, Sta11
                    self._send(pdu.RELEASE_RP)
                    continue  # Sta11: the peer's A-RELEASE-RP ends it (AR-3)
                if action in SENDS_ABORT:  # AA-8
                    self._aborted(action)
                break  # AR-3 (released) or AA-3 (aborted): close below
        except (OSError, pdu.ProtocolError):
            pass
        finally:
            self._drop()

    # --- C-STORE ------------------------------------------------------------------------

    def store(self, sop_class: str, sop_instance: str, syntax: str, dataset: bytes,
              originator: tuple[str, int] | None = None) -> tuple[int, str]:
        """Send one dataset as-is; returns (DIMSE status, Error Comment). ``originator`` is the
        C-MOVE requestor's (AE title, message id) when this is a move sub-operation."""
        try:
            return self._store(sop_class, sop_instance, syntax, dataset, originator)
        except MissingStatus:
            raise
        except (OSError, ConnectionError, pdu.ProtocolError):
            self.close()  # a stale kept-open association: one fresh try
            return self._store(sop_class, sop_instance, syntax, dataset, originator)

    def _store(self, sop_class: str, sop_instance: str, syntax: str, dataset: bytes,
               originator: tuple[str, int] | None) -> tuple[int, str]:
        context = self._context_for(sop_class, syntax)
        assert self._sock is not None
        self._message_id = self._message_id % 65535 + 1
        elements = {
            pdu.TAG_AFFECTED_SOP_CLASS: pdu.uid_value(sop_class),
            pdu.TAG_COMMAND_FIELD: pdu.us(pdu.C_STORE_RQ),
            pdu.TAG_MESSAGE_ID: pdu.us(self._message_id),
            pdu.TAG_PRIORITY: pdu.us(0),  # medium
            pdu.TAG_DATASET_TYPE: pdu.us(0x0000),
            pdu.TAG_AFFECTED_SOP_INSTANCE: pdu.uid_value(sop_instance),
        }
        if originator is not None:
            elements[pdu.TAG_MOVE_ORIGINATOR_AE] = pdu.text_value(originator[0])
            elements[pdu.TAG_MOVE_ORIGINATOR_ID] = pdu.us(originator[1])
        command = pdu.encode_command(elements)
        self._machine.fire(Event.EVT9)  # DT-1
        try:
            pdu.send_buffers(self._sock, pdu.message(context, command, dataset, self._peer_max))
        except OSError:
            self._drop()
            raise
        buffer = bytearray()
        while True:
            action, kind, body = self._read_pdu()
            if action is Action.AA_3:
                self._drop()
                raise ConnectionError(f"{self.called_ae} aborted the association")
            if action is Action.AR_2:  # the peer releases while we await our answer: agree (AR-4)
                self._machine.fire(Event.EVT14)
                self._send(pdu.RELEASE_RP)
                self._await_close()
                raise ConnectionError(f"{self.called_ae} released the association awaiting a C-STORE-RSP")
            if action is not Action.DT_2:  # AA-8
                self._aborted(action)
                raise pdu.ProtocolError(f"unexpected PDU type 0x{kind:02X} awaiting C-STORE-RSP")
            try:
                reply = self._response(body, buffer)
            except pdu.ProtocolError:
                self._abort(Event.EVT19)
                raise
            if reply is not None:
                return reply

    @staticmethod
    def _response(body: bytes, buffer: bytearray) -> tuple[int, str] | None:
        """Add one P-DATA-TF to ``buffer``; (status, comment) once a C-STORE-RSP is complete."""
        complete = False
        for _ctx, control, piece in pdu.pdv_items(body):
            if control & 0x01:
                buffer += piece
                complete = complete or bool(control & 0x02)
        if not complete:
            return None
        reply = pdu.decode_command(bytes(buffer))
        buffer.clear()
        if pdu.command_us(reply, pdu.TAG_COMMAND_FIELD) != pdu.C_STORE_RSP:
            return None
        status = pdu.command_us(reply, pdu.TAG_STATUS)
        if status is None:  # Status is mandatory (PS3.7 9.3.1.2): never take its absence for success
            raise MissingStatus("C-STORE-RSP without a Status")
        comment = reply.get(pdu.TAG_ERROR_COMMENT, b"").decode("ascii", "replace").strip("\x00 ")
        return status, comment
