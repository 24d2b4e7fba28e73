"""What a reconcile run found: the report every other reconcile module reads or writes.

The comparison (``reconcile_compare``) fills it, the backfill (``reconcile_backfill``) adds
its part, persistence (``reconcile_runs``) stores it as a ``reconcile_runs`` row and JSON, and
the CLI prints it. It is plain data with no I/O, kept apart so that all of them can share it
without importing one another.

The result (:class:`ReconcileReport`)
-------------------------------------
- ``only_in_pacs``: studies the vault lacks entirely (patient, date, modalities, counts);
- ``only_in_vault``: studies the PACS no longer has (it may have purged them on purpose, so
  this is reported, never alerted);
- ``differing``: studies on both sides whose counts differ, with the differing series;
- totals (``missing_in_vault`` = studies wholly or partly missing in the vault, with
  ``missing_instances``; ``missing_in_pacs`` = studies wholly or partly only in the vault),
  chunks queried, C-FINDs sent, duration;
- ``backfill`` (:class:`BackfillReport`) when ``--backfill`` was asked.

A run's ``state`` is ``running``, then ``completed`` (the comparison ran; ``error`` holds a
backfill failure if any) or ``failed`` (could not run).
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from typing import Any

from dicomvault.peers.query import MoveResult

RUNNING, COMPLETED, FAILED = "running", "completed", "failed"


def dicom_date(day: _dt.date) -> str:
    return day.strftime("%Y%m%d")


@dataclass
class StudyInfo:
    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    modalities: str = ""  # backslash-separated
    series: int | None = None  # None: the side did not say
    instances: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid, "patient_id": self.patient_id, "patient_name": self.patient_name,
            "study_date": self.study_date, "study_time": self.study_time, "accession_number": self.accession_number,
            "modalities": [m for m in self.modalities.split("\\") if m], "series": self.series,
            "instances": self.instances,
        }


@dataclass
class SeriesInfo:
    series_uid: str
    modality: str = ""
    series_number: str = ""
    instances: int | None = None


@dataclass
class SeriesDiff:
    series_uid: str
    modality: str
    series_number: str
    pacs_instances: int | None  # None: the series is not in the PACS
    vault_instances: int | None  # None: the series is not in the vault

    @property
    def more(self) -> str:
        if self.vault_instances is None:
            return "pacs"
        if self.pacs_instances is None:
            return "vault"
        return "pacs" if self.pacs_instances > self.vault_instances else "vault"

    @property
    def missing_in_vault(self) -> int:
        return max(0, (self.pacs_instances or 0) - (self.vault_instances or 0))

    def to_dict(self) -> dict[str, Any]:
        return {"series_uid": self.series_uid, "modality": self.modality, "series_number": self.series_number,
                "pacs_instances": self.pacs_instances, "vault_instances": self.vault_instances, "more": self.more,
                "missing_in_vault": self.missing_in_vault}


@dataclass
class StudyDiff:
    """A study on both sides whose series or instance counts differ."""

    study: StudyInfo  # as the PACS describes it
    pacs_series: int | None
    pacs_instances: int | None
    vault_series: int
    vault_instances: int
    series: list[SeriesDiff] = field(default_factory=list)

    @property
    def more_in_pacs(self) -> bool:
        if self.series:
            return any(s.more == "pacs" for s in self.series)
        return (self.pacs_instances or 0) > self.vault_instances

    @property
    def more_in_vault(self) -> bool:
        if self.series:
            return any(s.more == "vault" for s in self.series)
        return self.pacs_instances is not None and self.pacs_instances < self.vault_instances

    @property
    def missing_instances(self) -> int:
        if self.series:
            return sum(s.missing_in_vault for s in self.series)
        return max(0, (self.pacs_instances or 0) - self.vault_instances)

    @property
    def more(self) -> str:
        return "both" if self.more_in_pacs and self.more_in_vault else ("pacs" if self.more_in_pacs else "vault")

    def to_dict(self) -> dict[str, Any]:
        return {**self.study.to_dict(), "pacs_series": self.pacs_series, "pacs_instances": self.pacs_instances,
                "vault_series": self.vault_series, "vault_instances": self.vault_instances, "more": self.more,
                "missing_instances": self.missing_instances, "series_detail": [s.to_dict() for s in self.series]}


@dataclass
class BackfillReport:
    destination: str
    studies: int = 0  # studies asked for (wholly or partly)
    moves_planned: int = 0
    moves: list[MoveResult] = field(default_factory=list)
    backfilled_instances: int = 0  # newly indexed in the vault for the moved studies
    studies_complete: int = 0  # moved studies that now match the PACS
    still_missing: int = 0  # moved studies still (partly) missing
    not_indexed: list[str] = field(default_factory=list)  # studies the wait for indexing gave up on
    index_wait_seconds: float = 0.0
    error: str | None = None

    @property
    def moved_instances(self) -> int:
        return sum(m.completed + m.warning for m in self.moves)

    @property
    def failed_suboperations(self) -> int:
        return sum(m.failed for m in self.moves)

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        moves = self.moves if limit is None else self.moves[:limit]
        return {
            "destination": self.destination, "studies": self.studies, "moves_planned": self.moves_planned,
            "moves_done": len(self.moves), "moves_failed": sum(1 for m in self.moves if not m.ok),
            "moved_instances": self.moved_instances, "failed_suboperations": self.failed_suboperations,
            "backfilled_instances": self.backfilled_instances, "studies_complete": self.studies_complete,
            "still_missing": self.still_missing, "not_indexed": self.not_indexed[: limit or None],
            "index_wait_seconds": round(self.index_wait_seconds, 3), "error": self.error,
            "moves": [m.to_dict() for m in moves], "moves_truncated": len(self.moves) - len(moves),
        }


@dataclass
class ReconcileReport:
    peer: str
    peer_ae_title: str
    peer_address: str
    our_ae_title: str
    date_from: str
    date_to: str
    chunk_days: int
    backfill_requested: bool
    actor: str
    run_id: int | None = None
    state: str = RUNNING
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    chunks: int = 0  # date chunks queried (one STUDY C-FIND on each side per chunk)
    chunks_planned: int = 0
    pacs_queries: dict[str, int] = field(default_factory=lambda: {"study_chunks": 0, "study_by_uid": 0,
                                                                  "series": 0, "image": 0})
    pacs_studies: int = 0  # studies the PACS listed for the range
    vault_studies: int = 0  # studies the vault listed for the range
    in_both: int = 0
    only_in_pacs: list[StudyInfo] = field(default_factory=list)
    only_in_vault: list[StudyInfo] = field(default_factory=list)
    differing: list[StudyDiff] = field(default_factory=list)
    dates_differ: list[dict[str, str]] = field(default_factory=list)
    backfill: BackfillReport | None = None

    @property
    def duration_seconds(self) -> float:
        return round((self.finished_at or time.time()) - self.started_at, 3)

    @property
    def missing_in_vault(self) -> int:
        """Studies wholly or partly missing in the vault."""
        return len(self.only_in_pacs) + sum(1 for d in self.differing if d.more_in_pacs)

    @property
    def missing_instances(self) -> int:
        """Instances missing in the vault, as far as the PACS's counts tell."""
        return sum(s.instances or 0 for s in self.only_in_pacs) + sum(d.missing_instances for d in self.differing)

    @property
    def missing_in_pacs(self) -> int:
        return len(self.only_in_vault) + sum(1 for d in self.differing if d.more_in_vault)

    @property
    def backfilled_instances(self) -> int:
        return self.backfill.backfilled_instances if self.backfill else 0

    def totals(self) -> dict[str, int]:
        return {
            "pacs_studies": self.pacs_studies, "vault_studies": self.vault_studies, "in_both": self.in_both,
            "matching": self.in_both - len(self.differing), "only_in_pacs": len(self.only_in_pacs),
            "only_in_vault": len(self.only_in_vault), "differing": len(self.differing),
            "missing_in_vault": self.missing_in_vault, "missing_instances": self.missing_instances,
            "missing_in_pacs": self.missing_in_pacs, "backfilled_instances": self.backfilled_instances,
        }

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        def capped(items: list[Any]) -> list[Any]:
            return items if limit is None else items[:limit]

        result = {
            "run_id": self.run_id, "state": self.state, "error": self.error, "peer": self.peer,
            "peer_ae_title": self.peer_ae_title, "peer_address": self.peer_address,
            "our_ae_title": self.our_ae_title, "date_from": self.date_from, "date_to": self.date_to,
            "chunk_days": self.chunk_days, "chunks": self.chunks, "chunks_planned": self.chunks_planned,
            "pacs_queries": dict(self.pacs_queries), "backfill_requested": self.backfill_requested,
            "actor": self.actor, "started_at": self.started_at, "finished_at": self.finished_at,
            "duration_seconds": self.duration_seconds, "totals": self.totals(),
            "only_in_pacs": [s.to_dict() for s in capped(self.only_in_pacs)],
            "only_in_vault": [s.to_dict() for s in capped(self.only_in_vault)],
            "differing": [d.to_dict() for d in capped(self.differing)],
            "dates_differ": capped(self.dates_differ),
            "backfill": self.backfill.to_dict(limit) if self.backfill else None,
        }
        if limit is not None:
            result["truncated"] = {name: max(0, len(items) - limit) for name, items in (
                ("only_in_pacs", self.only_in_pacs), ("only_in_vault", self.only_in_vault),
                ("differing", self.differing), ("dates_differ", self.dates_differ))}
        return result


def newest_first(study: StudyInfo) -> tuple[int, str, str, str]:
    """Sort key (with ``reverse=True``): newest study first, undated ones last."""
    return (1 if study.study_date else 0, study.study_date, study.study_time, study.study_uid)
