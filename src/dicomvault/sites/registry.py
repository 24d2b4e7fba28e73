"""Which backend serves which site URL scheme.

Backends are named by module path and imported on first use: ``base.py`` then imports no
backend (no cycle), a backend never imports this module, and a process loads only the
SDKs of the sites it uses (boto3 for s3://, httpx for vault://). A new backend is one
line in ``BACKENDS`` (and one in ``tests/test_site_contract.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from .base import Site, SiteError


@dataclass(frozen=True)
class Backend:
    target: str  # "package.module:Class", a Site subclass with from_url(url, options)

    def load(self) -> type[Site]:
        module, _, name = self.target.partition(":")
        cls = getattr(importlib.import_module(module), name)
        if not (isinstance(cls, type) and issubclass(cls, Site)):
            raise SiteError(f"site backend {self.target} is not a Site")
        return cls


BACKENDS: dict[str, Backend] = {
    "file": Backend("dicomvault.sites.file:FileSite"),
    "s3": Backend("dicomvault.sites.s3:S3Site"),
    "vault": Backend("dicomvault.sites.vault:VaultSite"),
}


def open_site(url: str, options: Mapping[str, object] | None = None) -> Site:
    """The backend for ``url``; ``options`` are the backend's settings from the site's table."""
    scheme = urlparse(url).scheme
    backend = BACKENDS.get(scheme)
    if backend is None:
        known = ", ".join(f"{name}://" for name in BACKENDS)
        hint = " (a dicom:// PACS is a replication target, not a site)" if scheme == "dicom" else ""
        raise SiteError(f"unsupported site URL {url!r}: supported schemes are {known}{hint}")
    return backend.load().from_url(url, dict(options or {}))
