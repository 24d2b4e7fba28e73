"""RFC 5424 syslog messages, sent over TLS (RFC 5425) or UDP (RFC 5426).

Written here rather than taken from a library: Python's ``logging.handlers.SysLogHandler``
speaks neither RFC 5424 nor TLS, and the RFC 5424 handlers on PyPI are logging handlers,
which swallow send errors (``Handler.handleError``) and so cannot tell the forwarder whether
a message left. The export advances its place in the log only after a delivery, so a send
must either succeed or raise. The framing itself is one header line and a length prefix.

"Delivered" over TLS means the server's TCP stack acknowledged every byte: after the write,
the socket's send queue (``TIOCOUTQ``) is waited down to zero, and a connection the server
reset meanwhile raises. Syslog over TLS has no application-level acknowledgement, so this is
as far as a sender can know; a batch that fails is sent again whole (at-least-once; the
``meta sequenceId`` is the audit row id, for a receiver that wants to drop duplicates).
"""

from __future__ import annotations

import errno
import fcntl
import select
import socket
import ssl
import struct
import termios
import time
from datetime import datetime, timezone

FACILITY = 10  # security/authorization (authpriv), as IHE ATNA asks
NOTICE, WARNING = 5, 4
MSGID = "IHE+RFC-3881"  # IHE ITI-20: the MSG is a DICOM / RFC 3881 audit message
BOM = b"\xef\xbb\xbf"


def message(body: bytes, *, ts: float, hostname: str, app_name: str, procid: str, sequence: int,
            severity: int = NOTICE, msgid: str = MSGID, facility: int = FACILITY) -> bytes:
    """One RFC 5424 message: header, ``[meta sequenceId]`` structured data, BOM and UTF-8 body
    (``msgid``/``facility``: another kind of message than an audit event, e.g. an alert)."""
    stamp = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sequence_id = (sequence - 1) % 2147483647 + 1  # RFC 5424 7.3.1: 1..2147483647
    header = (f"<{facility * 8 + severity}>1 {stamp} {hostname or '-'} {app_name or '-'} {procid or '-'} {msgid} "
              f'[meta sequenceId="{sequence_id}"] ')
    return header.encode("ascii") + BOM + body


def octet_counted(msg: bytes) -> bytes:
    """RFC 5425 4.3 framing: MSG-LEN SP SYSLOG-MSG."""
    return b"%d " % len(msg) + msg


class TlsSender:
    """One TLS connection to the syslog server, opened on demand and reopened after a failure."""

    def __init__(self, host: str, port: int, ca_file: str = "", cert_file: str = "", key_file: str = "",
                 timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file:
            context.load_cert_chain(cert_file, key_file or None)
        self.context = context
        self._sock: ssl.SSLSocket | None = None

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            return self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def _usable(self) -> ssl.SSLSocket:
        """The open connection, or a new one when the server closed it meanwhile."""
        if self._sock is not None and self._closed_by_server(self._sock):
            self.close()
        if self._sock is None:
            self._sock = self._connect()
        return self._sock

    def _closed_by_server(self, sock: ssl.SSLSocket) -> bool:
        """A syslog server sends no application data; what can be read is TLS 1.3 session
        tickets (the connection is fine) or its close (EOF, close_notify, reset)."""
        if not select.select([sock], [], [], 0)[0]:
            return False
        sock.setblocking(False)
        try:
            while True:
                if not sock.recv(4096):
                    return True
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:  # ssl.SSLError included
            return True
        finally:
            sock.settimeout(self.timeout)

    def send(self, messages: list[bytes]) -> None:
        """Send the messages in order and return once the server's TCP stack holds them all."""
        try:
            sock = self._usable()
            sock.sendall(b"".join(octet_counted(m) for m in messages))
            self._wait_acknowledged(sock)
        except BaseException:
            self.close()
            raise

    def _wait_acknowledged(self, sock: socket.socket) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise ConnectionError(error, f"syslog connection failed: {errno.errorcode.get(error, error)}")
            unacknowledged = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            if unacknowledged == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the syslog server did not take {unacknowledged} bytes within {self.timeout}s")
            time.sleep(0.002)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class UdpSender:
    """RFC 5426: one datagram per message. Lossy by nature (no acknowledgement; an outage is
    only noticed when the kernel reports the port unreachable), so TLS is the default advice."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._sock: socket.socket | None = None

    def send(self, messages: list[bytes]) -> None:
        try:
            if self._sock is None:
                family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
                self._sock = socket.socket(family, kind, proto)
                self._sock.connect(address)  # connected: a refused port is reported to a later send
            for msg in messages:
                self._sock.send(msg)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
