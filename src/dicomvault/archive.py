"""Opens an archive from its settings: keys, primary site, catalog, repository, ingestor.

Every entry point (serve, import, get, status...) goes through here, so they all see the
same archive the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dicomvault.catalog import Catalog
from dicomvault.config import Settings
from dicomvault.crypto import Keyring
from dicomvault.ingest import Ingestor
from dicomvault.repository import Repository
from dicomvault.sites import Site, open_site


@dataclass
class Archive:
    settings: Settings
    keyring: Keyring
    site: Site
    catalog: Catalog
    repository: Repository
    ingestor: Ingestor
    replication: Any = None  # the ReplicationService while `serve` runs (live site state)

    @classmethod
    def open(cls, settings: Settings) -> "Archive":
        keyring = Keyring.load(settings.site_key_file, settings.recovery_public_key_file)
        site = open_site(settings.primary_site_url)
        catalog = Catalog(settings.catalog_url)
        fallbacks = [(r.name, (lambda r=r: open_site(r.url, r.option_map))) for r in settings.replicas
                     if not r.is_pacs]  # a PACS cannot hand back sealed objects
        repository = Repository(site, keyring, settings.storage.compression_level, fallbacks)
        from dicomvault.jobs.quarantine import active

        repository.excluded = set(active(catalog))  # quarantined sites are not read from
        replicas = [replica.name for replica in settings.replicas]
        return cls(settings, keyring, site, catalog, repository, Ingestor(catalog, repository, keyring, replicas))

    def close(self) -> None:
        self.ingestor.committer.stop()  # queued catalog rows first, then the catalog itself
        self.catalog.close()
