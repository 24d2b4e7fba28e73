"""Writing stored instances back out as Part-10 files, verified and audited."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import Catalog, VersionRecord
from dicomvault.archive.repository import IntegrityError, Repository


class RetrieveError(Exception):
    """Nothing matches, or a stored object failed verification."""


@dataclass(frozen=True)
class RetrievedFile:
    record: VersionRecord
    path: Path


def _safe(uid: str) -> str:
    return "".join(c for c in uid if c.isdigit() or c == ".") or "unknown"


def retrieve_to_dir(
    catalog: Catalog,
    repository: Repository,
    uid: str,
    out_dir: Path,
    actor: str,
    all_versions: bool = False,
    progress: Callable[[VersionRecord], None] | None = None,
) -> list[RetrievedFile]:
    """Write every (latest) version under ``uid`` as ``STUDY/SERIES/SOP[.vN].dcm``.

    Each file is checked against its recorded SHA-256 before it is written; a damaged object
    stops the retrieval with an error instead of producing a wrong file.
    """
    records = catalog.versions_for_uid(uid, all_versions=all_versions)
    if not records:
        raise RetrieveError(f"nothing stored under UID {uid} (not a known study, series or instance)")
    written: list[RetrievedFile] = []
    outcome, error = "success", ""
    try:
        for record in records:
            try:
                _meta, data = repository.load(record.object_id, record.sha256)
            except (IntegrityError, KeyError) as exc:
                raise RetrieveError(f"{record.sop_instance_uid} version {record.version}: {exc}") from exc
            folder = out_dir / _safe(record.study_uid) / _safe(record.series_uid)
            folder.mkdir(parents=True, exist_ok=True)
            suffix = f".v{record.version}" if all_versions else ""
            path = folder / f"{_safe(record.sop_instance_uid)}{suffix}.dcm"
            tmp = path.with_suffix(".partial")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            written.append(RetrievedFile(record, path))
            if progress is not None:
                progress(record)
    except RetrieveError as exc:
        outcome, error = "failure", str(exc)
        raise
    finally:
        with catalog.write() as conn:
            append(conn, AuditEvent(actor=actor, action="read", subject=uid, outcome=outcome,
                                    detail={"instances": len(written), "destination": str(out_dir), "error": error}))
    return written
