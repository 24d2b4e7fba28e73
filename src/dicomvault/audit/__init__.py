"""Append-only, hash-chained audit log (every store, read, config change and login)."""

from .chain import AuditEvent, ChainReport, append, verify_chain

__all__ = ["AuditEvent", "ChainReport", "append", "verify_chain"]
