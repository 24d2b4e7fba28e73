"""Encrypted catalog snapshots on every site (promise 3: the catalog is an index, never the
only copy of anything).

Objects are self-describing, so a catalog can always be rebuilt by opening every object;
on a large archive that means reading every byte back from off-site. A snapshot makes the
rebuild read one file plus the objects written after it (``jobs/rebuild/index.py``).

A snapshot is one sealed object in the ordinary envelope (``crypto/envelope.py``) with a
fresh data key wrapped by the site key AND for the recovery key, so the offline recovery key
alone opens it. Its sealed metadata carries the site key file itself (every generation and
the naming key): a rebuilt archive gets the very keys that name every object and wrap every
key record, instead of new ones under which nothing old would open (the recovery key holder
can read every copy anyway, so the escrow grants nothing new). It does NOT carry the wrapped
keys of shreddable studies (``catalog/keys.py``): a snapshot kept under Object Lock would
otherwise keep a deleted study readable. A rebuild takes those from the site's key records. The payload is the whole catalog, table by table, as zstd-compressed
JSON lines taken in one read transaction, with the schema revision it was taken at
(``catalog/snapshots.py`` dumps and loads it).

Each site keeps its newest ``[snapshots] keep``; on an Object Lock bucket older ones stay
until their retention ends (the prune is refused, which is what the lock is for).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import snapshots
from dicomvault.catalog.db import HEAD_REVISION
from dicomvault.catalog.snapshots import FORMAT, FORMAT_VERSION, SnapshotError, dump_catalog
from dicomvault.config import parse_duration
from dicomvault.crypto.envelope import DecryptionError, open_object, read_header, seal_object
from dicomvault.crypto.keys import KeyError_, RecoveryKey
from dicomvault.sites import SiteError

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive
    from dicomvault.catalog import Catalog
    from dicomvault.config import Settings
    from dicomvault.crypto.keys import Keyring
    from dicomvault.sites.base import Site

log = logging.getLogger(__name__)

ACTOR = "snapshot"


@dataclass
class SnapshotReport:
    name: str
    created_at: float
    size: int = 0
    rows: int = 0
    seconds: float = 0.0
    sites: dict[str, str] = field(default_factory=dict)  # site -> "ok" or the error
    pruned: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.sites) and all(outcome == "ok" for outcome in self.sites.values())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "created_at": self.created_at, "size": self.size, "rows": self.rows,
                "seconds": round(self.seconds, 3), "sites": self.sites, "pruned": self.pruned, "ok": self.ok}


def new_name(now: float) -> str:
    milliseconds = min(999, int((now % 1) * 1000))
    return time.strftime("catalog-%Y%m%dT%H%M%S", time.gmtime(now)) + f".{milliseconds:03d}Z-" + secrets.token_hex(4)


def seal_snapshot(catalog: "Catalog", keyring: "Keyring", now: float) -> tuple[bytes, dict[str, Any]]:
    """Dump and seal the catalog; the recovery key alone opens the result."""
    payload, summary = dump_catalog(catalog)
    metadata = {
        "kind": FORMAT, "format_version": FORMAT_VERSION, "created_at": now, "revision": HEAD_REVISION,
        "archive_fingerprint": keyring.fingerprint,
        "site_key": base64.b64encode(keyring.site_key_for_snapshot()).decode(),
        "site_keys": keyring.to_text(),
        "recovery_public": keyring.recovery_public_pem().decode(),
        "audit_head": summary["audit_head"], "rows": summary["rows"],
        "payload_sha256": hashlib.sha256(payload).hexdigest(), "codec": "zstd",
    }
    return seal_object(keyring.new_study_key(), metadata, payload, embed_keys=True), metadata


def open_snapshot(blob: bytes, recovery: RecoveryKey) -> tuple[dict[str, Any], bytes]:
    """Authenticate and decrypt a sealed snapshot with the recovery key: (metadata, payload)."""
    try:
        header, _ = read_header(blob)
        data_key = recovery.unwrap(header.wrapped_for_recovery, header.key_id)
        opened = open_object(blob, data_key=data_key)
    except KeyError_ as exc:
        raise SnapshotError(f"the recovery key does not open this snapshot: {exc}") from exc
    except DecryptionError as exc:
        raise SnapshotError(f"snapshot is damaged or altered: {exc}") from exc
    metadata = opened.metadata
    if metadata.get("kind") != FORMAT:
        raise SnapshotError("not a dicomvault catalog snapshot")
    if hashlib.sha256(opened.payload).hexdigest() != metadata.get("payload_sha256"):
        raise SnapshotError("snapshot payload does not match the SHA-256 sealed with it")
    return metadata, opened.payload


# -- writing to the sites --------------------------------------------------------------------


def snapshot_sites(archive: "Archive") -> dict[str, "Site"]:
    """Every configured site that can hold a snapshot (primary and replicas; not a PACS)."""
    from dicomvault.jobs.verify.job import readable_sites

    return {name: site for name, site in readable_sites(archive).items() if site.capabilities.snapshots}


def take_snapshot(archive: "Archive", actor: str, only_sites: list[str] | None = None,
                  keep: int | None = None) -> SnapshotReport:
    """Snapshot the catalog once and write it to each site; prune each to its newest ``keep``."""
    sites = snapshot_sites(archive)
    unknown = sorted(set(only_sites or ()) - set(sites))
    if unknown:
        raise SnapshotError(f"unknown site(s) or site(s) that cannot hold snapshots: {', '.join(unknown)}; "
                            f"sites that can: {', '.join(sites)}")
    chosen = {name: site for name, site in sites.items() if not only_sites or name in only_sites}
    keep = archive.settings.snapshots.keep if keep is None else keep
    started = time.time()
    report = SnapshotReport(name=new_name(started), created_at=started)
    sealed, metadata = seal_snapshot(archive.catalog, archive.keyring, started)
    report.size = len(sealed)
    report.rows = sum(metadata["rows"].values())
    rows = []
    for name, site in chosen.items():
        try:
            site.put_snapshot(report.name, sealed)
            report.sites[name] = "ok"
        except SiteError as exc:
            report.sites[name] = str(exc)
            log.error("ALERT: catalog snapshot %s could not be written to site %s: %s", report.name, name, exc)
        else:
            report.pruned[name] = _prune(site, keep)
        rows.append({"site": name, "name": report.name, "started_at": started, "finished_at": time.time(),
                     "state": "ok" if report.sites[name] == "ok" else "failed", "size": report.size,
                     "row_count": report.rows, "audit_head": metadata["audit_head"]["hash"],
                     "error": None if report.sites[name] == "ok" else report.sites[name]})
    report.seconds = time.time() - started
    with archive.catalog.write() as conn:
        if rows:
            snapshots.add_snapshot_records(conn, rows)
        append(conn, AuditEvent(actor=actor, action="snapshot", subject=report.name,
                                outcome="success" if report.ok else "failure",
                                detail={"sites": report.sites, "size": report.size, "rows": report.rows,
                                        "audit_head": metadata["audit_head"]}))
    return report


def _prune(site: "Site", keep: int) -> int:
    """Delete all but the newest ``keep`` snapshots; a refusal (retention lock) is fine."""
    try:
        names = site.list_snapshots()
    except SiteError as exc:
        log.warning("cannot list catalog snapshots on %s to prune them: %s", site.url, exc)
        return 0
    pruned = 0
    for name in names[:-keep] if len(names) > keep else []:
        try:
            site.delete_snapshot(name)
            pruned += 1
        except SiteError as exc:
            log.info("old catalog snapshot %s stays on %s: %s", name, site.url, exc)
    return pruned


# -- inside `serve` --------------------------------------------------------------------------


class SnapshotScheduler:
    """Takes a snapshot when any site's newest is older than ``[snapshots] every`` (at once
    when a site has none); after a failure it tries again within ``RETRY`` seconds."""

    RETRY = 600.0

    def __init__(self, archive: "Archive") -> None:
        self.archive = archive
        self.settings = archive.settings.snapshots
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.settings.enabled:
            log.warning("[snapshots] enabled = false: no catalog snapshots are written; a rebuild would have to "
                        "open every object")
            return
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _due_in(self) -> float:
        every = parse_duration(self.settings.every)
        last = snapshots.last_ok_by_site(self.archive.catalog)
        names = [name for name in snapshot_site_names(self.archive.settings)]
        if any(name not in last for name in names):
            return 0.0
        return max(0.0, min(last[name] for name in names) + every - time.time())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._due_in()
                if wait <= 0:
                    report = take_snapshot(self.archive, ACTOR)
                    wait = 1.0 if report.ok else self.RETRY
            except Exception:  # noqa: BLE001 - a snapshot failure must never take `serve` down
                log.exception("catalog snapshot failed; trying again in %.0f s", self.RETRY)
                wait = self.RETRY
            self._stop.wait(min(wait, 3600.0))


def snapshot_site_names(settings: Any) -> list[str]:
    """Sites expected to hold snapshots: file, S3 and vault:// sites (a PACS cannot)."""
    from dicomvault.jobs.verify.job import readable_site_names

    replicas = {r.name: r for r in settings.replicas}
    return [name for name in readable_site_names(settings)
            if name not in replicas or replicas[name].url.split("://", 1)[0] in ("file", "s3", "vault")]


def snapshot_status(catalog: "Catalog", archive_settings: "Settings", now: float | None = None) -> dict[str, Any]:
    """Per site: the newest good snapshot and its age, the last failure; alerts when stale."""
    now = time.time() if now is None else now
    settings = archive_settings.snapshots
    every = parse_duration(settings.every)
    sites: dict[str, Any] = {}
    alerts: list[str] = []
    with catalog.read() as conn:
        oldest = snapshots.oldest_received_at(conn)
        # Alert only about data older than two periods: a new archive gets its first
        # snapshot when `serve` starts.
        stale_data = oldest is not None and now - float(oldest) > 2 * every
        for name in snapshot_site_names(archive_settings):
            good = snapshots.newest_snapshot(conn, name, ok_only=True)
            last = snapshots.newest_snapshot(conn, name, ok_only=False)
            entry: dict[str, Any] = {"last_ok": None, "last_error": None}
            if good is not None:
                entry["last_ok"] = {"name": good.name, "at": good.started_at,
                                    "age_seconds": round(now - good.started_at, 1), "size": good.size,
                                    "rows": good.row_count}
            if last is not None and last.state != "ok":
                entry["last_error"] = {"at": last.started_at, "error": last.error}
                alerts.append(f"catalog snapshot to site {name} failed: {last.error}")
            entry["stale"] = settings.enabled and (now - good.started_at > 2 * every if good is not None
                                                   else stale_data)
            if entry["stale"]:
                alerts.append(f"site {name} holds no catalog snapshot newer than {2 * every / 3600:g} h: a rebuild "
                              "from it would be slow or impossible (is `dicomvault serve` running? "
                              "`dicomvault snapshot` takes one now)")
            sites[name] = entry
    unsupported = [r.name for r in archive_settings.replicas if not r.is_pacs and r.name not in sites]
    return {"enabled": settings.enabled, "every": settings.every, "keep": settings.keep, "sites": sites,
            "unsupported_sites": unsupported, "alerts": alerts}
