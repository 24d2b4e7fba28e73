"""The DICOM listener: a lean asyncio Upper Layer acceptor for C-ECHO, C-STORE, N-ACTION,
C-FIND, C-GET and C-MOVE.

Why not pynetdicom's server: each pynetdicom association runs two polling threads (1 ms
sleeps) that decode every PDU into Python objects and fight the ingest threads for the
GIL; measured with DCMTK storescu, that cost ~2 ms per instance, as much as archiving it.
Here one event loop reads PDUs straight into buffers, never decodes the dataset (it is
archived as received), and hands each complete instance to the ingest pipeline in a
worker thread. A-ASSOCIATE-RQ/AC go through ``associate.py`` (checked against pynetdicom's
decoder in the tests): pynetdicom's validating PDU objects cost 45+ ms per association
when a C-GET requestor proposes 120 contexts.

Every PDU and every local decision goes through the Upper Layer state machine (``fsm.py``)
as association-acceptor. Protocol conformance kept: ARTIM/idle timeouts (network_timeout),
A-ASSOCIATE-RJ for an unknown calling AE (allow-list), a wrong application context or too
many associations, A-ABORT on protocol errors or PDVs on unaccepted contexts, A-RELEASE
(after the A-RELEASE-RP or an A-ASSOCIATE-RJ the requestor closes first: Sta13, bounded by
ARTIM), one outstanding operation at a time (no asynchronous operations window is negotiated).

Query/retrieve requests run as an ``Operation`` in a worker thread that writes to the socket
itself. For C-FIND and C-MOVE the event loop keeps reading the association, which is how a
C-CANCEL reaches them; for C-GET the loop pauses and the operation's thread reads the
peer's C-STORE responses (and any C-CANCEL) itself. Instances go out as stored bytes
(never decoded), in PDUs sized to the peer's maximum.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomvault.access import NOT_AUTHORIZED  # the status of a refusal; the decision is the caller's hook
from dicomvault.config import DicomSettings

from . import pdu, spool, tls
from .associate import encode_associate_ac, parse_associate_rq
from .fsm import SENDS_ABORT, Action, Event, Machine, State

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
MAX_PDU_RECEIVED = 4 * 1024 * 1024  # what we tell peers; larger PDUs are a protocol error
ARTIM_SECONDS = 10.0  # after a rejection or a release, how long the requestor may take to close
# Services we do not provide: proposals of these are rejected (abstract syntax not
# supported) rather than mistaken for storage. Everything else is storage (including
# private SOP classes), like pynetdicom's unrestricted storage service.
_NOT_STORAGE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.2.",  # query/retrieve
    "1.2.840.10008.5.1.4.31",  # modality worklist
    "1.2.840.10008.5.1.4.32",  # unified worklist
    "1.2.840.10008.5.1.4.33",  # instance availability
    "1.2.840.10008.3.1.2.",  # MPPS, detached management
    "1.2.840.10008.5.1.1.",  # print management
    "1.2.840.10008.5.1.4.34",  # UPS
    "1.2.840.10008.5.1.4.1.1.200",  # hanging protocol / color palette Q/R share this root
)

# Query/retrieve information models we serve (PS3.4 C.6): Patient Root and Study Root.
QR_FIND = {"1.2.840.10008.5.1.4.1.2.1.1": "PATIENT", "1.2.840.10008.5.1.4.1.2.2.1": "STUDY"}
QR_MOVE = {"1.2.840.10008.5.1.4.1.2.1.2": "PATIENT", "1.2.840.10008.5.1.4.1.2.2.2": "STUDY"}
QR_GET = {"1.2.840.10008.5.1.4.1.2.1.3": "PATIENT", "1.2.840.10008.5.1.4.1.2.2.3": "STUDY"}
QR_MODELS = {**QR_FIND, **QR_MOVE, **QR_GET}
EXPLICIT_VR_LE, IMPLICIT_VR_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"

_UID_CHARACTERS = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def _is_uid(text: str) -> bool:
    """Digits and dots, at most 64 characters: a UID we can negotiate on and echo back (the
    stricter PS3.5 9.1 checks of stored UIDs are the DIMSE layer's)."""
    return len(text) <= 64 and text.isascii() and _UID_CHARACTERS.fullmatch(text) is not None


StoreHandler = Callable[["Association", str, str, str, bytes], tuple[int, str]]
ActionHandler = Callable[["Association", dict[int, bytes], bytes | None, str], tuple[int, str]]
QueryHandler = Callable[["Operation"], None]
# (kind, address, calling AE or "", reason) of a caller refused before any operation: a TLS
# handshake that failed ("tls") or a calling AE outside the allow-list ("associate").
RefusalHandler = Callable[[str, str, str, str], None]
# (association, permission) -> "" when allowed, else the refusal's reason (audited by the hook).
AuthorizeHandler = Callable[["Association", str], str]


@dataclass
class Association:
    calling_ae: str
    called_ae: str
    address: str
    port: int
    contexts: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (abstract, transfer syntax)
    peer_max_pdu: int = 16384  # the requestor's Maximum Length Received (0 = no limit)
    # SOP classes for which the requestor took the SCP role (SCP/SCU Role Selection): we may
    # send it C-STOREs on those contexts, which is how C-GET delivers.
    requestor_scp: set[str] = field(default_factory=set)
    # DIMSE over TLS ([dicom] tls_port): tls is True on the TLS listener; tls_subject is the
    # RFC 4514 subject of the client certificate, verified against [dicom] tls_ca_file ("" if
    # none was asked for). Per-peer rules match it against [peers.NAME] tls_subject.
    tls: bool = False
    tls_subject: str = ""
    _storage_cache: dict[str, dict[str, int]] = field(default_factory=dict)
    # Why this association's caller may not store ("" may; None: not asked yet). Fixed for the
    # association's life: its AE title, address and certificate do not change.
    store_refusal: str | None = None

    def storage_contexts(self, sop_class: str) -> dict[str, int]:
        """Transfer syntax -> context id on which we may send a C-STORE of ``sop_class``."""
        if sop_class not in self.requestor_scp:
            return {}
        found = self._storage_cache.get(sop_class)
        if found is None:
            found = {syntax: cid for cid, (abstract, syntax) in self.contexts.items() if abstract == sop_class}
            self._storage_cache[sop_class] = found
        return found


class OperationAbandoned(Exception):
    """The association ended (abort, release, network) while the operation was running."""


class Operation:
    """A C-FIND, C-GET or C-MOVE in progress, driven by a handler in a worker thread.

    The handler calls ``respond`` for each pending response and once for the final one, and
    (C-GET) ``store`` for each sub-operation; ``cancelled`` is set when a C-CANCEL arrives.
    """

    def __init__(self, writer: asyncio.StreamWriter, assoc: Association, context_id: int,
                 command: dict[int, bytes], identifier: bytes, timeout: float) -> None:
        self.assoc = assoc
        self.context_id = context_id
        self.command = command
        self.identifier = identifier
        self.kind = pdu.command_us(command, pdu.TAG_COMMAND_FIELD) or 0
        self.abstract_syntax, self.transfer_syntax = assoc.contexts[context_id]
        self.model = QR_MODELS.get(self.abstract_syntax, "STUDY")
        self.message_id = pdu.command_us(command, pdu.TAG_MESSAGE_ID) or 0
        self.move_destination = command.get(pdu.TAG_MOVE_DESTINATION, b"").decode("ascii", "replace").strip("\x00 ")
        self.cancelled = threading.Event()
        self.finished = False
        self._writer = writer
        self._timeout = timeout
        self._abandoned = threading.Event()
        self._sub_message_id = 0
        self._out: socket.socket | None = None
        # Under TLS the bytes on the socket are ciphertext owned by the event loop's SSL
        # transport: the operation's writes (and C-GET's reads) go through the loop instead.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.StreamReader | None = None
        self.task: asyncio.Task[None] | None = None
        # C-GET: the event loop stops reading while the operation runs and the operation's
        # thread reads the answers to its sub-operations itself (``_read_command``);
        # ``_handover`` holds bytes the loop had already buffered.
        self.reads_directly = self.kind == pdu.C_GET_RQ
        self._handover = b""

    def open_output(self) -> None:
        """Writes of the operation go straight from its thread to the socket (a duplicate of
        the connection's descriptor; the event loop writes nothing while it runs). Handing
        every message to the loop thread instead cost ~0.5 ms per sub-operation in thread
        switches, as much as the receiver's own work. Called once the transport's own write
        buffer is empty, so the byte order on the wire is kept. Under TLS (``through_loop``)
        there is no such shortcut."""
        if self._loop is not None:
            return
        raw = self._writer.get_extra_info("socket")
        out = socket.socket(fileno=os.dup(raw.fileno()))
        out.settimeout(self._timeout)  # the shared description stays non-blocking; waits use poll
        self._out = out

    def through_loop(self, loop: asyncio.AbstractEventLoop, reader: asyncio.StreamReader) -> None:
        """TLS: write (and, for C-GET, read) through the event loop's transport; each message
        then costs a thread switch, the price of encryption living in the loop."""
        self._loop, self._reader = loop, reader

    def _in_loop(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the event loop from the operation's thread, bounded in time."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout=self._timeout)
        except (OSError, EOFError, TimeoutError, asyncio.CancelledError, RuntimeError) as exc:
            future.cancel()
            self.abandon()
            raise OperationAbandoned(f"the TLS connection failed: {type(exc).__name__} {exc}") from exc

    async def _write_all(self, pdus: list[bytes | memoryview]) -> None:
        self._writer.writelines(pdus)
        await self._writer.drain()

    def close_output(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    # --- called from the event loop -----------------------------------------------------

    def cancel(self) -> None:
        self.cancelled.set()

    def abandon(self) -> None:
        self._abandoned.set()
        self.cancelled.set()

    # --- called from the handler's thread -----------------------------------------------

    def _send(self, pdus: list[bytes | memoryview]) -> None:
        if self._abandoned.is_set() or (self._out is None and self._loop is None):
            raise OperationAbandoned("the association has ended")
        if self._loop is not None:
            self._in_loop(self._write_all(pdus))
            return
        try:
            pdu.send_buffers(self._out, pdus)
        except OSError as exc:
            self.abandon()
            raise OperationAbandoned(f"cannot write to the peer: {exc}") from exc

    def respond(self, status: int, identifier: bytes | None = None, *, remaining: int | None = None,
                completed: int | None = None, failed: int | None = None, warning: int | None = None,
                comment: str = "") -> None:
        """A C-FIND/C-GET/C-MOVE response; pending (0xFF00/0xFF01) or final (anything else)."""
        response_field = {pdu.C_FIND_RQ: pdu.C_FIND_RSP, pdu.C_GET_RQ: pdu.C_GET_RSP,
                          pdu.C_MOVE_RQ: pdu.C_MOVE_RSP}[self.kind]
        elements = {
            pdu.TAG_AFFECTED_SOP_CLASS: pdu.uid_value(self.abstract_syntax),
            pdu.TAG_COMMAND_FIELD: pdu.us(response_field),
            pdu.TAG_MESSAGE_ID_RESPONDED: pdu.us(self.message_id),
            pdu.TAG_DATASET_TYPE: pdu.us(pdu.NO_DATASET if identifier is None else 0x0000),
            pdu.TAG_STATUS: pdu.us(status),
        }
        for tag, value in ((pdu.TAG_REMAINING, remaining), (pdu.TAG_COMPLETED, completed),
                           (pdu.TAG_FAILED, failed), (pdu.TAG_WARNING, warning)):
            if value is not None:
                elements[tag] = pdu.us(min(value, 0xFFFF))
        if comment:
            elements[pdu.TAG_ERROR_COMMENT] = pdu.text_value(comment[:64])
        if status not in (0xFF00, 0xFF01):
            self.finished = True
        self._send(pdu.message(self.context_id, pdu.encode_command(elements), identifier, self.assoc.peer_max_pdu))

    def store(self, context_id: int, sop_class: str, sop_instance: str, dataset: bytes) -> tuple[int | None, str]:
        """A C-GET sub-operation: C-STORE ``dataset`` (as stored) to the requestor on this
        association and read its response here (``_read_command``; the socket's timeout is
        the network timeout). Returns (status, Error Comment); status None when the response
        had no Status element (a protocol error, never a success: ``peers/status.py``)."""
        self._sub_message_id = self._sub_message_id % 0xFFFF + 1
        command = pdu.encode_command({
            pdu.TAG_AFFECTED_SOP_CLASS: pdu.uid_value(sop_class),
            pdu.TAG_COMMAND_FIELD: pdu.us(pdu.C_STORE_RQ),
            pdu.TAG_MESSAGE_ID: pdu.us(self._sub_message_id),
            pdu.TAG_PRIORITY: pdu.us(0),
            pdu.TAG_DATASET_TYPE: pdu.us(0x0000),
            pdu.TAG_AFFECTED_SOP_INSTANCE: pdu.uid_value(sop_instance),
        })
        self._send(pdu.message(context_id, command, dataset, self.assoc.peer_max_pdu))
        while True:
            reply = self._read_command()
            if pdu.command_us(reply, pdu.TAG_COMMAND_FIELD) != pdu.C_STORE_RSP:
                continue  # a C-CANCEL, already noted
            if pdu.command_us(reply, pdu.TAG_MESSAGE_ID_RESPONDED) != self._sub_message_id:
                continue  # a late answer to an earlier sub-operation
            status = pdu.command_us(reply, pdu.TAG_STATUS)  # None: no Status element
            return status, reply.get(pdu.TAG_ERROR_COMMENT, b"").decode("ascii", "replace").strip("\x00 ")

    # --- direct reads (C-GET): the operation's thread reads the peer's answers itself -------

    def _recv_exact(self, count: int) -> bytes:
        if self._reader is not None:
            return self._in_loop(self._reader.readexactly(count))  # type: ignore[no-any-return]
        assert self._out is not None
        chunks = []
        if self._handover:
            taken, self._handover = self._handover[:count], self._handover[count:]
            chunks.append(taken)
            count -= len(taken)
        while count:
            try:
                chunk = self._out.recv(min(count, 1 << 20))
            except OSError as exc:  # includes the socket timeout
                self.abandon()
                raise OperationAbandoned(f"reading the peer's answer failed: {exc}") from exc
            if not chunk:
                self.abandon()
                raise OperationAbandoned("the peer closed the connection")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def _read_command(self) -> dict[int, bytes]:
        """The next complete command the peer sends (C-STORE-RSP or C-CANCEL-RQ): read from
        the socket in this thread, so a sub-operation's answer needs no event-loop wake-up.
        A C-CANCEL sets ``cancelled``; anything else than commands ends the operation."""
        buffer = bytearray()
        while True:
            kind, _, length = struct.unpack(">BBI", self._recv_exact(6))
            if length > MAX_PDU_RECEIVED + 6:
                self.abandon()
                raise OperationAbandoned(f"{length}-byte PDU during a C-GET")
            body = self._recv_exact(length)
            if kind != pdu.P_DATA_TF:
                self.abandon()  # A-ABORT, or a release in the middle of our operation
                raise OperationAbandoned(f"the peer sent PDU type 0x{kind:02X} during a C-GET")
            for context_id, control, fragment in pdu.pdv_items(body):
                if context_id not in self.assoc.contexts or not control & 0x01:
                    self.abandon()
                    raise OperationAbandoned("unexpected data set or context during a C-GET")
                buffer += fragment
                if control & 0x02:
                    command = pdu.decode_command(bytes(buffer))
                    if pdu.command_us(command, pdu.TAG_COMMAND_FIELD) == pdu.C_CANCEL_RQ:
                        if pdu.command_us(command, pdu.TAG_MESSAGE_ID_RESPONDED) == self.message_id:
                            log.info("C-CANCEL from %s@%s for message %s", self.assoc.calling_ae,
                                     self.assoc.address, self.message_id)
                            self.cancel()
                    return command


class DicomListener:
    """Accepts associations on (bind, port) in a thread running its own event loop."""

    def __init__(self, settings: DicomSettings, on_store: StoreHandler, on_action: ActionHandler | None = None,
                 implementation_class_uid: str = "", implementation_version: str = "",
                 on_query: QueryHandler | None = None, spool_dir: Path | None = None,
                 on_refusal: RefusalHandler | None = None, authorize: AuthorizeHandler | None = None) -> None:
        self.settings = settings
        self.on_refusal = on_refusal
        # Asked once per association, when its first C-STORE command arrives, so the data set of
        # a caller that may not store is read and dropped rather than buffered or spooled.
        self.authorize = authorize
        # Data sets beyond [dicom] spool_threshold_bytes wait here, not in memory (None: never
        # spooled; memory is then bounded per association by max_instance_bytes only).
        self.spool_dir = spool_dir
        self.budget = spool.MemoryBudget(settings.max_buffered_bytes)
        self.on_store = on_store
        self.on_action = on_action
        self.on_query = on_query
        self.implementation_class_uid = implementation_class_uid
        self.implementation_version = implementation_version
        self._workers = ThreadPoolExecutor(max_workers=max(2, settings.max_associations), thread_name_prefix="dimse")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.AbstractServer] = []  # plain and TLS
        self._tls_context: ssl.SSLContext | None = None
        self._thread: threading.Thread | None = None
        self._active = 0  # negotiated associations: what max_associations limits
        # Connections that have not yet sent their A-ASSOCIATE-RQ, oldest first: they hold no
        # association slot, and past max_pending_connections the oldest is dropped.
        self._pending: dict[asyncio.StreamWriter, None] = {}
        self._dropped, self._dropped_logged = 0, 0.0  # dropped pending connections not yet logged

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Listen, or raise OSError (port in use...) in the caller's thread."""
        ready = threading.Event()
        failure: list[BaseException] = []

        settings = self.settings
        context = tls.server_context(settings) if settings.tls_port else None  # TlsSetupError: refuse now

        async def listen() -> None:
            if settings.port:
                self._servers.append(await asyncio.start_server(self._handle, settings.bind, settings.port,
                                                                backlog=64))
            if context is not None:
                self._tls_context = context
                self._servers.append(await asyncio.start_server(self._handle_tls, settings.bind, settings.tls_port,
                                                                backlog=64))

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(listen())
            except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
                for server in self._servers:
                    server.close()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="dicom-listener", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        if settings.port:
            log.info("DIMSE listening as %s on %s:%d", settings.ae_title, settings.bind, settings.port)
        if settings.tls_port:
            log.info("DIMSE over TLS listening as %s on %s:%d (client certificates %s)", settings.ae_title,
                     settings.bind, settings.tls_port,
                     f"required, CA {settings.tls_ca_file}" if settings.tls_ca_file else "not asked")

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        self._workers.shutdown(wait=True)
        self._loop = None

    # --- one association ----------------------------------------------------------------

    async def _read_pdu(self, reader: asyncio.StreamReader,
                        busy: Callable[[], bool] | None = None) -> tuple[int, bytes, bytes]:
        """The next PDU. While ``busy()`` (an operation of ours is running) the peer's silence
        is expected, it waits for our responses, so it is not an idle timeout."""
        while True:
            try:
                # Cancelling readexactly while it waits consumes nothing, so retrying is safe.
                # (asyncio.timeout, not wait_for: no extra task per read, twice per PDU.)
                async with asyncio.timeout(self.settings.network_timeout):
                    header = await reader.readexactly(6)
                break
            except asyncio.TimeoutError:
                if busy is None or not busy():
                    raise
        kind, _reserved, length = struct.unpack(">BBI", header)
        if kind not in pdu.PDU_TYPES:
            raise pdu.ProtocolError(f"unknown PDU type 0x{kind:02X}")
        if length > MAX_PDU_RECEIVED + 6 and kind == pdu.P_DATA_TF:
            raise pdu.ProtocolError(f"PDU of {length} bytes exceeds the negotiated maximum {MAX_PDU_RECEIVED}")
        if length > 1 << 20 and kind != pdu.P_DATA_TF:
            raise pdu.ProtocolError(f"{length}-byte control PDU")
        async with asyncio.timeout(self.settings.network_timeout):
            body = await reader.readexactly(length)
        return kind, header, body

    async def _handle_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The TLS port: the handshake first (bounded by ARTIM), here rather than inside
        asyncio's server so that a refused one (plain TCP, no or an untrusted client
        certificate, TLS < 1.2) is logged with the address and why; then as on the plain port."""
        peer = writer.get_extra_info("peername") or ("?", 0)
        assert self._tls_context is not None
        self._add_pending(writer, peer)  # a stalled handshake holds no slot and counts as pending
        try:
            await writer.start_tls(self._tls_context, ssl_handshake_timeout=self._artim())
        except (OSError, asyncio.TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            self._pending.pop(writer, None)
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            log.warning("TLS connection from %s:%s refused: %s", *peer[:2], reason)
            self._report_refusal("tls", str(peer[0]), "", f"TLS handshake failed: {reason}")
            writer.close()  # after the TLS alert, if any, has been sent
            return
        await self._handle(reader, writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no delayed-ACK stalls per response
        machine = Machine(requestor=False)
        machine.fire(Event.EVT5)  # AE-5: Sta2, the first read's timeout is the ARTIM timer
        if writer not in self._pending:  # (the TLS port added it before its handshake)
            self._add_pending(writer, peer)
        negotiated = False
        try:
            assoc = await self._negotiate(reader, writer, peer, machine)
            if assoc is not None:
                negotiated = True
                self._active += 1
                await self._serve(assoc, reader, writer, machine)
        except (asyncio.IncompleteReadError, ConnectionError):
            if machine.allows(Event.EVT17):  # the peer went away; nothing half-stored (all-or-nothing)
                machine.fire(Event.EVT17)
        except asyncio.TimeoutError:
            if machine.state is State.STA2:  # Evt18, AA-2: no A-ASSOCIATE-RQ in time, just close
                log.warning("connection from %s:%s sent no association request in %.1f s; closing", *peer[:2],
                            self._artim())
                machine.fire(Event.EVT18)
            else:
                log.warning("association from %s:%s timed out after %.0f s of silence; aborting", *peer[:2],
                            self.settings.network_timeout)
                self._abort(writer, machine, Event.EVT15)
        except pdu.ProtocolError as exc:
            log.warning("aborting association from %s:%s: %s", *peer[:2], exc)
            if machine.state is State.STA13:  # the table already chose AA-8 (an unexpected PDU)
                writer.write(pdu.abort_pdu(reason=0x02))
            else:  # the PDU's content is invalid: Evt19
                self._abort(writer, machine, Event.EVT19, reason=0x02)
        except asyncio.CancelledError:  # stop(): not re-raised, this is the connection's root task
            # and Python 3.11's start_server logs a traceback for a cancelled one
            self._abort(writer, machine, Event.EVT15)
        except Exception:  # noqa: BLE001 - one broken association must not affect the others
            log.exception("association from %s:%s failed", *peer[:2])
            self._abort(writer, machine, Event.EVT15)
        finally:
            self._pending.pop(writer, None)
            if negotiated:
                self._active -= 1
            try:
                await writer.drain()
            except Exception:  # noqa: BLE001
                pass
            writer.close()

    def _report_refusal(self, kind: str, address: str, calling: str, reason: str) -> None:
        """Hand a refused connection to ``on_refusal`` (it audits) in a worker thread: the
        audit row is a catalog write, which must not stall the event loop."""
        if self.on_refusal is not None and self._loop is not None:
            self._loop.run_in_executor(self._workers, self.on_refusal, kind, address, calling, reason)

    def _artim(self) -> float:
        """How long a new connection may take to send its A-ASSOCIATE-RQ (the ARTIM timer in
        Sta2): short, so idle or stalled connections cannot pile up."""
        return min(self.settings.artim_timeout, self.settings.network_timeout)

    def _add_pending(self, writer: asyncio.StreamWriter, peer: tuple[Any, ...]) -> None:
        """Track a connection until its association request arrives; past the cap the oldest
        waiting one is dropped (it had the longest to speak), so a flood of idle connections
        cannot lock a real sender out. Logged at most every 10 s, so a flood cannot fill the log."""
        while len(self._pending) >= self.settings.max_pending_connections:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            oldest.transport.abort()
            self._dropped += 1
        now = time.monotonic()
        if self._dropped and now - self._dropped_logged >= 10.0:
            log.warning("dropped %d connection(s) that had sent no association request: more than %d waiting "
                        "(newest from %s)", self._dropped, self.settings.max_pending_connections, peer[0])
            self._dropped, self._dropped_logged = 0, now
        self._pending[writer] = None

    @staticmethod
    def _abort(writer: asyncio.StreamWriter, machine: Machine, event: Event, reason: int = 0) -> None:
        """Send an A-ABORT if the table says so for ``event`` (AA-1, AA-7, AA-8). The caller
        then closes without waiting in Sta13: after an abort nothing the peer says matters."""
        if machine.allows(event) and machine.fire(event) in SENDS_ABORT:
            writer.write(pdu.abort_pdu(reason=reason))

    async def _await_close(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           machine: Machine) -> None:
        """Sta13 (after AE-8 or AR-4): let the requestor close first, bounded by the ARTIM
        timer. Closing at once can reach the requestor as a connection reset before it has
        read our last PDU (seen with pynetdicom on a loaded host: it reported a broken
        connection instead of "Calling AE Title Not Recognized")."""
        try:
            await writer.drain()
            async with asyncio.timeout(min(ARTIM_SECONDS, self.settings.network_timeout)):
                while await reader.read(65536):
                    pass  # PDUs in Sta13 are ignored (AA-6) until the peer closes
            machine.fire(Event.EVT17)  # AR-5
        except TimeoutError:
            machine.fire(Event.EVT18)  # AA-2: the caller's finally closes the transport
        except ConnectionError:
            machine.fire(Event.EVT17)

    async def _reject(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, machine: Machine,
                      rejection: bytes) -> None:
        """Send an A-ASSOCIATE-RJ (Evt8, AE-8) and let the requestor close first (Sta13)."""
        machine.fire(Event.EVT8)
        writer.write(rejection)
        await self._await_close(reader, writer, machine)

    async def _negotiate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         peer: tuple[Any, ...], machine: Machine) -> Association | None:
        async with asyncio.timeout(self._artim()):  # the whole request, not each read
            kind, _header, body = await self._read_pdu(reader)
        action = machine.pdu(kind)
        if action is Action.AA_2:  # an A-ABORT before any request: close
            return None
        if action is not Action.AE_6:  # AA-1: anything else than an A-ASSOCIATE-RQ
            raise pdu.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{kind:02X}")
        request = parse_associate_rq(body)
        calling, called = request.calling_ae, request.called_ae
        if request.application_context != APPLICATION_CONTEXT:
            log.warning("rejecting %s@%s: unsupported application context", calling, peer[0])
            await self._reject(reader, writer, machine, pdu.reject_pdu(1, 1, 2))
            return None
        allowed = self.settings.allowed_calling_aets
        if allowed and calling not in allowed:
            log.warning("rejecting association from %s@%s: calling AE title not in the allow-list", calling, peer[0])
            self._report_refusal("associate", str(peer[0]), calling,
                                 "calling AE title not in [dicom] allowed_calling_aets")
            await self._reject(reader, writer, machine, pdu.reject_pdu(1, 1, 3))
            return None
        if self._active >= self.settings.max_associations:
            log.warning("rejecting %s@%s: %d associations already", calling, peer[0], self._active)
            await self._reject(reader, writer, machine, pdu.reject_pdu(2, 3, 2))
            return None

        assoc = Association(calling, called, str(peer[0]), int(peer[1]) if len(peer) > 1 else 0)
        assoc.peer_max_pdu = request.max_pdu
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            assoc.tls, assoc.tls_subject = True, tls.peer_subject(ssl_object)
            log.info("TLS association from %s@%s (%s, client certificate %s)", calling, peer[0],
                     ssl_object.version(), assoc.tls_subject or "none asked")
        roles: list[tuple[str, bool, bool]] = []
        if self.on_query is not None:
            # Accept the roles as proposed: a C-GET requestor offering to be the storage SCP
            # is how its retrieved instances reach it.
            for sop_class, (scu, scp) in request.roles.items():
                if not _is_uid(sop_class):
                    continue  # not echoed back (found by the fuzz test: it could not be encoded)
                roles.append((sop_class, scu, scp))
                if scp:
                    assoc.requestor_scp.add(sop_class)
        results: list[tuple[int, int, str]] = []
        for proposed in request.contexts:
            abstract, syntaxes = proposed.abstract_syntax, proposed.transfer_syntaxes
            if abstract in QR_MODELS and self.on_query is not None:
                # Identifiers are small and decoded: any uncompressed little-endian syntax.
                chosen = next((ts for ts in (EXPLICIT_VR_LE, IMPLICIT_VR_LE) if ts in syntaxes), None)
                if chosen:
                    assoc.contexts[proposed.context_id] = (abstract, chosen)
                results.append((proposed.context_id, 0x00 if chosen else 0x04, chosen or IMPLICIT_VR_LE))
                continue
            supported = abstract == VERIFICATION or (abstract == STORAGE_COMMITMENT and self.on_action is not None) or (
                abstract != STORAGE_COMMITMENT and not abstract.startswith(_NOT_STORAGE_PREFIXES)
            )
            supported = supported and _is_uid(abstract)
            syntaxes = [ts for ts in syntaxes if _is_uid(ts)]  # a garbled one is never "the sender's choice"
            if supported and syntaxes:
                assoc.contexts[proposed.context_id] = (abstract, syntaxes[0])  # the sender's first choice
                results.append((proposed.context_id, 0x00, syntaxes[0]))
            else:  # abstract syntax / transfer syntaxes not supported
                results.append((proposed.context_id, 0x03 if not supported else 0x04, IMPLICIT_VR_LE))
        machine.fire(Event.EVT7)  # AE-7: Sta6
        # Only now does it stop being pending: a rejected one waiting in Sta13 still counts.
        self._pending.pop(writer, None)
        writer.write(encode_associate_ac(request, results, MAX_PDU_RECEIVED, self.implementation_class_uid,
                                         self.implementation_version, roles))
        return assoc

    async def _serve(self, assoc: Association, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     machine: Machine) -> None:
        loop = asyncio.get_running_loop()
        fire = machine.fire
        command_buffer = bytearray()
        incoming: spool.InstanceBuffer | None = None  # the data set being received
        command: dict[int, bytes] | None = None
        command_context = 0
        running: list[Operation] = []  # the query/retrieve operation in progress, if any
        try:
            while True:
                kind, _header, body = await self._read_pdu(reader, busy=lambda: bool(running))
                action = machine.pdu(kind)
                if action is not Action.DT_2:
                    if action is Action.AR_2:  # A-RELEASE-RQ: Sta8, we agree at once (AR-4)
                        for operation in running:
                            operation.abandon()
                        fire(Event.EVT14)
                        writer.write(pdu.RELEASE_RP)
                        await self._await_close(reader, writer, machine)
                        return
                    if action is Action.AA_3:
                        log.info("association from %s@%s aborted by the peer", assoc.calling_ae, assoc.address)
                        return
                    raise pdu.ProtocolError(f"unexpected PDU type 0x{kind:02X} during the association")  # AA-8
                for context_id, control, fragment in pdu.pdv_items(body):
                    if context_id not in assoc.contexts:
                        raise pdu.ProtocolError(f"PDV on presentation context {context_id}, which was not accepted")
                    if control & 0x01:  # command fragment
                        if command is not None:
                            raise pdu.ProtocolError("a new command arrived before the previous one's data set")
                        command_buffer += fragment
                        if not control & 0x02:
                            continue
                        command = pdu.decode_command(bytes(command_buffer))
                        command_buffer.clear()
                        command_context = context_id
                        if (self.authorize is not None and assoc.store_refusal is None
                                and pdu.command_us(command, pdu.TAG_COMMAND_FIELD) == pdu.C_STORE_RQ):
                            # In a worker: the decision may resolve a host name and write an audit row.
                            assoc.store_refusal = await loop.run_in_executor(self._workers, self.authorize, assoc,
                                                                             "store")
                        if pdu.command_us(command, pdu.TAG_DATASET_TYPE) == pdu.NO_DATASET:
                            response = await self._no_dataset(loop, assoc, command_context, command, running)
                            if response:
                                fire(Event.EVT9)  # DT-1
                                writer.write(response)
                            command = None
                    else:  # data set fragment
                        if command is None or context_id != command_context:
                            raise pdu.ProtocolError("data set fragment without its command")
                        field_ = pdu.command_us(command, pdu.TAG_COMMAND_FIELD)
                        if incoming is None:
                            incoming = spool.InstanceBuffer(self.spool_dir, self.settings.spool_threshold_bytes,
                                                            self.settings.max_instance_bytes)
                            if field_ == pdu.C_STORE_RQ and assoc.store_refusal:
                                incoming.refuse()  # not allowed to store: read to its end, keep nothing
                        await self._keep(incoming, fragment, refusable=field_ == pdu.C_STORE_RQ)
                        if not control & 0x02:
                            continue
                        received, incoming = incoming, None
                        if received.refused:  # every fragment read and dropped: answer, keep the association
                            if field_ == pdu.C_STORE_RQ and assoc.store_refusal:
                                status, comment = NOT_AUTHORIZED, assoc.store_refusal
                            else:
                                log.warning("C-STORE from %s@%s refused: %d-byte data set over max_instance_bytes",
                                            assoc.calling_ae, assoc.address, received.size)
                                status = 0xA700  # out of resources
                                limit = self.settings.max_instance_bytes
                                comment = f"instance larger than max_instance_bytes ({limit})"
                            fire(Event.EVT9)  # DT-1
                            writer.write(self._store_refusal(command_context, command, status, comment))
                            command = None
                            continue
                        # Ingest holds the instance whole in memory: a spooled one reserves it now
                        # (waiting here is the backpressure: this association stops reading).
                        reserved = received.held
                        if received.spooled:
                            try:
                                await self.budget.reserve(received.size)
                            except BaseException:
                                received.close()
                                raise
                            reserved = received.size
                        dataset = received.finish()
                        try:
                            if field_ in (pdu.C_FIND_RQ, pdu.C_GET_RQ, pdu.C_MOVE_RQ) and self.on_query is not None:
                                operation = self._start_operation(loop, reader, writer, assoc, command_context,
                                                                  command, bytes(dataset), running)
                                if operation.reads_directly and assoc.tls and operation.task is not None:
                                    await operation.task  # it reads the stream itself (through the loop) meanwhile
                            else:
                                if any(not op.finished for op in running):
                                    raise pdu.ProtocolError("a request arrived while a query/retrieve was in progress")
                                response = await self._dispatch(loop, assoc, command_context, command, dataset)
                                fire(Event.EVT9)  # DT-1
                                writer.write(response)
                        finally:
                            spool.release(dataset)
                            self.budget.release(reserved)
                        command = None
        finally:
            for operation in running:
                operation.abandon()
            if incoming is not None:  # aborted mid data set: nothing of it is kept
                self.budget.release(incoming.held)
                incoming.close()

    async def _keep(self, incoming: spool.InstanceBuffer, fragment: bytes, refusable: bool) -> None:
        """Add a data set fragment within the bounds: past max_instance_bytes a C-STORE's data
        set is refused (the rest is read and dropped; anything else is a protocol error);
        past the spool threshold, or when memory is short, it moves to a spool file; else it
        stays in memory, reserved in the shared budget (waiting for it is the backpressure)."""
        size = len(fragment)
        if incoming.refused:
            incoming.discard(fragment)
            return
        if incoming.over_limit(size):
            if not refusable:
                raise pdu.ProtocolError(f"a data set over max_instance_bytes ({self.settings.max_instance_bytes})")
            self.budget.release(incoming.refuse())
            incoming.discard(fragment)
            return
        if not incoming.spooled and incoming.can_spool and (
            incoming.held + size > incoming.spool_threshold or (incoming.held and not self.budget.available(size))
        ):
            self.budget.release(await asyncio.to_thread(incoming.spill))
        if not incoming.spooled:
            if incoming.held and not incoming.can_spool:
                self.budget.take(size)  # it can neither spool nor wait holding memory: bounded per association
            else:
                await self.budget.reserve(size)
            incoming.append(fragment)
        else:  # a file write may block on a busy disk: not on the event loop
            await asyncio.to_thread(incoming.append, fragment)

    @staticmethod
    def _store_refusal(context_id: int, command: dict[int, bytes], status: int, comment: str) -> bytes:
        """The C-STORE-RSP refusing a data set that was read and dropped: too large (0xA700)
        or from a caller that may not store (0124H)."""
        reply = {pdu.TAG_AFFECTED_SOP_CLASS: command.get(pdu.TAG_AFFECTED_SOP_CLASS, b""),
                 pdu.TAG_COMMAND_FIELD: pdu.us(pdu.C_STORE_RSP),
                 pdu.TAG_MESSAGE_ID_RESPONDED: command.get(pdu.TAG_MESSAGE_ID, b"\x00\x00")[:2],
                 pdu.TAG_DATASET_TYPE: pdu.us(pdu.NO_DATASET), pdu.TAG_STATUS: pdu.us(status),
                 pdu.TAG_AFFECTED_SOP_INSTANCE: command.get(pdu.TAG_AFFECTED_SOP_INSTANCE, b""),
                 pdu.TAG_ERROR_COMMENT: pdu.text_value(comment[:64])}
        return pdu.p_data(context_id, 0x03, pdu.encode_command(reply))

    def _start_operation(self, loop: asyncio.AbstractEventLoop, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, assoc: Association, context_id: int,
                         command: dict[int, bytes], identifier: bytes, running: list[Operation]) -> Operation:
        # An operation counts as running until its final response is on its way (its thread
        # may still be writing the audit row): a peer may send the next request at once.
        running[:] = [op for op in running if not op.finished]
        if running:
            raise pdu.ProtocolError("a second query/retrieve arrived before the first one finished")
        if assoc.contexts[context_id][0] not in QR_MODELS:
            raise pdu.ProtocolError("a query/retrieve request on a context of another SOP class")
        operation = Operation(writer, assoc, context_id, command, identifier, self.settings.network_timeout)
        if assoc.tls:
            operation.through_loop(loop, reader)
        running.append(operation)

        def run() -> None:
            assert self.on_query is not None
            try:
                operation.open_output()
                self.on_query(operation)
            except OperationAbandoned as exc:
                log.info("query/retrieve from %s@%s stopped: %s", assoc.calling_ae, assoc.address, exc)
            except Exception as exc:  # noqa: BLE001 - answer with a failure, keep the association
                log.exception("query/retrieve from %s@%s failed", assoc.calling_ae, assoc.address)
                if not operation.finished:
                    try:
                        operation.respond(0xC000, comment=f"internal error: {type(exc).__name__}")
                    except OperationAbandoned:
                        pass
            finally:
                operation.close_output()

        async def start() -> None:
            # Everything written before the request must be on the wire before the operation's
            # own writes begin: wait for the transport's buffer to be empty. (Not under TLS: its
            # writes go through the same transport, in order; and an SSL transport pauses at
            # high=0 even when empty, so drain would never return.)
            if not assoc.tls:
                writer.transport.set_write_buffer_limits(high=0)
                try:
                    await writer.drain()
                finally:
                    writer.transport.set_write_buffer_limits()
            if operation.reads_directly and not assoc.tls:
                writer.transport.pause_reading()
                buffered = getattr(reader, "_buffer", None)  # what the StreamReader already holds
                if buffered:
                    operation._handover = bytes(buffered)
                    buffered.clear()
            try:
                await loop.run_in_executor(self._workers, run)
            finally:
                if operation.reads_directly and not assoc.tls and not writer.is_closing():
                    writer.transport.resume_reading()

        task = operation.task = loop.create_task(start())  # a strong reference while it runs
        task.add_done_callback(lambda _t: running.remove(operation) if operation in running else None)
        return operation

    async def _no_dataset(self, loop: asyncio.AbstractEventLoop, assoc: Association, context_id: int,
                          command: dict[int, bytes], running: list[Operation]) -> bytes | None:
        """Commands without a data set: C-CANCEL and C-STORE responses (to a running
        operation), else a request answered at once."""
        field_ = pdu.command_us(command, pdu.TAG_COMMAND_FIELD)
        if field_ == pdu.C_CANCEL_RQ:
            target = pdu.command_us(command, pdu.TAG_MESSAGE_ID_RESPONDED)
            for operation in running:
                if operation.message_id == target:
                    log.info("C-CANCEL from %s@%s for message %s", assoc.calling_ae, assoc.address, target)
                    operation.cancel()
            return None  # a cancel of something already finished is simply ignored (PS3.7 9.3.2.3)
        if field_ == pdu.C_STORE_RSP:  # a running C-GET reads its answers itself (the loop is paused)
            raise pdu.ProtocolError("a C-STORE response with no C-GET in progress")
        if any(not op.finished for op in running):
            raise pdu.ProtocolError("a request arrived while a query/retrieve was in progress")
        return await self._dispatch(loop, assoc, context_id, command, None)

    async def _dispatch(self, loop: asyncio.AbstractEventLoop, assoc: Association, context_id: int,
                        command: dict[int, bytes], dataset: bytes | None) -> bytes:
        field_ = pdu.command_us(command, pdu.TAG_COMMAND_FIELD)
        message_id = command.get(pdu.TAG_MESSAGE_ID, b"\x00\x00")[:2]
        abstract, transfer_syntax = assoc.contexts[context_id]
        if field_ == pdu.C_ECHO_RQ:
            reply = {pdu.TAG_AFFECTED_SOP_CLASS: pdu.uid_value(abstract), pdu.TAG_COMMAND_FIELD: pdu.us(pdu.C_ECHO_RSP),
                     pdu.TAG_MESSAGE_ID_RESPONDED: message_id, pdu.TAG_DATASET_TYPE: pdu.us(pdu.NO_DATASET),
                     pdu.TAG_STATUS: pdu.us(0x0000)}
            return pdu.p_data(context_id, 0x03, pdu.encode_command(reply))
        if field_ == pdu.C_STORE_RQ and dataset is not None:
            sop_class = pdu.command_uid(command, pdu.TAG_AFFECTED_SOP_CLASS) or abstract
            sop_instance = pdu.command_uid(command, pdu.TAG_AFFECTED_SOP_INSTANCE)
            status, comment = await loop.run_in_executor(
                self._workers, self.on_store, assoc, sop_class, sop_instance, transfer_syntax, dataset
            )
            # The response echoes the request's UIDs as they came (a malformed one, refused by
            # on_store, cannot be re-encoded as text: the answer must still go out).
            reply = {pdu.TAG_AFFECTED_SOP_CLASS: command.get(pdu.TAG_AFFECTED_SOP_CLASS) or pdu.uid_value(abstract),
                     pdu.TAG_COMMAND_FIELD: pdu.us(pdu.C_STORE_RSP),
                     pdu.TAG_MESSAGE_ID_RESPONDED: message_id, pdu.TAG_DATASET_TYPE: pdu.us(pdu.NO_DATASET),
                     pdu.TAG_STATUS: pdu.us(status),
                     pdu.TAG_AFFECTED_SOP_INSTANCE: command.get(pdu.TAG_AFFECTED_SOP_INSTANCE, b"")}
            if comment:
                reply[pdu.TAG_ERROR_COMMENT] = pdu.text_value(comment[:64])
            return pdu.p_data(context_id, 0x03, pdu.encode_command(reply))
        if field_ == pdu.N_ACTION_RQ and self.on_action is not None:
            status, comment = await loop.run_in_executor(
                self._workers, self.on_action, assoc, command, dataset, transfer_syntax
            )
            reply = {pdu.TAG_AFFECTED_SOP_CLASS: command.get(pdu.TAG_REQUESTED_SOP_CLASS, pdu.uid_value(abstract)),
                     pdu.TAG_COMMAND_FIELD: pdu.us(pdu.N_ACTION_RSP), pdu.TAG_MESSAGE_ID_RESPONDED: message_id,
                     pdu.TAG_DATASET_TYPE: pdu.us(pdu.NO_DATASET), pdu.TAG_STATUS: pdu.us(status),
                     pdu.TAG_AFFECTED_SOP_INSTANCE: command.get(pdu.TAG_REQUESTED_SOP_INSTANCE, b"")}
            if pdu.TAG_ACTION_TYPE in command:
                reply[pdu.TAG_ACTION_TYPE] = command[pdu.TAG_ACTION_TYPE]
            if comment:
                reply[pdu.TAG_ERROR_COMMENT] = pdu.text_value(comment[:64])
            return pdu.p_data(context_id, 0x03, pdu.encode_command(reply))
        raise pdu.ProtocolError(f"unsupported DIMSE command 0x{(field_ or 0):04X}")
