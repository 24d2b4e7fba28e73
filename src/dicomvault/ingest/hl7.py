"""The HL7 v2 MLLP listener in `serve` (``[hl7] port``): ADT messages in, ACKs out.

MLLP framing and HL7 parsing are python-hl7's (``hl7.mllp``, ``hl7.parse``); what a message
does to the catalog is ``ingest/adt.py``. One asyncio loop on its own thread accepts the
connections (optionally TLS through ``net/tls.py``, client certificates required when
``tls_ca_file`` is set); each message is handled on a worker thread, in order per connection,
and answered before the next one is read (original-mode acknowledgement):

- AA: applied, or nothing to apply (an event not handled, a patient not held, a duplicate);
- AR: the sending facility is not allowed (audited ``access-denied``, at most once a minute per
  sender and address), or a message larger than ``max_message_bytes`` (then the connection
  closes: its framing is lost);
- AE: malformed, or a message that cannot be applied; the reason is in MSA-3.

Nothing is changed by a message that is not answered AA. A connection that sends nothing for
``idle_timeout`` seconds is closed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from hl7.mllp import InvalidBlockError, start_hl7_server

from dicomvault.config import ConfigError, Hl7Settings
from dicomvault.ingest.adt import AdtError, AdtProcessor, Answer, Envelope, parse

log = logging.getLogger(__name__)

_SEPARATORS = str.maketrans({c: " " for c in "|^~\\&\r\n"})


def _text(reason: str) -> str:
    """A reason for a bare ACK's MSA-3: no delimiter characters, at most 80 characters (ST)."""
    return reason.translate(_SEPARATORS)[:80]


def bare_ack(code: str, reason: str) -> bytes:
    """An ACK for bytes that are not a readable message (there is no MSH to answer from)."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return f"MSH|^~\\&|DICOMVAULT||||{stamp}||ACK|{int(time.time() * 1000)}|P|2.5\rMSA|{code}||{_text(reason)}" \
        .encode("utf-8")


def ack_for(message: Any, answer: Answer) -> bytes:
    ack = message.create_ack(answer.code)
    ack.segment("MSA").assign_field(ack.escape(answer.text.replace("\r", " ").replace("\n", " ")[:200]), 3)
    return str(ack).encode("utf-8")


class Hl7Listener:
    def __init__(self, settings: Hl7Settings, catalog: Any) -> None:
        if settings.port and not settings.allowed_facilities:
            raise ConfigError("[hl7] port is set but allowed_facilities is empty: the listener is closed by default; "
                              "list the sending facilities (MSH-4) or \"APP@FACILITY\" values the ADT feed uses")
        self.settings = settings
        self.processor = AdtProcessor(catalog, settings.allowed_facilities)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._writers: set[Any] = set()  # open connections, closed at stop

    @property
    def enabled(self) -> bool:
        return bool(self.settings.port)

    def start(self) -> None:
        """Listen, or raise OSError (port in use) / ConfigError (TLS files) before returning."""
        if not self.enabled:
            return
        context = None
        if self.settings.tls_cert_file:
            from dicomvault.net import tls

            context = tls.server_context(self.settings, "[hl7]")
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(context, ready), name="hl7-listener", daemon=True)
        self._thread.start()
        ready.result()

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self, context: Any, ready: Future[None]) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve(context, ready))
        except BaseException as exc:  # noqa: BLE001 - reported to start() when it happened there
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.exception("HL7 listener stopped")
        finally:
            self._loop.close()

    async def _serve(self, context: Any, ready: Future[None]) -> None:
        self._stopped = asyncio.Event()
        server = await start_hl7_server(self._client, self.settings.bind, self.settings.port, ssl=context,
                                        limit=self.settings.max_message_bytes, encoding="utf-8")
        ready.set_result(None)
        log.info("HL7 MLLP listening on %s:%d%s", self.settings.bind, self.settings.port, " (TLS)" if context else "")
        try:
            await self._stopped.wait()
        finally:
            server.close()
            for writer in list(self._writers):  # a connection waiting for its next message
                writer.close()
            await server.wait_closed()

    async def _client(self, reader: Any, writer: Any) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        address = str(peer[0])
        self._writers.add(writer)
        try:
            while True:
                try:
                    block = await asyncio.wait_for(reader.readblock(), self.settings.idle_timeout)
                except asyncio.TimeoutError:
                    log.info("HL7 connection from %s idle for %.0f s: closed", address, self.settings.idle_timeout)
                    return
                except asyncio.IncompleteReadError:
                    return  # the sender closed the connection
                except ValueError:  # past the limit: the rest of this block cannot be told from the next
                    log.warning("HL7 message from %s larger than %d bytes refused", address,
                                self.settings.max_message_bytes)
                    writer.writeblock(bare_ack("AR", f"message larger than {self.settings.max_message_bytes} bytes"))
                    await writer.drain()
                    return
                except InvalidBlockError:
                    log.warning("HL7 block from %s without the MLLP start byte refused", address)
                    writer.writeblock(bare_ack("AE", "malformed: not an MLLP block (no start byte 0x0B)"))
                    await writer.drain()
                    continue
                writer.writeblock(await asyncio.to_thread(self.handle, block, address))
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.info("HL7 connection from %s ended: %s", address, exc)
        finally:
            self._writers.discard(writer)
            writer.close()

    def handle(self, raw: bytes, address: str) -> bytes:
        """One message's ACK; the catalog changes (or not) before it is returned."""
        try:
            message = parse(raw)
        except AdtError as exc:
            log.warning("HL7 message from %s refused: %s", address, exc)
            return bare_ack(exc.code, str(exc))
        try:
            envelope = Envelope.of(message, address)
            if not self.processor.allowed_sender(envelope):
                answer = self.processor.refuse(envelope)
            else:
                answer = self.processor.apply(message, envelope)
        except AdtError as exc:
            log.warning("HL7 message from %s not applied: %s", address, exc)
            answer = Answer(exc.code, str(exc))
        except Exception as exc:  # noqa: BLE001 - the sender must get an answer; it may retry
            log.exception("HL7 message from %s failed", address)
            answer = Answer("AE", f"internal error: {type(exc).__name__}")
        try:
            return ack_for(message, answer)
        except Exception:  # noqa: BLE001 - an MSH too broken to answer from
            return bare_ack(answer.code, answer.text)
