"""multipart/related (RFC 2387) for DICOMweb: framing for responses, a streaming reader for STOW-RS.

Why our own reader: STOW-RS bodies can be gigabytes of instances, and each one must go
through ingest (and be acknowledged durable) before the next is read, so we want one part in
memory at a time. None of our dependencies parses multipart/related that way: Starlette's
form parser needs the optional python-multipart package and only understands form-data; the
standard library's ``email`` parser wants the whole message in memory. The framing rules we
need are small (RFC 2046 5.1.1: boundary lines, header block, the close delimiter), so they
live here, with the limits that keep a hostile body from exhausting memory.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

MAX_HEADER_BYTES = 16 * 1024  # one part's header block
MAX_PREAMBLE_BYTES = 64 * 1024  # bytes tolerated before the first boundary
# RFC 2046 allows 70 characters, but Orthanc's DICOMweb plugin sends 73: be liberal up to a
# length no sender needs, refusing absurd ones (a boundary is searched for in every chunk).
MAX_BOUNDARY = 200
_BOUNDARY_CHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")


class MultipartError(ValueError):
    """The body is not well-formed multipart/related; the message says where it breaks."""


class BodyTooLarge(MultipartError):
    """The body exceeds the configured cap."""


def new_boundary() -> str:
    return uuid.uuid4().hex


def part_header(boundary: str, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    """The delimiter line and headers that open a part (the first one has no leading CRLF)."""
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def part_end() -> bytes:
    """Closes a part's body: the CRLF belongs to the next delimiter (RFC 2046)."""
    return b"\r\n"


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("latin-1")


def content_type(media_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    value = f'multipart/related; type="{media_type}"; boundary={boundary}'
    return value + (f"; transfer-syntax={transfer_syntax}" if transfer_syntax else "")


def valid_boundary(boundary: str) -> bool:
    raw = boundary.encode("latin-1", "replace")
    return 0 < len(raw) <= MAX_BOUNDARY and set(raw) <= _BOUNDARY_CHARS and not raw.endswith(b" ")


@dataclass
class Part:
    headers: dict[str, str]  # lower-case names
    body: bytes


class _Source:
    """Chunks from the request, counted against the cap."""

    def __init__(self, chunks: AsyncIterator[bytes], max_bytes: int) -> None:
        self.chunks = chunks.__aiter__()
        self.max_bytes = max_bytes
        self.total = 0
        self.done = False

    async def read_into(self, buf: bytearray) -> bool:
        """Append the next non-empty chunk to ``buf``; False at the end of the body."""
        while not self.done:
            try:
                chunk = await self.chunks.__anext__()
            except StopAsyncIteration:
                self.done = True
                return False
            if not chunk:
                continue
            self.total += len(chunk)
            if self.total > self.max_bytes:
                raise BodyTooLarge(f"the request body exceeds the limit of {self.max_bytes} bytes "
                                   "([dicomweb] max_request_bytes); send fewer instances per request")
            buf += chunk
            return True
        return False


async def read_parts(chunks: AsyncIterator[bytes], boundary: str, max_bytes: int) -> AsyncIterator[Part]:
    """Yield each part of a multipart body as soon as it is complete; raise MultipartError on bad framing.

    A part is only yielded once its closing delimiter has arrived, so a body cut short never
    yields a partial part. Bytes after the close delimiter (the epilogue) are ignored.
    """
    source = _Source(chunks, max_bytes)
    dash = b"--" + boundary.encode("latin-1")
    delimiter = b"\r\n" + dash
    buf = bytearray()

    # The preamble: the first boundary line may start the body or follow a CRLF.
    scan = 0
    while True:
        if buf[: len(dash)] == dash:
            pos = len(dash)
            break
        found = buf.find(delimiter, scan)
        if found >= 0:
            pos = found + len(delimiter)
            break
        if len(buf) > MAX_PREAMBLE_BYTES:
            raise MultipartError("no boundary line found where the body should start: "
                                 "is the boundary in Content-Type the one used in the body?")
        scan = max(0, len(buf) - len(delimiter) + 1)
        if not await source.read_into(buf):
            raise MultipartError("the body does not contain the boundary given in Content-Type")

    while True:
        # After a boundary: "--" closes the body; otherwise optional padding, then CRLF.
        while len(buf) < pos + 2:
            if not await source.read_into(buf):
                raise MultipartError("the body ends right after a boundary line, without the close delimiter")
        if buf[pos : pos + 2] == b"--":
            return
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end >= 0:
                break
            if len(buf) - pos > 1024:
                raise MultipartError("a boundary line is not followed by CRLF")
            if not await source.read_into(buf):
                raise MultipartError("the body ends inside a boundary line")
        if buf[pos:line_end].strip(b" \t"):
            raise MultipartError("unexpected bytes after a boundary line (a boundary string inside the data?)")
        pos = line_end + 2

        # The header block, ending with an empty line (it may be empty itself).
        while True:
            if buf[pos : pos + 2] == b"\r\n":
                header_end, body_start = pos, pos + 2
                break
            found = buf.find(b"\r\n\r\n", pos)
            if found >= 0:
                header_end, body_start = found, found + 4
                break
            if len(buf) - pos > MAX_HEADER_BYTES:
                raise MultipartError(f"a part's headers exceed {MAX_HEADER_BYTES} bytes")
            if not await source.read_into(buf):
                raise MultipartError("the body ends inside a part's headers")
        headers = _parse_headers(bytes(buf[pos:header_end]))
        del buf[:body_start]

        # The body, up to the next delimiter.
        scan = 0
        while True:
            found = buf.find(delimiter, scan)
            if found >= 0:
                break
            scan = max(0, len(buf) - len(delimiter) + 1)
            if not await source.read_into(buf):
                raise MultipartError("the body ends inside a part (no closing boundary): "
                                     "the request was cut short")
        body = bytes(buf[:found])
        del buf[: found + len(delimiter)]
        pos = 0
        yield Part(headers, body)


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not block:
        return headers
    for line in block.decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and headers:  # obsolete folding: continue the previous value
            last = next(reversed(headers))
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise MultipartError(f"malformed part header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers
