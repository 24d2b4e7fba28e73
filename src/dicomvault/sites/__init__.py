"""Where objects live: one small interface, one module per backend."""

from .base import Capabilities, DeletionRefused, ObjectExists, ObjectRetention, Site, SiteError
from .registry import open_site

__all__ = ["Capabilities", "DeletionRefused", "ObjectExists", "ObjectRetention", "Site", "SiteError", "open_site"]
