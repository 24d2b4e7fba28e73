"""Opens an archive from its settings: keys, primary site, catalog, repository, ingestor.

Every entry point (serve, import, get, status...) goes through here, so they all see the
same archive the same way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dicomvault.catalog import Catalog
from dicomvault.catalog.permissions import restrict
from dicomvault.config import Settings
from dicomvault.crypto import Keyring
from dicomvault.archive.keystore import KeyStore
from dicomvault.archive.repository import Repository
from dicomvault.sites import Site, open_site

if TYPE_CHECKING:
    from dicomvault.archive.write import Ingestor


@dataclass
class Archive:
    settings: Settings
    keyring: Keyring
    site: Site
    catalog: Catalog
    repository: Repository
    replication: Any = None  # the ReplicationService while `serve` runs (live site state)
    _ingestor: Ingestor | None = field(default=None, repr=False)
    _ingestor_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, settings: Settings) -> "Archive":
        # The data directory holds the catalog, keys and journal: nobody else lists or enters it.
        restrict(settings.base_dir, 0o700, "data directory")
        keyring = Keyring.load(settings.site_key_file, settings.recovery_public_key_file)
        site = open_site(settings.primary_site_url)
        catalog = Catalog(settings.catalog_url)
        fallbacks = [(r.name, (lambda r=r: open_site(r.url, r.option_map))) for r in settings.replicas
                     if not r.is_pacs]  # a PACS cannot hand back sealed objects
        keys = KeyStore(catalog, keyring, site)
        repository = Repository(site, keyring, keys, settings.storage.compression_level, fallbacks)
        from dicomvault.archive.quarantine import active

        repository.excluded = set(active(catalog))  # quarantined sites are not read from
        return cls(settings, keyring, site, catalog, repository)

    @property
    def ingestor(self) -> Ingestor:
        """The ingest pipeline, built on first use: commands that only read (verify, status,
        get, restore...) neither import it (prometheus_client) nor start its committer thread."""
        with self._ingestor_lock:
            if self._ingestor is None:
                from dicomvault.archive.copies import owed_sites
                from dicomvault.archive.write import Ingestor

                self._ingestor = Ingestor(self.catalog, self.repository, self.keyring, owed_sites(self.settings),
                                          journal=self.settings.storage.journal,
                                          rejection_delay=self.settings.iocm.delete_after_seconds)
                self._ingestor.retention = self.settings.retention
                self.catalog.on_followed = self._ingestor.follow_corrections
                self.catalog.on_deleted.append(self._ingestor.forget_cached)
            return self._ingestor

    @property
    def keys(self) -> KeyStore:
        return self.repository.keys

    def close(self) -> None:
        if self._ingestor is not None:
            self._ingestor.committer.stop()  # queued catalog rows first, then the catalog itself
        self.site.close()  # a journal's unreleased records stay for the next process's recovery
        self.catalog.close()
