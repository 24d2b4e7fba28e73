"""The site interface every backend implements (modelled on Litestream's ReplicaClient).

Sites only ever see sealed (encrypted) objects and opaque keyed names; they never need a key.
"""

from __future__ import annotations

import abc
import builtins
import re
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import urlparse

# Catalog snapshot names sort by time: ``catalog-20261123T101500.123Z-1a2b3c4d`` (UTC, to the
# millisecond, so two snapshots taken within one second still sort in the order they were
# taken; the random suffix only keeps names unique). Names without milliseconds, written
# before, are still read.
SNAPSHOT_NAME = re.compile(r"^catalog-\d{8}T\d{6}(\.\d{3})?Z-[0-9a-f]{8}$")


def valid_snapshot_name(name: str) -> str:
    if not SNAPSHOT_NAME.match(name):
        raise SiteError(f"invalid catalog snapshot name {name!r}")
    return name


class SiteError(Exception):
    """The site could not do what was asked (unreachable, full, read-only...)."""


class ObjectExists(SiteError):
    """put_if_absent found an object of that name already there."""


class Site(abc.ABC):
    url: str

    @abc.abstractmethod
    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Durably store ``data`` under ``name`` unless it exists. True if written now.

        Returns only once the object is on stable storage (write-once: never overwrites).
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

    # Encrypted catalog snapshots (jobs/snapshot.py), a small namespace beside the objects so
    # that this site alone plus the recovery key can rebuild the catalog (promise 3). Sites
    # that cannot hold them (a PACS) keep these defaults.

    supports_snapshots = False

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

    # Crash-recovery journal. A backend whose put_if_absent is fully durable by itself
    # (an object store's confirmed PUT) keeps these no-ops.

    def flush(self) -> None:
        """Make every write so far durable in full (for sites that defer part of it)."""

    def release_intents(self, names: Iterable[str]) -> None:
        """These objects are indexed durably: their crash-recovery intents can go."""

    def recover(self) -> "builtins.list[str]":
        """After a crash: names of objects written but perhaps never indexed."""
        return []

    def discard(self, name: str) -> None:
        """Remove an unacknowledged object that ``recover`` returned but that failed to open."""


def open_site(url: str, options: Mapping[str, object] | None = None) -> Site:
    """The backend for ``url``; ``options`` are the backend's settings from the site's table."""
    scheme = urlparse(url).scheme
    options = dict(options or {})
    if scheme == "file":
        if options:
            raise SiteError(f"file site {url}: unknown option(s) {', '.join(sorted(options))}")
        from .file import FileSite

        return FileSite.from_url(url)
    if scheme == "s3":
        from .s3 import S3Site

        return S3Site.from_url(url, options)
    if scheme == "vault":
        from .vault import VaultSite

        return VaultSite.from_url(url, options)
    raise SiteError(f"unsupported site URL {url!r}: supported schemes are file://, s3:// and vault://"
                    + (" (a dicom:// PACS is a replication target, not a site)" if scheme == "dicom" else ""))
