"""The DICOM listener: a lean asyncio Upper Layer acceptor for C-ECHO, C-STORE and N-ACTION.

Why not pynetdicom's server: each pynetdicom association runs two polling threads (1 ms
sleeps) that decode every PDU into Python objects and fight the ingest threads for the
GIL; measured with DCMTK storescu, that cost ~2 ms per instance, as much as archiving it.
Here one event loop reads PDUs straight into buffers, never decodes the dataset (it is
archived as received), and hands each complete instance to the ingest pipeline in a
worker thread. Association negotiation still uses pynetdicom's PDU classes, so the
parsing of A-ASSOCIATE items and presentation-context negotiation is the library's.

Protocol conformance kept: ARTIM/idle timeouts (network_timeout), A-ASSOCIATE-RJ for an
unknown calling AE (allow-list), a wrong application context or too many associations,
A-ABORT on protocol errors or PDVs on unaccepted contexts, A-RELEASE, one outstanding
operation at a time (no asynchronous operations window is negotiated).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dicomvault.config import DicomSettings

from . import pdu

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
MAX_PDU_RECEIVED = 4 * 1024 * 1024  # what we tell peers; larger PDUs are a protocol error
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

StoreHandler = Callable[["Association", str, str, str, bytes], tuple[int, str]]
ActionHandler = Callable[["Association", dict[int, bytes], bytes | None, str], tuple[int, str]]


@dataclass
class Association:
    calling_ae: str
    called_ae: str
    address: str
    port: int
    contexts: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (abstract, transfer syntax)


def _ae(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip()


class DicomListener:
    """Accepts associations on (bind, port) in a thread running its own event loop."""

    def __init__(self, settings: DicomSettings, on_store: StoreHandler, on_action: ActionHandler | None = None,
                 implementation_class_uid: str = "", implementation_version: str = "") -> None:
        self.settings = settings
        self.on_store = on_store
        self.on_action = on_action
        self.implementation_class_uid = implementation_class_uid
        self.implementation_version = implementation_version
        self._workers = ThreadPoolExecutor(max_workers=max(2, settings.max_associations), thread_name_prefix="dimse")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._active = 0

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Listen, or raise OSError (port in use...) in the caller's thread."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.settings.bind, self.settings.port, backlog=64)
                )
            except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
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
        log.info("DIMSE listening as %s on %s:%d", self.settings.ae_title, self.settings.bind, self.settings.port)

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        self._workers.shutdown(wait=True)
        self._loop = None

    # --- one association ----------------------------------------------------------------

    async def _read_pdu(self, reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
        header = await asyncio.wait_for(reader.readexactly(6), self.settings.network_timeout)
        kind, _reserved, length = struct.unpack(">BBI", header)
        if kind not in pdu.PDU_TYPES:
            raise pdu.ProtocolError(f"unknown PDU type 0x{kind:02X}")
        if length > MAX_PDU_RECEIVED + 6 and kind == pdu.P_DATA_TF:
            raise pdu.ProtocolError(f"PDU of {length} bytes exceeds the negotiated maximum {MAX_PDU_RECEIVED}")
        if length > 1 << 20 and kind != pdu.P_DATA_TF:
            raise pdu.ProtocolError(f"{length}-byte control PDU")
        body = await asyncio.wait_for(reader.readexactly(length), self.settings.network_timeout)
        return kind, header, body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no delayed-ACK stalls per response
        self._active += 1
        try:
            assoc = await self._negotiate(reader, writer, peer)
            if assoc is not None:
                await self._serve(assoc, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away; nothing half-stored (ingest is all-or-nothing)
        except asyncio.TimeoutError:
            log.warning("association from %s:%s timed out after %.0f s of silence; aborting", *peer[:2],
                        self.settings.network_timeout)
            writer.write(pdu.abort_pdu())
        except pdu.ProtocolError as exc:
            log.warning("aborting association from %s:%s: %s", *peer[:2], exc)
            writer.write(pdu.abort_pdu(reason=0x02))
        except asyncio.CancelledError:
            writer.write(pdu.abort_pdu())
            raise
        except Exception:  # noqa: BLE001 - one broken association must not affect the others
            log.exception("association from %s:%s failed", *peer[:2])
            writer.write(pdu.abort_pdu())
        finally:
            self._active -= 1
            try:
                await writer.drain()
            except Exception:  # noqa: BLE001
                pass
            writer.close()

    async def _negotiate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         peer: tuple[Any, ...]) -> Association | None:
        from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
        from pynetdicom.pdu_primitives import (
            A_ASSOCIATE,
            ImplementationClassUIDNotification,
            ImplementationVersionNameNotification,
            MaximumLengthNotification,
        )
        from pynetdicom.presentation import PresentationContext

        kind, header, body = await self._read_pdu(reader)
        if kind != pdu.A_ASSOCIATE_RQ:
            raise pdu.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{kind:02X}")
        request = A_ASSOCIATE_RQ()
        try:
            request.decode(header + body)
            primitive = request.to_primitive()
        except Exception as exc:  # noqa: BLE001 - malformed association request
            raise pdu.ProtocolError(f"malformed A-ASSOCIATE-RQ: {exc}") from exc
        calling, called = _ae(primitive.calling_ae_title), _ae(primitive.called_ae_title)
        if str(primitive.application_context_name) != APPLICATION_CONTEXT:
            log.warning("rejecting %s@%s: unsupported application context", calling, peer[0])
            writer.write(pdu.reject_pdu(1, 1, 2))
            return None
        allowed = self.settings.allowed_calling_aets
        if allowed and calling not in allowed:
            log.warning("rejecting association from %s@%s: calling AE title not in the allow-list", calling, peer[0])
            writer.write(pdu.reject_pdu(1, 1, 3))
            return None
        if self._active > self.settings.max_associations:
            log.warning("rejecting %s@%s: %d associations already", calling, peer[0], self._active - 1)
            writer.write(pdu.reject_pdu(2, 3, 2))
            return None

        results = []
        assoc = Association(calling, called, str(peer[0]), int(peer[1]) if len(peer) > 1 else 0)
        for proposed in primitive.presentation_context_definition_list:
            result = PresentationContext()
            result.context_id = proposed.context_id
            result.abstract_syntax = proposed.abstract_syntax
            abstract = str(proposed.abstract_syntax)
            syntaxes = [str(ts) for ts in proposed.transfer_syntax]
            supported = abstract == VERIFICATION or (abstract == STORAGE_COMMITMENT and self.on_action is not None) or (
                abstract != STORAGE_COMMITMENT and not abstract.startswith(_NOT_STORAGE_PREFIXES)
            )
            if supported and syntaxes:
                result.transfer_syntax = [syntaxes[0]]  # the sender's first choice: never transcode
                result.result = 0x00
                assoc.contexts[proposed.context_id] = (abstract, syntaxes[0])
            else:
                result.transfer_syntax = syntaxes[:1] or ["1.2.840.10008.1.2"]
                result.result = 0x03 if not supported else 0x04  # abstract / transfer syntax not supported
            results.append(result)

        accept = A_ASSOCIATE()
        accept.application_context_name = APPLICATION_CONTEXT
        accept.calling_ae_title = primitive.calling_ae_title
        accept.called_ae_title = primitive.called_ae_title
        accept.result = 0x00
        accept.result_source = 0x01
        accept.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = MAX_PDU_RECEIVED
        class_uid = ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = self.implementation_class_uid
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = self.implementation_version
        accept.user_information = [max_length, class_uid, version]
        answer = A_ASSOCIATE_AC()
        answer.from_primitive(accept)
        writer.write(answer.encode())
        return assoc

    async def _serve(self, assoc: Association, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        command_buffer = bytearray()
        data_buffer = bytearray()
        command: dict[int, bytes] | None = None
        command_context = 0
        while True:
            kind, _header, body = await self._read_pdu(reader)
            if kind == pdu.A_RELEASE_RQ:
                writer.write(pdu.RELEASE_RP)
                return
            if kind == pdu.A_ABORT:
                log.info("association from %s@%s aborted by the peer", assoc.calling_ae, assoc.address)
                return
            if kind != pdu.P_DATA_TF:
                raise pdu.ProtocolError(f"unexpected PDU type 0x{kind:02X} during the association")
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
                    if pdu.command_us(command, pdu.TAG_DATASET_TYPE) == pdu.NO_DATASET:
                        response = await self._dispatch(loop, assoc, command_context, command, None)
                        writer.write(response)
                        command = None
                else:  # data set fragment
                    if command is None or context_id != command_context:
                        raise pdu.ProtocolError("data set fragment without its command")
                    data_buffer += fragment
                    if not control & 0x02:
                        continue
                    dataset = bytes(data_buffer)
                    data_buffer.clear()
                    response = await self._dispatch(loop, assoc, command_context, command, dataset)
                    writer.write(response)
                    command = None

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
            reply = {pdu.TAG_AFFECTED_SOP_CLASS: pdu.uid_value(sop_class), pdu.TAG_COMMAND_FIELD: pdu.us(pdu.C_STORE_RSP),
                     pdu.TAG_MESSAGE_ID_RESPONDED: message_id, pdu.TAG_DATASET_TYPE: pdu.us(pdu.NO_DATASET),
                     pdu.TAG_STATUS: pdu.us(status), pdu.TAG_AFFECTED_SOP_INSTANCE: pdu.uid_value(sop_instance)}
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
