"""Where alerts go: a webhook (HTTP POST of JSON), e-mail (SMTP with STARTTLS) and syslog
(RFC 5424 over UDP, TCP or TLS: the transport of the ATNA export, audit/syslog.py).

A channel's ``send(notice)`` returns once the notice was handed over, or raises saying why;
the engine (engine.py) retries what failed. The webhook also retries by itself a few times
with a growing pause (a receiver that restarts, a 502 from a proxy) before giving up.

A notice is a dict: ``kind`` ("raised" | "reminder" | "resolved" | "test"), ``id``, ``key``,
``severity``, ``text``, ``raised_at``, ``resolved_at``, ``acknowledged_by``, ``archive`` (the
AE title and host that sends it) and ``sent_at``. The webhook posts it as is.
"""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol
from urllib.parse import urlsplit

from dicomvault.audit import syslog
from dicomvault.config import AlertSettings

TIMEOUT = 10.0
WEBHOOK_ATTEMPTS = 3
WEBHOOK_BACKOFF = 0.5  # seconds before the second attempt, doubled each time
SYSLOG_FACILITY = 3  # daemon
SYSLOG_MSGID = "dicomvault-alert"
ERROR, WARNING, NOTICE = 3, 4, 5


class Channel(Protocol):
    name: str

    def send(self, notice: dict[str, Any]) -> None: ...


def headline(notice: dict[str, Any]) -> str:
    """One line: "[dicomvault] RAISED (at risk): site nas unreachable: ..." """
    kind = {"raised": "ALERT", "reminder": "REMINDER", "resolved": "RESOLVED", "test": "TEST"}.get(notice["kind"],
                                                                                                   notice["kind"])
    return f"[{notice.get('archive', 'dicomvault')}] {kind} ({notice.get('severity', '')}): {notice.get('text', '')}"


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


class WebhookChannel:
    name = "webhook"

    def __init__(self, settings: AlertSettings) -> None:
        self.url, self.token = settings.webhook_url, settings.webhook_token
        self.context: ssl.SSLContext | None = None
        if urlsplit(self.url).scheme == "https":
            self.context = ssl.create_default_context(cafile=settings.webhook_ca_file or None)
            if not settings.webhook_verify:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE

    def send(self, notice: dict[str, Any]) -> None:
        body = json.dumps(notice).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "dicomvault-alerts"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        pause, error = WEBHOOK_BACKOFF, ""
        for attempt in range(WEBHOOK_ATTEMPTS):
            if attempt:
                time.sleep(pause)  # backoff between attempts, not synchronisation
                pause *= 2
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT, context=self.context) as answer:
                    answer.read()
                    return
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code} {exc.reason}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break  # the receiver refuses this request: sending it again will not help
            except (OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        raise ConnectionError(f"webhook {self.url}: {error}")


class EmailChannel:
    name = "email"

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings

    def send(self, notice: dict[str, Any]) -> None:
        s = self.settings
        mail = EmailMessage()
        mail["From"], mail["To"] = s.mail_from, ", ".join(s.mail_to)
        mail["Subject"] = headline(notice)[:200].replace("\n", " ")
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = make_msgid(domain=s.mail_from.rsplit("@", 1)[-1])
        lines = [notice.get("text", ""), "",
                 f"What:         {notice['kind']} alert #{notice.get('id', '-')} ({notice.get('key', '')})",
                 f"Severity:     {notice.get('severity', '')}",
                 f"Raised:       {_when(notice.get('raised_at'))}",
                 f"Resolved:     {_when(notice.get('resolved_at'))}",
                 f"Acknowledged: {notice.get('acknowledged_by') or '-'}", "",
                 "Acknowledge (stops the reminders): dicomvault alerts ack ID, or POST /api/alerts/ID/ack"]
        mail.set_content("\n".join(lines))
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=TIMEOUT) as smtp:
                smtp.ehlo()
                if s.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context(cafile=s.smtp_ca_file or None))
                    smtp.ehlo()
                if s.smtp_user:
                    smtp.login(s.smtp_user, s.smtp_password)
                smtp.send_message(mail)
        except (OSError, smtplib.SMTPException) as exc:
            raise ConnectionError(f"SMTP {s.smtp_host}:{s.smtp_port}: {type(exc).__name__}: {exc}") from exc


class _TcpSender:
    """RFC 6587 octet-counted frames over plain TCP (a collector on the same network)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def send(self, messages: list[bytes]) -> None:
        with socket.create_connection((self.host, self.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"".join(syslog.octet_counted(m) for m in messages))

    def close(self) -> None:
        pass


class SyslogChannel:
    name = "syslog"

    def __init__(self, settings: AlertSettings, app_name: str = "dicomvault") -> None:
        url = urlsplit(settings.syslog)
        host, scheme = url.hostname or "", url.scheme
        port = url.port or (6514 if scheme == "tls" else 514)
        self.target = settings.syslog
        self.app_name = app_name
        self.hostname = socket.gethostname()
        self.sequence = 0
        self.sender: Any = (syslog.TlsSender(host, port, settings.syslog_ca_file, settings.syslog_cert_file,
                                              settings.syslog_key_file) if scheme == "tls"
                            else syslog.UdpSender(host, port) if scheme == "udp" else _TcpSender(host, port))

    def send(self, notice: dict[str, Any]) -> None:
        self.sequence += 1
        level = NOTICE if notice["kind"] in ("resolved", "test") else ERROR if notice.get("severity") == "unprotected" \
            else WARNING
        msg = syslog.message(headline(notice).encode(), ts=time.time(), hostname=self.hostname,
                             app_name=self.app_name, procid=str(notice.get("id") or "-"), sequence=self.sequence,
                             severity=level, msgid=SYSLOG_MSGID, facility=SYSLOG_FACILITY)
        try:
            self.sender.send([msg])
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionError(f"syslog {self.target}: {type(exc).__name__}: {exc}") from exc


def build_channels(settings: AlertSettings, app_name: str = "dicomvault") -> list[Channel]:
    """The configured channels, in the order webhook, email, syslog."""
    channels: list[Channel] = []
    if settings.webhook_url:
        channels.append(WebhookChannel(settings))
    if settings.smtp_host:
        channels.append(EmailChannel(settings))
    if settings.syslog:
        channels.append(SyslogChannel(settings, app_name))
    return channels
