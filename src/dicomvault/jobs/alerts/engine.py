"""The alert engine: a thread in ``dicomvault serve`` that, every ``[alerts] check_every``,
compares the archive's conditions (conditions.py, fed with ``archive_status()``) with the open
alerts in the catalog and

* raises a new alert once (a row in ``alerts``, audited ``alert-raised``, a "raised" notice to
  every channel),
* reminds every ``[alerts] remind_every`` while the alert is open and not acknowledged,
* resolves it when its condition is gone (audited ``alert-resolved``, a "resolved" notice).

Delivery: each channel has its own queue (at most ``MAX_PENDING`` notices, oldest dropped),
sent oldest first; a channel that fails keeps its queue and is tried again at the next look,
so a notice is late, never lost while ``serve`` runs. A failing channel is recorded in the
catalog (``alert_channels``), shows in ``status`` and so becomes an alert itself, which is sent
to the OTHER channels only: a broken channel never loops alerts about itself.

Acknowledging (``acknowledge``: the CLI and ``POST /api/alerts/{id}/ack``) is a catalog change
the engine sees at its next look.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import alerts as rows
from dicomvault.config import Settings, parse_duration

from dicomvault.jobs.alerts.channels import Channel, build_channels
from dicomvault.jobs.alerts.conditions import Condition, alert_conditions, protection_level

if TYPE_CHECKING:
    from dicomvault.catalog.db import Catalog

log = logging.getLogger(__name__)

ACTOR = "alert-engine"
MAX_PENDING = 200
CHANNEL_KEY_PREFIX = "status:alert-channel-"  # status_key() of "alert channel NAME failing: ..."
CONTRACT_FIELDS = ("id", "key", "severity", "text", "raised_at", "last_sent_at", "acknowledged_by",
                   "acknowledged_at", "resolved_at")
_METRICS: dict[str, Any] = {}


class AlertError(Exception):
    """An alert cannot be acknowledged; the message says why."""


def public(alert: dict[str, Any]) -> dict[str, Any]:
    """An alert as ``GET /api/alerts`` shows it (the shared contract of issue 20)."""
    return {name: alert[name] for name in CONTRACT_FIELDS}


def _metrics() -> dict[str, Any]:
    if not _METRICS:
        from prometheus_client import Counter, Gauge

        _METRICS.update(
            protection=Gauge("dicomvault_protection_state", "0 protected, 1 at risk, 2 unprotected"),
            active=Gauge("dicomvault_alert_active", "1 while the alert is open", ["key", "severity"]),
            acknowledged=Gauge("dicomvault_alert_acknowledged", "1 while the open alert is acknowledged", ["key"]),
            open=Gauge("dicomvault_alerts_open", "Open alerts"),
            status_alerts=Gauge("dicomvault_status_alerts", "Alert lines in `dicomvault status`"),
            channel_up=Gauge("dicomvault_alert_channel_up", "1 when the channel's last delivery worked", ["channel"]),
            pending=Gauge("dicomvault_alert_channel_pending", "Notices waiting for a retry", ["channel"]),
            sent=Counter("dicomvault_alert_notifications", "Notices handed to a channel", ["channel", "kind", "outcome"]),
            backlog=Gauge("dicomvault_replication_backlog_objects", "Copies owed to the replica site", ["site"]),
            rpo=Gauge("dicomvault_replication_oldest_owed_seconds", "Age of the oldest copy owed (live RPO)", ["site"]),
            dead=Gauge("dicomvault_replication_dead_lettered", "Copies given up after max attempts, still owed", ["site"]),
            drill=Gauge("dicomvault_drill_last_success_age_seconds", "Age of the last successful restore drill",
                        ["site"]),
            drill_failed=Gauge("dicomvault_drill_last_failed", "1 when the site's latest restore drill failed", ["site"]),
            scrub=Gauge("dicomvault_scrub_overdue_copies", "Copies not proven within the [scrub] period", ["site"]),
            snapshot=Gauge("dicomvault_snapshot_age_seconds", "Age of the newest good catalog snapshot", ["site"]),
            quarantined=Gauge("dicomvault_site_quarantined", "1 while the site is quarantined", ["site"]),
            last_check=Gauge("dicomvault_alert_engine_last_check_timestamp", "When the alert engine last looked"),
        )
    return _METRICS


def export_metrics(status: dict[str, Any], conditions: list[Condition]) -> None:
    """Every condition as a Prometheus gauge (see deploy/prometheus/alerts.yml)."""
    m = _metrics()
    m["protection"].set(protection_level(status, conditions))
    m["status_alerts"].set(len(status.get("alerts") or []))
    for name, site in (status.get("sites") or {}).items():
        if name == "primary" or not isinstance(site, dict):
            continue
        for metric, field in (("backlog", "backlog_objects"), ("rpo", "oldest_owed_age_seconds"),
                              ("dead", "dead_letters")):
            if isinstance(site.get(field), (int, float)):
                m[metric].labels(name).set(site[field])
    for name, entry in ((status.get("drills") or {}).get("sites") or {}).items():
        good, last = entry.get("last_success"), entry.get("last_run")
        if good:
            m["drill"].labels(name).set(good.get("age_seconds") or 0)
        m["drill_failed"].labels(name).set(1 if last and last.get("state") == "failure" else 0)
    for name, entry in ((status.get("scrub") or {}).get("sites") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("overdue"), int):
            m["scrub"].labels(name).set(entry["overdue"])
    for name, entry in ((status.get("snapshots") or {}).get("sites") or {}).items():
        if isinstance(entry, dict) and entry.get("last_ok"):
            m["snapshot"].labels(name).set(entry["last_ok"]["age_seconds"])
    quarantined = (status.get("scrub") or {}).get("quarantined") or {}
    for name in [*(n for n in (status.get("sites") or {}) if n != "primary")]:
        m["quarantined"].labels(name).set(1 if name in quarantined else 0)


class AlertEngine:
    def __init__(self, catalog: "Catalog", settings: Settings, status: Callable[[], dict[str, Any]],
                 channels: list[Channel] | None = None) -> None:
        self.catalog = catalog
        self.settings = settings.alerts
        self.archive_name = f"{settings.dicom.ae_title}@{socket.gethostname()}"
        self.status = status
        self.channels = build_channels(self.settings, settings.audit.app_name) if channels is None else channels
        self.queues: dict[str, deque[dict[str, Any]]] = {c.name: deque(maxlen=MAX_PENDING) for c in self.channels}
        self.state: dict[str, dict[str, Any]] = {c.name: {"ok": True, "error": None, "failing_since": None,
                                                          "last_ok_at": None, "pending": 0} for c in self.channels}
        self.remind_every = parse_duration(self.settings.remind_every)
        self.check_every = parse_duration(self.settings.check_every)
        self._active_labels: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.settings.enabled:
            log.warning("[alerts] enabled = false: no alerts are raised or sent")
            return
        if not self.channels:
            log.warning("[alerts] no channel configured (webhook_url, smtp_host, syslog): alerts are recorded and "
                        "shown (`dicomvault alerts list`, /api/alerts, /metrics) but nobody is told")
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check(time.time())
            except Exception:  # noqa: BLE001 - alerting must never take `serve` down
                log.exception("alert check failed; trying again in %s", self.settings.check_every)
            self._stop.wait(self.check_every)

    # --- one look ------------------------------------------------------------------------------

    def check(self, now: float) -> list[dict[str, Any]]:
        """Look at the conditions, update the alerts, deliver; returns the notices made."""
        status = self.status()
        conditions = alert_conditions(status)
        export_metrics(status, conditions)
        notices = self._update(conditions, now)
        for notice in notices:
            for channel in self.channels:
                if not notice["key"].startswith(f"{CHANNEL_KEY_PREFIX}{channel.name}-"):
                    self.queues[channel.name].append(notice)
        self._deliver(now)
        self._export_alerts()
        _metrics()["last_check"].set(now)
        return notices

    def _notice(self, kind: str, alert: dict[str, Any], now: float) -> dict[str, Any]:
        return {"kind": kind, "id": alert["id"], "key": alert["key"], "severity": alert["severity"],
                "text": alert["text"], "raised_at": alert["raised_at"], "resolved_at": alert.get("resolved_at"),
                "acknowledged_by": alert.get("acknowledged_by"), "archive": self.archive_name, "sent_at": now}

    def _update(self, conditions: list[Condition], now: float) -> list[dict[str, Any]]:
        notices: list[dict[str, Any]] = []
        current = {c.key: c for c in conditions}
        with self.catalog.write() as conn:
            open_now = {a["key"]: a for a in rows.open_alerts(conn)}
            for key, alert in open_now.items():
                condition = current.get(key)
                if condition is None:
                    rows.update_alert(conn, alert["id"], resolved_at=now)
                    alert["resolved_at"] = now
                    append(conn, AuditEvent(ACTOR, "alert-resolved", subject=key,
                                            detail={"id": alert["id"], "text": alert["text"][:500]}), ts=now)
                    notices.append(self._notice("resolved", alert, now))
                    continue
                if (condition.severity, condition.text) != (alert["severity"], alert["text"]):
                    rows.update_alert(conn, alert["id"], severity=condition.severity, text=condition.text)
                    alert.update(severity=condition.severity, text=condition.text)
                if alert["acknowledged_at"] is None and (alert["last_sent_at"] is None
                                                         or now - alert["last_sent_at"] >= self.remind_every):
                    kind = "raised" if alert["last_sent_at"] is None else "reminder"
                    rows.update_alert(conn, alert["id"], last_sent_at=now,
                                      reminders=alert["reminders"] + (kind == "reminder"))
                    notices.append(self._notice(kind, alert, now))
            for key, condition in current.items():
                if key in open_now:
                    continue
                alert = {"key": key, "severity": condition.severity, "text": condition.text, "raised_at": now}
                alert["id"] = rows.add_alert(conn, **alert)
                rows.update_alert(conn, alert["id"], last_sent_at=now)
                append(conn, AuditEvent(ACTOR, "alert-raised", subject=key,
                                        detail={"id": alert["id"], "severity": condition.severity,
                                                "text": condition.text[:500]}), ts=now)
                notices.append(self._notice("raised", alert, now))
        return notices

    def _deliver(self, now: float) -> None:
        changed = []
        for channel in self.channels:
            queue, state = self.queues[channel.name], self.state[channel.name]
            was_ok = state["ok"]
            while queue:
                notice = queue[0]
                try:
                    channel.send(notice)
                except Exception as exc:  # noqa: BLE001 - any failure: keep the notice, retry later
                    if state["ok"] or state["error"] != str(exc):
                        log.warning("alert channel %s failed (will retry): %s", channel.name, exc)
                    state.update(ok=False, error=str(exc)[:1000], failing_since=state["failing_since"] or now)
                    _metrics()["sent"].labels(channel.name, notice["kind"], "failed").inc()
                    break
                queue.popleft()
                state.update(ok=True, error=None, failing_since=None, last_ok_at=now)
                _metrics()["sent"].labels(channel.name, notice["kind"], "sent").inc()
            state["pending"] = len(queue)
            _metrics()["channel_up"].labels(channel.name).set(1 if state["ok"] else 0)
            _metrics()["pending"].labels(channel.name).set(len(queue))
            if state["ok"] != was_ok:
                changed.append((channel.name, state["ok"], state["error"]))
        if self.channels:
            rows.set_channel_states(self.catalog, self.state, now)
        if changed:
            with self.catalog.write() as conn:
                for name, ok, error in changed:
                    append(conn, AuditEvent(ACTOR, "alert-channel", subject=name,
                                            outcome="reachable" if ok else "failed",
                                            detail={"error": error} if error else {}), ts=now)

    def _export_alerts(self) -> None:
        m = _metrics()
        with self.catalog.read() as conn:
            open_now = rows.open_alerts(conn)
        labels = {(a["key"], a["severity"]) for a in open_now}
        for gone in self._active_labels - labels:
            m["active"].remove(*gone)
        for key, severity in labels:
            m["active"].labels(key, severity).set(1)
        for alert in open_now:
            m["acknowledged"].labels(alert["key"]).set(0 if alert["acknowledged_at"] is None else 1)
        for gone in {k for k, _ in self._active_labels} - {k for k, _ in labels}:
            try:
                m["acknowledged"].remove(gone)
            except KeyError:
                pass
        self._active_labels = labels
        m["open"].set(len(open_now))


# --- acknowledging, testing --------------------------------------------------------------------

def acknowledge(catalog: "Catalog", alert_id: int, actor: str, note: str = "") -> dict[str, Any]:
    """Acknowledge an open alert: no more reminders (audited ``alert-ack``). An alert already
    acknowledged is returned as it is; an unknown or resolved one is an AlertError."""
    note = str(note or "").strip()
    if len(note) > 1000:
        raise AlertError("the note is longer than 1000 characters")
    now = time.time()
    with catalog.write() as conn:
        alert = rows.get_alert(conn, alert_id)
        if alert is None:
            raise AlertError(f"there is no alert {alert_id} (`dicomvault alerts list --all` shows them)")
        if alert["resolved_at"] is not None:
            raise AlertError(f"alert {alert_id} was resolved already; nothing to acknowledge")
        if alert["acknowledged_at"] is not None:
            return alert
        rows.update_alert(conn, alert_id, acknowledged_by=actor, acknowledged_at=now, ack_note=note)
        append(conn, AuditEvent(actor, "alert-ack", subject=alert["key"], detail={"id": alert_id, "note": note}))
        alert.update(acknowledged_by=actor, acknowledged_at=now, ack_note=note)
    return alert


def send_test(catalog: "Catalog", settings: Settings, actor: str) -> dict[str, str]:
    """A test notice to every channel: channel -> "ok" or the error (audited ``alert-test``)."""
    now = time.time()
    notice = {"kind": "test", "id": 0, "key": "test", "severity": "test",
              "text": f"test alert from dicomvault ({actor}): if you read this, alerts reach you", "raised_at": now,
              "resolved_at": None, "acknowledged_by": None,
              "archive": f"{settings.dicom.ae_title}@{socket.gethostname()}", "sent_at": now}
    results: dict[str, str] = {}
    for channel in build_channels(settings.alerts, settings.audit.app_name):
        try:
            channel.send(notice)
            results[channel.name] = "ok"
        except Exception as exc:  # noqa: BLE001 - report every channel
            results[channel.name] = str(exc) or type(exc).__name__
    delivered = bool(results) and all(result == "ok" for result in results.values())
    with catalog.write() as conn:
        append(conn, AuditEvent(actor, "alert-test", subject=",".join(results) or "-",
                                outcome="success" if delivered else "failed", detail=results))
    return results


def alerting_status(catalog: "Catalog", settings: Settings) -> dict[str, Any]:
    """For ``status``: the channels configured, their delivery state, the open alerts, and an
    alert line per channel that is failing."""
    with catalog.read() as conn:
        states = rows.channel_states(conn)
        open_now = rows.open_alerts(conn)
    configured = settings.alerts.channels
    channels = {name: states.get(name, {"ok": None, "error": None, "failing_since": None, "last_ok_at": None,
                                        "pending": 0, "updated_at": None}) for name in configured}
    lines = [f"alert channel {name} failing: {state['error']}; alerts are not reaching anyone through it "
             "(`dicomvault alerts test`)" for name, state in channels.items() if state["ok"] is False]
    return {"enabled": settings.alerts.enabled, "channels": channels, "open": len(open_now),
            "acknowledged": sum(1 for a in open_now if a["acknowledged_at"] is not None),
            "remind_every": settings.alerts.remind_every, "alerts": lines}
