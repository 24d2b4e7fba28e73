"""The ATNA export: every audit row, in order, to the hospital's audit record repository.

The rows are already durable in the catalog, so the queue is the audit log itself: the
export keeps its place (``audit_export.last_id``, the newest row delivered) in the catalog and
moves it only after a batch was delivered (syslog.py says what that means). While the
repository is down the forwarder retries with a growing pause; nothing is lost and it
catches up, oldest first, when the repository returns. It is woken when an instance is
stored and looks for new rows every ``POLL_SECONDS`` besides (rows are written by many
modules and by other processes, such as CLI commands).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from types import SimpleNamespace
from typing import Any

from dicomvault.audit import atna, syslog
from dicomvault.catalog import audit_log
from dicomvault.config import AuditSettings, ConfigError, Settings

log = logging.getLogger(__name__)

NAME = "syslog"  # the audit_export row of this destination
BATCH = 200  # rows per send: one catalog read, one write, one wait for the server's ACK
POLL_SECONDS = 1.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
STALE_SECONDS = 300.0  # an event undelivered for this long is an alert in `status`
_METRICS: dict[str, Any] = {}


def _metrics() -> dict[str, Any]:
    if not _METRICS:
        from prometheus_client import Counter, Gauge

        _METRICS["backlog"] = Gauge("dicomvault_audit_export_backlog",
                                    "Audit events not yet delivered to the [audit] syslog repository")
        _METRICS["sent"] = Counter("dicomvault_audit_export_sent", "Audit events delivered to the syslog repository")
    return _METRICS


def audit_source(settings: Settings) -> atna.Source:
    fqdn = settings.audit.hostname or socket.getfqdn()
    return atna.Source(source_id=settings.audit.source_id or fqdn, app_name=settings.audit.app_name,
                       ae_title=settings.dicom.ae_title, hostname=fqdn)


def sender_for(audit: AuditSettings) -> syslog.TlsSender | syslog.UdpSender:
    """The transport of ``[audit] syslog``; unreadable certificate files are a ConfigError at
    start, not a retry loop."""
    scheme, host, port = audit.transport
    if scheme != "tls":
        return syslog.UdpSender(host, port)
    try:
        return syslog.TlsSender(host, port, audit.syslog_ca_file, audit.syslog_cert_file, audit.syslog_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[audit] cannot use the TLS files (syslog_ca_file {audit.syslog_ca_file!r}, "
                          f"syslog_cert_file {audit.syslog_cert_file!r}, syslog_key_file): {exc}") from exc


class AuditForwarder:
    """A thread in ``dicomvault serve`` that exports the audit log; off when ``[audit] syslog`` is ""."""

    def __init__(self, catalog: Any, settings: Settings) -> None:
        self.catalog = catalog
        self.settings = settings.audit
        self.enabled = bool(self.settings.syslog)
        # getfqdn() may wait for DNS: only when exporting
        self.source = audit_source(settings) if self.enabled else atna.Source("", "", "", "")
        self.sender = sender_for(self.settings) if self.enabled else None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._error = ""
        self._error_recorded = 0.0
        self._flush_deadline = 0.0

    def notify(self) -> None:
        """New rows were written: look now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        if not self.enabled:
            return
        _metrics()
        self._thread = threading.Thread(target=self._run, name="audit-export", daemon=True)
        self._thread.start()
        log.info("audit export to %s started", self.settings.syslog)

    def stop(self, flush_seconds: float = 3.0) -> None:
        """Stop after delivering what is due within ``flush_seconds`` (the rest goes next start)."""
        if self._thread is None:
            return
        self._flush_deadline = time.monotonic() + flush_seconds
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=flush_seconds + 15)
        if self.sender is not None:
            self.sender.close()

    def _run(self) -> None:
        pause = BACKOFF_FIRST
        while True:
            stopping = self._stopping.is_set()
            if stopping and time.monotonic() > self._flush_deadline:
                return
            try:
                sent = self.pump()
            except Exception as exc:  # noqa: BLE001 - the repository is down or refuses: retry later
                if stopping:
                    log.warning("audit export: %s; the rest is sent at the next start", exc)
                    return
                self._failed(exc)
                self._stopping.wait(pause)  # not woken by stores: no connection attempt per instance
                pause = min(pause * 2, BACKOFF_MAX)
                continue
            pause = BACKOFF_FIRST
            if sent == 0:
                if stopping:
                    return
                self._wake.wait(POLL_SECONDS)
                self._wake.clear()

    def pump(self) -> int:
        """Send the next batch after the cursor; returns how many rows were delivered."""
        with self.catalog.read() as conn:
            state = audit_log.export_state(conn, NAME)
            cursor = state.last_id if state else 0
            rows = audit_log.rows_after(conn, cursor, BATCH)
            newest = audit_log.last_row_id(conn)
        metrics = _metrics()
        metrics["backlog"].set(newest - cursor)
        if not rows:
            return 0
        assert self.sender is not None
        self.sender.send([self.message(row) for row in rows])
        with self.catalog.write() as conn:
            audit_log.export_delivered(conn, NAME, rows[-1].id, time.time())
        if self._error:
            log.info("audit export to %s delivers again", self.settings.syslog)
            self._error = ""
        metrics["sent"].inc(len(rows))
        metrics["backlog"].set(max(newest - rows[-1].id, 0))
        return len(rows)

    def message(self, row: Any) -> bytes:
        _, indicator = atna.event_of(row)
        try:
            body = atna.build(row, self.source)
        except Exception:  # noqa: BLE001 - one odd row must not hold back every row after it
            log.exception("audit export: row %s cannot be described in full; sent without its detail", row.id)
            body = atna.build(SimpleNamespace(id=row.id, ts=row.ts, actor=str(row.actor), action=str(row.action),
                                              subject=str(row.subject), outcome=str(row.outcome), detail="{}"),
                              self.source)
        return syslog.message(body, ts=float(row.ts), hostname=self.source.hostname,
                              app_name=self.settings.app_name, procid=str(os.getpid()), sequence=int(row.id),
                              severity=syslog.NOTICE if indicator == 0 else syslog.WARNING)

    def _failed(self, exc: Exception) -> None:
        """Log and record a failure when it changes, and at most once a minute otherwise."""
        error = f"{type(exc).__name__}: {exc}"
        now = time.time()
        if error == self._error and now - self._error_recorded < 60:
            return
        if error != self._error:
            log.warning("audit export to %s failed (retrying): %s", self.settings.syslog, error)
        self._error, self._error_recorded = error, now
        try:
            with self.catalog.write() as conn:
                audit_log.export_failed(conn, NAME, error, now)
        except Exception:  # noqa: BLE001 - the catalog is what we report from; keep retrying
            log.exception("audit export: cannot record the failure")


def export_status(catalog: Any, settings: Settings) -> dict[str, Any]:
    """``status`` of the export: where it stands, its backlog and why it is stuck, if it is."""
    target = settings.audit.syslog
    with catalog.read() as conn:
        state = audit_log.export_state(conn, NAME)
        cursor = state.last_id if state else 0
        newest = audit_log.last_row_id(conn)
        oldest = audit_log.oldest_ts_after(conn, cursor) if target and newest > cursor else None
    age = round(time.time() - oldest, 1) if oldest is not None else None
    result: dict[str, Any] = {
        "target": target or None, "delivered_through": cursor, "backlog": max(newest - cursor, 0) if target else 0,
        "oldest_undelivered_age_seconds": age, "last_delivery": state.sent_at if state else None,
        "error": state.error if state else None, "alerts": [],
    }
    if age is not None and age > STALE_SECONDS:
        result["alerts"].append(f"audit export to {target}: {result['backlog']} event(s) undelivered, the oldest for "
                                f"{age / 60:.0f} min" + (f" ({state.error})" if state and state.error else ""))
    return result
