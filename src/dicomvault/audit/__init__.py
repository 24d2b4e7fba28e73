"""Append-only, hash-chained audit log (every store, read, config change and login).

Names are loaded on first use, so a light module of this package (``throttle``) does not
bring the catalog with it: the terminal side of `restore --in-server` must not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["AuditEvent", "ChainReport", "append", "verify_chain"]

if TYPE_CHECKING:
    from .chain import AuditEvent, ChainReport, append, verify_chain


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import chain

        return getattr(chain, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
