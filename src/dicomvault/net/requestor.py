"""A lean C-STORE requestor: sends datasets exactly as stored, over one kept-open association.

pynetdicom's ``send_c_store`` wants a pydicom Dataset (decoding costs CPU and can change
bytes) and never sets TCP_NODELAY. This sends the stored dataset bytes unchanged, in PDVs
sized to the peer's maximum PDU length, with Nagle off. Negotiation uses our own small
A-ASSOCIATE codec (``associate.py``), like the acceptor. Blocking sockets: each sender
thread (replication worker, restore association, C-MOVE) owns one.
"""

from __future__ import annotations

import socket
import struct

from . import pdu
from .associate import encode_associate_rq, parse_associate_ac

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
MAX_CONTEXTS = 126  # odd context ids 1..255, with room to spare
CONTEXT_RESULTS = {  # PS3.8 9.3.3.2, A-ASSOCIATE-AC presentation context result/reason
    1: "rejected by the receiver (user rejection)",
    2: "rejected by the receiver (no reason given)",
    3: "SOP class not supported by the receiver (abstract syntax not supported)",
    4: "transfer syntax not supported by the receiver",
}


class AssociationRejected(Exception):
    """The peer refused the association or the presentation context we need."""


class StoreRequestor:
    def __init__(self, host: str, port: int, called_ae: str, calling_ae: str, timeout: float = 30.0,
                 implementation_class_uid: str = "", implementation_version: str = "") -> None:
        self.host, self.port = host, port
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

    # --- association --------------------------------------------------------------------

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

    def _read_pdu(self) -> tuple[int, bytes, bytes]:
        header = self._recv_exact(6)
        kind, _, length = struct.unpack(">BBI", header)
        return kind, header, self._recv_exact(length)

    def _associate(self) -> None:
        self.close()
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        contexts = [(2 * i + 1, abstract, [syntax]) for i, (abstract, syntax) in enumerate(self._wanted)]
        sock.sendall(encode_associate_rq(self.called_ae, self.calling_ae, APPLICATION_CONTEXT, contexts, 1 << 20,
                                         self.implementation_class_uid, self.implementation_version))
        kind, _header, body = self._read_pdu()
        if kind == pdu.A_ASSOCIATE_RJ:
            self.close()
            raise AssociationRejected(f"{self.called_ae}@{self.host}:{self.port} rejected the association "
                                      f"(result {body[1]}, source {body[2]}, reason {body[3]}): check its AE title "
                                      "and that it knows our AE title")
        if kind != pdu.A_ASSOCIATE_AC:
            self.close()
            raise AssociationRejected(f"{self.called_ae}@{self.host}:{self.port} answered PDU type 0x{kind:02X}")
        answer = parse_associate_ac(body)
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
        if self._sock is None:
            return
        try:
            self._sock.sendall(struct.pack(">BBIxxxx", pdu.A_RELEASE_RQ, 0, 4))
            self._read_pdu()
        except OSError:
            pass
        finally:
            self._sock.close()
            self._sock = None

    # --- C-STORE ------------------------------------------------------------------------

    def store(self, sop_class: str, sop_instance: str, syntax: str, dataset: bytes,
              originator: tuple[str, int] | None = None) -> tuple[int | None, str]:
        """Send one dataset as-is; returns (DIMSE status, Error Comment). ``originator`` is the
        C-MOVE requestor's (AE title, message id) when this is a move sub-operation. The status
        is None when the response had no Status element: a protocol error, never a success
        (``peers/status.py`` judges every status)."""
        try:
            return self._store(sop_class, sop_instance, syntax, dataset, originator)
        except (OSError, ConnectionError, pdu.ProtocolError):
            self.close()  # a stale kept-open association: one fresh try
            return self._store(sop_class, sop_instance, syntax, dataset, originator)

    def _store(self, sop_class: str, sop_instance: str, syntax: str, dataset: bytes,
               originator: tuple[str, int] | None) -> tuple[int | None, str]:
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
        pdu.send_buffers(self._sock, pdu.message(context, command, dataset, self._peer_max))
        buffer = bytearray()
        while True:
            kind, _header, body = self._read_pdu()
            if kind == pdu.A_ABORT:
                self.close()
                raise ConnectionError(f"{self.called_ae} aborted the association")
            if kind != pdu.P_DATA_TF:
                raise pdu.ProtocolError(f"unexpected PDU type 0x{kind:02X} awaiting C-STORE-RSP")
            complete = False
            for _ctx, control, piece in pdu.pdv_items(body):
                if control & 0x01:
                    buffer += piece
                    complete = complete or bool(control & 0x02)
            if not complete:
                continue
            reply = pdu.decode_command(bytes(buffer))
            buffer.clear()
            if pdu.command_us(reply, pdu.TAG_COMMAND_FIELD) == pdu.C_STORE_RSP:
                status = pdu.command_us(reply, pdu.TAG_STATUS)  # None: no Status element
                comment = reply.get(pdu.TAG_ERROR_COMMENT, b"").decode("ascii", "replace").strip("\x00 ")
                return status, comment
