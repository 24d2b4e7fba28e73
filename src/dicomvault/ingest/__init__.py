"""Receiving: the DIMSE C-STORE SCP, folder import, and the ingest pipeline they share."""

from .pipeline import IngestRejected, IngestResult, Ingestor

__all__ = ["IngestRejected", "IngestResult", "Ingestor"]
