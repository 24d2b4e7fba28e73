"""The object core: opening an archive, the write path to a durable acknowledgement, sealing
and opening objects behind the SHA-256 gate, and what copies each object is owed.

``Archive`` is loaded on first use so that importing a sibling (``archive.quarantine`` for
``status``) does not pay for SQLAlchemy and cryptography.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive

__all__ = ["Archive"]


def __getattr__(name: str) -> Any:
    if name == "Archive":
        from dicomvault.archive.core import Archive

        return Archive
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
