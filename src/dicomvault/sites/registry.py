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
from typing import Any
from urllib.parse import urlparse

from .base import Capabilities, Site, SiteError


@dataclass(frozen=True)
class Backend:
    target: str  # "package.module:Class", a Site subclass with from_url(url, options)
    # Told to the site when its class does not declare them itself (dicom.py, being moved
    # out of sites/: until then the registry says it sees plaintext and vouches by checksum).
    capabilities: Capabilities | None = None

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
    "dicom": Backend("dicomvault.sites.dicom:DicomSite", Capabilities(checksums=True, plaintext=True)),
}


def open_site(url: str, options: Mapping[str, object] | None = None, opener: Any = None) -> Site:
    """The backend for ``url``; ``options`` are the backend's settings from the site's table.

    ``opener`` (sealed bytes -> metadata, original bytes) goes only to a plaintext site
    (``dicom://``), the one kind of target that must decrypt.
    """
    scheme = urlparse(url).scheme
    backend = BACKENDS.get(scheme)
    if backend is None:
        known = ", ".join(f"{name}://" for name in BACKENDS)
        raise SiteError(f"unsupported site URL {url!r}: supported schemes are {known}")
    cls = backend.load()
    capabilities = backend.capabilities or cls.capabilities
    site: Site
    if capabilities.plaintext:
        site = cls.from_url(url, dict(options or {}), opener)  # type: ignore[call-arg]
    else:
        site = cls.from_url(url, dict(options or {}))
    if backend.capabilities is not None:
        site.capabilities = backend.capabilities
    return site
