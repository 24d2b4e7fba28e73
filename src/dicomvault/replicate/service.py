"""All replica targets of one archive: builds a ``SiteReplicator`` per configured site or PACS.

Runs inside ``dicomvault serve``. Sites configured after objects were stored are owed a
copy of every existing object at start-up, so adding a site backfills it. While it runs it
holds a lock on ``<data dir>/run/replication.json`` naming the sites it copies to, so that
``status`` in another process can tell a site added since (not yet started) from one that is
being copied (``running_sites``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from dicomvault.archive.copies import owed_sites
from dicomvault.config import ReplicaSiteSettings, Settings
from dicomvault.catalog import Catalog
from dicomvault.sites import Site

from .outbox import Outbox
from .targets import SiteTarget, open_target
from .worker import Limiter, SiteReplicator

log = logging.getLogger(__name__)


def build_limiter(settings: ReplicaSiteSettings) -> Limiter | None:
    """The site's rate limit and weekly windows; None when always unlimited."""
    if settings.rate.strip().lower() == "unlimited" and not settings.schedule:
        return None
    from .throttle import RateLimiter, Schedule

    return RateLimiter(Schedule.parse(settings.rate, list(settings.schedule)))


class _ReadThrough:
    """What a replicator reads from: ``Repository.sealed`` (primary first) for one target site."""

    def __init__(self, repository: Any, target: str) -> None:
        self.repository, self.target = repository, target

    def get(self, object_id: str) -> bytes:
        return bytes(self.repository.sealed(object_id, skip=self.target))


class ReplicationService:
    def __init__(self, settings: Settings, catalog: Catalog, primary: Site, repository: Any = None) -> None:
        """``repository``: the archive's, read through for sources and opened by a ``dicom://``
        target (the one kind that decrypts, through the repository's SHA-256 gate)."""
        self.outbox = Outbox(catalog)
        self.catalog = catalog
        self.settings = settings
        self._marker: IO[str] | None = None
        self.replicators: dict[str, SiteReplicator] = {}
        by_name = {replica.name: replica for replica in settings.replicas}
        for replica in (by_name[name] for name in owed_sites(settings)):
            target = open_target(replica, repository, settings.dicom)
            if not isinstance(target, SiteTarget):
                log.warning("target %s (%s) receives PLAINTEXT images: it must itself be trusted with patient data",
                            replica.name, replica.url)
            # With the repository, an object the primary lacks (refilling after a rebuild) is
            # copied from another replica's verified copy instead of failing until the refill.
            source = primary if repository is None else _ReadThrough(repository, replica.name)
            self.replicators[replica.name] = SiteReplicator(
                replica.name, target, source, self.outbox, workers=replica.workers,
                max_attempts=replica.max_attempts, limiter=build_limiter(replica),
            )

    @property
    def on_verified(self) -> list[Callable[[], None]]:
        """Listeners called after verified copies are recorded (e.g. wake storage commitment)."""
        return self.outbox.on_verified

    def start(self) -> None:
        for name, replicator in self.replicators.items():
            owed = self.catalog.owe_missing_copies(name)
            if owed:
                log.warning("site %s is owed %d existing object(s); backfilling", name, owed)
            replicator.start()
        self._hold_marker()

    def stop(self) -> None:
        for replicator in self.replicators.values():
            replicator.stop()
        if self._marker is not None:
            running_path(self.settings).unlink(missing_ok=True)
            self._marker.close()  # drops the lock
            self._marker = None

    def _hold_marker(self) -> None:
        """Say which sites this process copies to, under a shared lock the kernel drops with it."""
        path = running_path(self.settings)
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            handle = path.open("a+", encoding="utf-8")
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            handle.seek(0)
            handle.truncate()
            json.dump({"pid": os.getpid(), "started_at": time.time(), "sites": sorted(self.replicators)}, handle)
            handle.flush()
            self._marker = handle
        except OSError as exc:  # another serve holds it, or a read-only data dir: status cannot tell
            log.warning("cannot record the running replication sites in %s: %s", path, exc)

    def notify(self) -> None:
        for replicator in self.replicators.values():
            replicator.notify()

    def state(self) -> dict[str, Any]:
        return {name: replicator.state() for name, replicator in self.replicators.items()}


def running_path(settings: Settings) -> Path:
    return Path(settings.base_dir) / "run" / "replication.json"


def running_sites(settings: Settings) -> list[str] | None:
    """The sites a live ``serve`` on this host copies to; None when none runs (or it cannot tell)."""
    path = running_path(settings)
    try:
        with path.open("r", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held: a serve is running
                return list(json.load(handle).get("sites", []))
            return None  # left behind by a serve that died
    except (OSError, ValueError):
        return None
