"""What one HTTP client may hold: time to send its request, and the size of its body.

uvicorn bounds neither the time a client takes to send its request headers (its keep-alive
timeout only runs between requests, and any byte received cancels it), nor a body that
stalls while the application waits for it: a client that opens connections and trickles
bytes, or declares a 2 GB body and sends nothing, held its connection for as long as it
liked. Two guards, one per layer, both bounded by ``[http] request_timeout``:

- ``GuardedH11Protocol`` (the connection): from the moment a request's first byte could
  arrive until its headers are complete, at most ``request_timeout`` in total, however
  slowly bytes trickle in (a slowloris client included); then 408 and the connection closes.
  The same bound applies to a body nobody reads any more (the response went out before the
  body ended: a refusal), which uvicorn would otherwise keep draining for ever.
- ``RequestLimits`` (ASGI middleware): while the application waits for more body, at most
  ``request_timeout`` between chunks (an upload that moves is never cut, however long it
  takes); then 408, and the application sees the client as gone. A declared Content-Length
  above the route's limit is refused at once (413), and a chunked body is counted.

The protocol subclasses uvicorn's h11 implementation (``http=`` takes a class), so ``serve``
always speaks HTTP/1.1 through h11, whether or not httptools is installed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _raw_response(status: int, phrase: str, reason: str) -> bytes:
    body = (reason + "\n").encode()
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers (and on a drained body)."""

    request_timeout = 30.0  # set per server by ``guarded_protocol``

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting_on_client(self) -> bool:
        """True while the client owes us bytes nobody else is timing: a request's headers, or a
        body after the response went out. A body the application reads is timed by RequestLimits."""
        theirs, ours = self.conn.their_state, self.conn.our_state
        return theirs is h11.IDLE or (theirs is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE))

    def _watch(self) -> None:
        if self.transport is None or self.transport.is_closing() or not self._waiting_on_client():
            self._disarm()
        elif self._deadline is None:  # a total bound for this phase: later bytes do not extend it
            self._deadline = self.loop.call_later(self.request_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or not self._waiting_on_client():
            return
        client = "%s:%d" % self.client if self.client else "a client"
        if self.conn.their_state is h11.IDLE:
            reason = f"request headers not received within {self.request_timeout:g} s ([http] request_timeout)"
            if self.conn.trailing_data[0]:  # part of a request came: say why it gets no answer
                self.transport.write(_raw_response(408, "Request Timeout", reason))
            else:  # idle: no 408 a client could take for the answer to a request it is sending now
                reason = f"no request within {self.request_timeout:g} s ([http] request_timeout)"
        else:
            reason = f"request body still arriving {self.request_timeout:g} s after the response"
        log.info("HTTP %s: %s; connection closed", client, reason)
        self.transport.close()


def guarded_protocol(request_timeout: float) -> type[GuardedH11Protocol]:
    """The protocol class for one server, with its timeout (uvicorn instantiates it per connection)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"request_timeout": request_timeout})


class RequestLimits:
    """ASGI middleware: body stalls answered 408, bodies over the route's limit answered 413.

    ``limit_for(path)`` gives the largest body a route takes, or None when the route checks
    its own (STOW-RS counts against ``[dicomweb] max_request_bytes`` after authenticating, so
    its refusal is audited). Once this middleware has answered, the application's receive
    says the client is gone and whatever it sends is dropped; an exception it raises while
    unwinding (Starlette's ``ClientDisconnect`` from ``request.json()``) is not logged as an error.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], request_timeout: float,
                 limit_for: Callable[[str], int | None]) -> None:
        self.app = app
        self.request_timeout = request_timeout
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if limit is not None and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            await _refuse(send, 413, f"the request body ({declared[:40].decode()} bytes) exceeds the limit of {limit} "
                                     "bytes ([http] max_body_bytes)")
            return
        state = {"answered": False, "started": False, "body_done": False, "received": 0}

        async def guarded_receive() -> Message:
            if state["answered"]:
                return {"type": "http.disconnect"}
            if state["body_done"]:  # e.g. a streaming response listening for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.request_timeout)
            except TimeoutError:
                return await answer(408, f"the request body stalled: nothing received for {self.request_timeout:g} s "
                                         "([http] request_timeout)")
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                state["body_done"] = not message.get("more_body", False)
                if limit is not None and state["received"] > limit:
                    return await answer(413, f"the request body exceeds the limit of {limit} bytes "
                                             "([http] max_body_bytes)")
            return message

        async def answer(status: int, reason: str) -> Message:
            client = scope.get("client")
            log.info("HTTP %s %s from %s: %d %s", scope["method"], scope["path"],
                     "%s:%d" % tuple(client) if client else "a client", status, reason)
            if not state["started"]:
                await _refuse(send, status, reason)
            state["answered"] = True
            return {"type": "http.disconnect"}

        async def guarded_send(message: Message) -> None:
            if state["answered"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception as exc:  # noqa: BLE001 - after our answer, the application's unwinding is not an error
            if not state["answered"]:
                raise
            log.debug("HTTP %s %s: the application stopped after the client was answered: %r",
                      scope["method"], scope["path"], exc)


async def _refuse(send: Send, status: int, reason: str) -> None:
    """A plain-text refusal that closes the connection (the rest of the body is not wanted)."""
    body = (reason + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
