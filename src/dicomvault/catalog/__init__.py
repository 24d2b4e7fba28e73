"""The catalog: an index of what the archive holds (never the only copy of anything)."""

from .db import Catalog, CatalogError
from dicomvault.dicom.records import InstanceAttributes, VersionRecord

__all__ = ["Catalog", "CatalogError", "InstanceAttributes", "VersionRecord"]
