"""The site interface every backend implements (modelled on Litestream's ReplicaClient).

Sites only ever see sealed (encrypted) objects and opaque keyed names; they never need a key.
What a backend can do beyond the five core methods is declared in its ``capabilities`` and
every optional operation has a safe default here, so callers never probe with ``hasattr``.
This module imports no backend: ``registry.py`` maps URL schemes to them.
"""

from __future__ import annotations

import abc
import builtins
import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

# Catalog snapshot names sort by time: ``catalog-20261123T101500.123Z-1a2b3c4d`` (UTC, to the
# millisecond, so two snapshots taken within one second still sort in the order they were
# taken; the random suffix only keeps names unique). Names without milliseconds, written
# before, are still read.
SNAPSHOT_NAME = re.compile(r"^catalog-\d{8}T\d{6}(\.\d{3})?Z-[0-9a-f]{8}$")


KEY_NAME = re.compile(r"^[0-9a-f]{32}$")  # a study key id (crypto/keys.py)


def valid_key_name(name: str) -> str:
    if not KEY_NAME.match(name):
        raise SiteError(f"invalid key record name {name!r}")
    return name


def valid_snapshot_name(name: str) -> str:
    if not SNAPSHOT_NAME.match(name):
        raise SiteError(f"invalid catalog snapshot name {name!r}")
    return name


class SiteError(Exception):
    """The site could not do what was asked (unreachable, full, read-only...)."""


class DeletionRefused(SiteError):
    """The site holds the object and will not remove it: Object Lock retention, a write-once
    partner vault. Not an outage: asking again changes nothing until the lock ends."""


class ObjectExists(SiteError):
    """put_if_absent found an object of that name already there."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend does beyond put/get/stat/list/delete (the contract suite holds it to it)."""

    # Holds encrypted catalog snapshots (put/get/list/delete_snapshot), so that this site
    # alone plus the recovery key can rebuild the catalog (promise 3).
    snapshots: bool = False
    # ``checksum_sha256`` reports the SHA-256 the backend computed itself from what it
    # received or holds, so a copy is verified without downloading it.
    checksums: bool = False
    # ``put_if_absent`` may leave part of its durability to ``flush`` and keeps a
    # crash-recovery intent per object until ``release_intents``; ``recover`` returns them
    # after a crash, and ``enable_journal`` may switch on the write-ahead journal.
    journal: bool = False
    # Objects can be kept under retention (Object Lock): ``get_with_retention`` reports it and
    # ``extend_retention`` lengthens it; ``object_lock_days`` > 0 sets it on every write.
    object_lock: bool = False
    # Holds key records (``put_key``... below): objects sealed since key records exist carry
    # only a key id, so a site without them holds copies nobody can open from it alone.
    keys: bool = False


@dataclass(frozen=True)
class ObjectRetention:
    """The retention a site reported for the object version it returned."""

    mode: str | None = None  # COMPLIANCE or GOVERNANCE; None: no retention
    until: dt.datetime | None = None  # retain-until date (aware)
    version_id: str | None = None


class Site(abc.ABC):
    url: str
    # Declared per backend class.
    capabilities: Capabilities = Capabilities()
    object_lock_days: int = 0  # days each new object is locked for (object_lock sites), 0: none

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, object] | None = None) -> "Site":
        """The site for ``url`` with the options of its configuration table (registry.py calls this)."""
        raise SiteError(f"{cls.__name__} cannot be opened from a URL ({url})")

    @abc.abstractmethod
    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Durably store ``data`` under ``name`` unless it exists. True if written now.

        Returns only once the object is on stable storage (write-once: never overwrites).
        False if the name is taken; a backend that can tell the held bytes differ raises
        ObjectExists instead (names are keyed MACs: different bytes mean a conflict).
        """

    @abc.abstractmethod
    def get(self, name: str) -> bytes:
        """Whole object bytes; raises KeyError if absent."""

    @abc.abstractmethod
    def stat(self, name: str) -> int | None:
        """Size in bytes, or None if absent."""

    @abc.abstractmethod
    def list(self) -> Iterator[str]:
        """Every object name on the site."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Physically remove an object: only policy (retention, shredding) may call this."""

    def health(self) -> dict[str, object]:
        return {"url": self.url, "ok": True}

    def close(self) -> None:
        """Let go of connections, threads and locks (a file site's journal); idempotent."""

    def checksum_sha256(self, name: str) -> str | None:
        """Hex SHA-256 of the stored object as the backend computed it (``capabilities.checksums``).
        None: the site cannot vouch for it (or it is absent), so the caller reads it back."""
        return None

    # Object Lock retention (``capabilities.object_lock``); elsewhere nothing is retained.

    def get_with_retention(self, name: str) -> tuple[bytes, ObjectRetention]:
        """``get`` plus the retention of the version read (none where nothing is retained)."""
        return self.get(name), ObjectRetention()

    def extend_retention(self, name: str, until: dt.datetime, mode: str | None = None,
                         version_id: str | None = None) -> None:
        """Keep the object under retention until ``until`` (callers only lengthen it)."""
        raise SiteError(f"{self.url} cannot keep objects under retention")

    # Encrypted catalog snapshots (jobs/rebuild/snapshot.py, ``capabilities.snapshots``), a small
    # namespace beside the objects. Backends without ``capabilities.snapshots`` keep these defaults.

    def put_snapshot(self, name: str, data: bytes) -> None:
        """Durably store a sealed snapshot under a new name (names are never reused)."""
        raise SiteError(f"{self.url} cannot hold catalog snapshots")

    def get_snapshot(self, name: str) -> bytes:
        """The sealed snapshot; raises KeyError if absent."""
        raise SiteError(f"{self.url} cannot hold catalog snapshots")

    def list_snapshots(self) -> "builtins.list[str]":
        """Snapshot names, oldest first."""
        return []

    def delete_snapshot(self, name: str) -> None:
        """Remove an old snapshot (pruning); may be refused by retention locks."""
        raise SiteError(f"{self.url} cannot hold catalog snapshots")

    # Key records (crypto/keys.py ``KeyRecord``, ``capabilities.keys``): a small namespace
    # beside the objects that, unlike them, is replaced in place (``keys rotate`` re-wraps)
    # and is always deletable, Object Lock buckets and write-once partner vaults included:
    # deleting a study's record on every site is what makes its copies unreadable for good.

    def put_key(self, name: str, data: bytes) -> None:
        """Durably store (or replace) the key record ``name``; never under retention."""
        raise SiteError(f"{self.url} cannot hold key records")

    def get_key(self, name: str) -> bytes:
        """The key record; raises KeyError if absent."""
        raise SiteError(f"{self.url} cannot hold key records")

    def list_keys(self) -> "builtins.list[str]":
        """Every key record name."""
        return []

    def delete_key(self, name: str) -> None:
        """Remove the key record and every older version of it; absent is fine."""
        raise SiteError(f"{self.url} cannot hold key records")

    # Crash recovery (``capabilities.journal``). A backend whose put_if_absent is fully durable
    # by itself (an object store's confirmed PUT) keeps these no-ops.

    def enable_journal(self) -> bool:
        """Acknowledge through a write-ahead journal from now on; False: not available here."""
        return False

    def flush(self) -> None:
        """Make every write so far durable in full (for sites that defer part of it)."""

    def release_intents(self, names: Iterable[str]) -> None:
        """These objects are indexed durably: their crash-recovery intents can go."""

    def recover(self) -> "builtins.list[str]":
        """After a crash: names of objects written but perhaps never indexed."""
        return []

    def discard(self, name: str) -> None:
        """Remove an unacknowledged object that ``recover`` returned but that failed to open."""
