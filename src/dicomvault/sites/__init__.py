"""Where objects live: one small interface, one module per backend."""

from .base import Site, SiteError, ObjectExists, open_site

__all__ = ["ObjectExists", "Site", "SiteError", "open_site"]
