"""The comparison itself: which studies, series and instances one side has and the other lacks.

Kept apart from the run around it (``reconcile``: input, lifecycle, persistence) so that the
backfill (``reconcile_backfill``) can re-compare the studies it moved with the same code. It
reads the vault's catalog directly and the PACS through the run's :class:`PacsClient`, and
fills the run's :class:`ReconcileReport`.

How a run compares (:meth:`Comparison.compare_range`)
-----------------------------------------------------
1. **Study level, one date chunk at a time.** The range ``--since``..``--until`` is cut into
   chunks of ``--chunk-days`` days, newest first. Per chunk: one Study Root C-FIND at STUDY
   level on the PACS (``StudyDate=A-B``; return keys StudyInstanceUID, StudyDate, StudyTime,
   PatientID, PatientName, AccessionNumber, ModalitiesInStudy, NumberOfStudyRelatedSeries,
   NumberOfStudyRelatedInstances) and the same query on the vault's catalog through the
   C-FIND/QIDO engine (``catalog.query.run_query``). One association serves the whole run.
2. **Strays by UID.** A study one side listed and the other did not is looked up by its
   Study Instance UID on the other side before it is called missing (UID lists, in batches):
   that catches a study whose StudyDate differs between the two (corrected in the PACS after
   the vault received it) or a PACS that returns undated studies for a range. Such studies
   count as present on both sides; a differing date is listed in ``dates_differ``.
3. **Counts.** A study on both sides whose NumberOfStudyRelatedSeries/Instances differ, or
   whose counts the PACS did not return, is compared at SERIES level on both sides
   (SeriesInstanceUID, Modality, SeriesNumber, NumberOfSeriesRelatedInstances); a PACS that
   does not fill the series count either is counted at IMAGE level (one C-FIND per series).
   The differing series say which side has more.

Undated studies (empty StudyDate) are outside every date range: the vault's query engine never
matches an empty date against a range, and most PACS (Orthanc among them) do not either for a
closed range ``A-B``. They are therefore not reconciled by date; a PACS that does return them
gets them compared by UID like any stray. Series have no date of their own: they are always
compared within their study.
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections.abc import Callable, Iterable
from typing import Any

from dicomvault.catalog import Catalog
from dicomvault.catalog.query import Query, run_query
from dicomvault.peers.query import PacsClient, PacsError, count, text
from dicomvault.jobs.reconcile.report import (
    ReconcileReport, SeriesDiff, SeriesInfo, StudyDiff, StudyInfo, dicom_date, newest_first,
)

_PACS_UID_BATCH = 50  # Study Instance UIDs per UID-list C-FIND (strays)
_VAULT_UID_BATCH = 500

Progress = Callable[[str, int, "int | None"], None]  # (stage, done, total)


def date_chunks(since: _dt.date, until: _dt.date, days: int) -> list[tuple[str, str]]:
    """(from, to) DICOM dates covering since..until inclusive, ``days`` per chunk, newest first."""
    chunks = []
    end = until
    while end >= since:
        start = max(since, end - _dt.timedelta(days=days - 1))
        chunks.append((dicom_date(start), dicom_date(end)))
        end = start - _dt.timedelta(days=1)
    return chunks


# --- the vault side -----------------------------------------------------------------------

_STUDY_FILTERS = {k: "" for k in ("StudyInstanceUID", "StudyDate", "StudyTime", "PatientID", "PatientName",
                                  "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                                  "NumberOfStudyRelatedInstances")}


def _vault_study(row: dict[str, str]) -> StudyInfo:
    return StudyInfo(
        study_uid=row["StudyInstanceUID"], patient_id=row["PatientID"], patient_name=row["PatientName"],
        study_date=row["StudyDate"], study_time=row["StudyTime"], accession_number=row["AccessionNumber"],
        modalities=row["ModalitiesInStudy"], series=count(row, "NumberOfStudyRelatedSeries") or 0,
        instances=count(row, "NumberOfStudyRelatedInstances") or 0,
    )


def vault_studies(catalog: Catalog, **match: str) -> dict[str, StudyInfo]:
    """The vault's studies matching ``match`` (C-FIND matching rules), by Study Instance UID."""
    rows = run_query(catalog, Query(level="STUDY", filters={**_STUDY_FILTERS, **match}))
    return {row["StudyInstanceUID"]: _vault_study(row) for row in rows}


def vault_studies_by_uid(catalog: Catalog, uids: Iterable[str]) -> dict[str, StudyInfo]:
    uids = sorted(set(uids))
    found: dict[str, StudyInfo] = {}
    for i in range(0, len(uids), _VAULT_UID_BATCH):
        found.update(vault_studies(catalog, StudyInstanceUID="\\".join(uids[i:i + _VAULT_UID_BATCH])))
    return found


def vault_series(catalog: Catalog, study_uid: str) -> dict[str, SeriesInfo]:
    rows = run_query(catalog, Query(level="SERIES", filters={
        "StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "Modality": "", "SeriesNumber": "",
        "NumberOfSeriesRelatedInstances": ""}))
    return {r["SeriesInstanceUID"]: SeriesInfo(r["SeriesInstanceUID"], r["Modality"], r["SeriesNumber"],
                                               count(r, "NumberOfSeriesRelatedInstances") or 0) for r in rows}


def _pacs_study(ds: Any) -> StudyInfo:
    return StudyInfo(
        study_uid=text(ds, "StudyInstanceUID"), patient_id=text(ds, "PatientID"),
        patient_name=text(ds, "PatientName"), study_date=text(ds, "StudyDate"), study_time=text(ds, "StudyTime"),
        accession_number=text(ds, "AccessionNumber"), modalities=text(ds, "ModalitiesInStudy"),
        series=count(ds, "NumberOfStudyRelatedSeries"), instances=count(ds, "NumberOfStudyRelatedInstances"),
    )


# --- the comparison -----------------------------------------------------------------------


class Comparison:
    """The comparison of one run: what each side described (``pacs``, ``vault``, by Study
    Instance UID) and the report it fills. Uses the run's open PACS association."""

    def __init__(self, catalog: Catalog, client: PacsClient, report: ReconcileReport, progress: Progress,
                 cancelled: threading.Event) -> None:
        self.catalog = catalog
        self.client = client
        self.report = report
        self.progress = progress
        self.cancelled = cancelled
        self.pacs: dict[str, StudyInfo] = {}  # every study the PACS described, by UID
        self.vault: dict[str, StudyInfo] = {}

    def compare_range(self, since: _dt.date, until: _dt.date, chunk_days: int) -> None:
        """Compare every study dated since..until (steps 1-3 above) into the report."""
        r, client = self.report, self.client
        chunks = date_chunks(since, until, chunk_days)
        r.chunks_planned = len(chunks)
        self.progress("querying by date", 0, len(chunks))
        pacs: dict[str, StudyInfo] = {}
        vault: dict[str, StudyInfo] = {}
        for i, (low, high) in enumerate(chunks):
            found = client.studies({"StudyDate": f"{low}-{high}"})
            r.pacs_queries["study_chunks"] += 1
            for ds in found:
                study = _pacs_study(ds)
                if study.study_uid:
                    pacs[study.study_uid] = study
            vault.update(vault_studies(self.catalog, StudyDate=f"{low}-{high}"))
            r.chunks += 1
            self.progress("querying by date", i + 1, len(chunks))
        r.pacs_studies, r.vault_studies = len(pacs), len(vault)
        self.pacs.update(pacs)

        # Strays: listed by one side only; look them up by UID on the other before calling them missing.
        pacs_only = sorted(set(pacs) - set(vault))
        if pacs_only:
            vault.update(vault_studies_by_uid(self.catalog, pacs_only))
        vault_only = sorted(set(vault) - set(pacs))
        if vault_only:
            found_in_pacs = self._pacs_by_uid(vault_only)
            pacs.update(found_in_pacs)
            self.pacs.update(found_in_pacs)
        self.vault = vault

        both = sorted(set(pacs) & set(vault))
        r.in_both = len(both)
        for uid in both:
            if pacs[uid].study_date != vault[uid].study_date:
                r.dates_differ.append({"study_uid": uid, "pacs": pacs[uid].study_date, "vault": vault[uid].study_date})
        r.only_in_pacs = sorted((pacs[u] for u in set(pacs) - set(vault)), key=newest_first, reverse=True)
        r.only_in_vault = sorted((vault[u] for u in set(vault) - set(pacs)), key=newest_first, reverse=True)
        to_check = [u for u in both if not self.counts_agree(pacs[u], vault[u])]
        self.progress("comparing series", 0, len(to_check))
        for i, uid in enumerate(to_check):
            diff = self.compare_study(pacs[uid], vault[uid])
            if diff is not None:
                r.differing.append(diff)
            self.progress("comparing series", i + 1, len(to_check))
        r.differing.sort(key=lambda d: newest_first(d.study), reverse=True)

    def _pacs_by_uid(self, uids: list[str]) -> dict[str, StudyInfo]:
        client = self.client
        found: dict[str, StudyInfo] = {}
        for i in range(0, len(uids), _PACS_UID_BATCH):
            batch = uids[i:i + _PACS_UID_BATCH]
            try:
                answers = client.studies({"StudyInstanceUID": "\\".join(batch)})
                self.report.pacs_queries["study_by_uid"] += 1
            except PacsError:
                if len(batch) == 1 or self.cancelled.is_set():
                    raise
                answers = []  # a PACS without UID-list matching: one query per UID
                for uid in batch:
                    answers += client.studies({"StudyInstanceUID": uid})
                    self.report.pacs_queries["study_by_uid"] += 1
            for ds in answers:
                study = _pacs_study(ds)
                if study.study_uid in batch:  # a PACS ignoring the key would list everything
                    found[study.study_uid] = study
        return found

    @staticmethod
    def counts_agree(pacs: StudyInfo, vault: StudyInfo) -> bool:
        return (pacs.instances is not None and pacs.series is not None
                and pacs.instances == vault.instances and pacs.series == vault.series)

    def _pacs_series(self, study_uid: str) -> dict[str, SeriesInfo]:
        client = self.client
        result: dict[str, SeriesInfo] = {}
        self.report.pacs_queries["series"] += 1
        for ds in client.series(study_uid):
            uid = text(ds, "SeriesInstanceUID")
            if uid:
                result[uid] = SeriesInfo(uid, text(ds, "Modality"), text(ds, "SeriesNumber"),
                                         count(ds, "NumberOfSeriesRelatedInstances"))
        for info in result.values():
            if info.instances is None:  # the PACS does not fill the series count: count its instances
                self.report.pacs_queries["image"] += 1
                info.instances = client.instance_count(study_uid, info.series_uid)
        return result

    def compare_study(self, pacs: StudyInfo, vault: StudyInfo) -> StudyDiff | None:
        """Series-level comparison of one study on both sides; None when they agree."""
        pacs_series = self._pacs_series(pacs.study_uid)
        mine = vault_series(self.catalog, pacs.study_uid)
        diffs: list[SeriesDiff] = []
        for uid in sorted(set(pacs_series) | set(mine)):
            p, v = pacs_series.get(uid), mine.get(uid)
            if p is not None and v is not None and p.instances == v.instances:
                continue
            described = p or v
            assert described is not None
            diffs.append(SeriesDiff(uid, described.modality, described.series_number,
                                    None if p is None else p.instances, None if v is None else v.instances))
        pacs_instances = pacs.instances if pacs.instances is not None else sum(
            s.instances or 0 for s in pacs_series.values())
        pacs_count = pacs.series if pacs.series is not None else len(pacs_series)
        vault_instances = sum(s.instances or 0 for s in mine.values())
        if not diffs and pacs_instances == vault_instances:
            return None  # the study-level counts were missing, or off while every series agrees
        diffs.sort(key=lambda d: (len(d.series_number), d.series_number, d.series_uid))
        return StudyDiff(pacs, pacs_count, pacs_instances, len(mine), vault_instances, diffs)
