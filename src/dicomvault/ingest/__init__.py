"""Receiving: the DIMSE C-STORE SCP, folder import, and the ingest pipeline they share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import IngestRejected, IngestResult, Ingestor

__all__ = ["IngestRejected", "IngestResult", "Ingestor"]


def __getattr__(name: str) -> Any:
    """The pipeline (and prometheus_client with it) loads on first use, so importing a sibling
    such as ``ingest.commitment`` (for ``status``) does not pay for it."""
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
