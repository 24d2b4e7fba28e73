"""The backfill of a reconcile run: have the PACS C-MOVE what the vault lacks, wait until the
vault has indexed it, then re-compare the moved studies.

Kept apart from the comparison (``reconcile_compare``), which it runs after and reuses for the
re-compare, because it is the one part of a run that changes the vault and depends on
``dicomvault serve`` receiving what the PACS sends.

``--backfill`` asks the PACS to C-MOVE to our AE title (``[dicom] ae_title``) every study it
alone has (STUDY level) and every series the vault lacks or holds fewer instances of
(SERIES level; the vault de-duplicates instances it already has), one move at a time, newest
study first. The PACS must know the vault as a DICOM node and ``dicomvault serve`` must be
running (checked first: nothing listening on our DICOM port fails the backfill at once). The
vault acknowledges instances once durable and indexes them a moment later (group commit), so
the run then polls the catalog until the moved instances show up (it gives up after
``settle_timeout`` seconds without a newly indexed instance), re-compares the moved studies
and reports what was backfilled and what is still missing. Seeding a new vault from an
existing PACS archive is the same operation over a long range.
"""

from __future__ import annotations

import socket
import time

from dicomvault.config import Settings
from dicomvault.jobs.reconcile.compare import Comparison, vault_studies_by_uid
from dicomvault.peers.query import PacsError
from dicomvault.jobs.reconcile.report import BackfillReport, StudyInfo, newest_first

_MAX_CONSECUTIVE_MOVE_FAILURES = 3


class Backfill:
    """The backfill after ``comparison`` (same association, report and progress); :meth:`run`
    fills ``report.backfill``, and updates the report's comparison for the moved studies."""

    def __init__(self, comparison: Comparison, settings: Settings, our_ae: str, settle_timeout: float) -> None:
        self.comparison = comparison
        self.settings = settings
        self.our_ae = our_ae
        self.settle_timeout = settle_timeout
        self.catalog = comparison.catalog
        self.report = comparison.report
        self.progress = comparison.progress
        self.cancelled = comparison.cancelled

    def _vault_listening(self) -> str | None:
        """None when something accepts connections on our DICOM port, else why not."""
        bind = self.settings.dicom.bind
        host = "127.0.0.1" if bind in ("", "0.0.0.0", "::") else bind
        port = self.settings.dicom.port or self.settings.dicom.tls_port  # port = 0: TLS only
        try:
            with socket.create_connection((host, port), timeout=5):
                return None
        except OSError as exc:
            return (f"the vault's DICOM listener ({self.our_ae} on {host}:{port}) is not running "
                    f"({exc.strerror or exc}): start `dicomvault serve` so the PACS can send the missing instances")

    def run(self) -> None:
        """Move, wait for indexing, re-compare. A move that fails ends the moves (after
        ``_MAX_CONSECUTIVE_MOVE_FAILURES`` in a row, or at once when fatal) and is recorded in
        ``report.backfill.error``; an interrupt, or a PACS failure while re-comparing, raises
        :class:`PacsError` (the run fails)."""
        r, client = self.report, self.comparison.client
        result = r.backfill = BackfillReport(destination=self.our_ae)
        # (study, series or None) to move, newest study first.
        targets: list[tuple[StudyInfo, str | None]] = [(s, None) for s in r.only_in_pacs]
        for diff in r.differing:
            if not diff.more_in_pacs:
                continue
            short = [s.series_uid for s in diff.series if s.more == "pacs"]
            targets += [(diff.study, uid) for uid in short] if short else [(diff.study, None)]
        targets.sort(key=lambda target: newest_first(target[0]), reverse=True)
        studies = {study.study_uid for study, _ in targets}
        result.studies, result.moves_planned = len(studies), len(targets)
        if not targets:
            return
        reason = self._vault_listening()
        if reason:
            result.error = reason
            return
        vault = self.comparison.vault
        before = {uid: (vault[uid].instances or 0) if uid in vault else 0 for uid in studies}
        delivered: dict[str, int] = dict.fromkeys(studies, 0)
        failures_in_a_row = 0
        hint = (f"check that the PACS has our AE title {self.our_ae} at this host and the vault's DICOM port "
                f"{self.settings.dicom.port}, and that `dicomvault serve` is running")
        self.progress("backfill", 0, len(targets))
        for i, (study, series_uid) in enumerate(targets):
            try:
                move = client.move(self.our_ae, study.study_uid, series_uid, hint=hint)
            except PacsError as exc:
                result.error = f"stopped after {i} of {len(targets)} moves: {exc}"
                break
            result.moves.append(move)
            delivered[study.study_uid] += move.completed + move.warning
            self.progress("backfill", i + 1, len(targets))
            if move.error:
                failures_in_a_row = 0 if move.completed else failures_in_a_row + 1
                fatal = move.status == 0xA801 or not client.can_move
                if fatal or failures_in_a_row >= _MAX_CONSECUTIVE_MOVE_FAILURES:
                    result.error = move.error if fatal or i + 1 == len(targets) else (
                        f"stopped after {i + 1} of {len(targets)} moves, the last {failures_in_a_row} failed: "
                        f"{move.error}")
                    break
            else:
                failures_in_a_row = 0
        if result.error is None and result.moves and all(m.error for m in result.moves):
            result.error = result.moves[-1].error
        self._await_indexing(result, before, delivered)
        self._recompare(result, studies, before)

    def _await_indexing(self, result: BackfillReport, before: dict[str, int], delivered: dict[str, int]) -> None:
        """Poll the catalog until the moved instances are indexed (or nothing new shows up for
        ``settle_timeout`` seconds): the vault indexes a moment after acknowledging."""
        pacs = self.comparison.pacs
        expected: dict[str, int] = {}
        for uid, sent in delivered.items():
            if not sent:
                continue
            pacs_count = pacs[uid].instances if uid in pacs else None
            target = before[uid] + sent
            expected[uid] = min(target, pacs_count) if pacs_count is not None else target
        if not expected:
            return
        total = sum(expected[u] - before[u] for u in expected)
        started = last_change = time.monotonic()
        last_seen = -1
        while True:
            seen = vault_studies_by_uid(self.catalog, expected)
            waiting = [u for u in expected if (seen[u].instances if u in seen else 0) < expected[u]]
            indexed = sum(min(expected[u], seen[u].instances or 0) - before[u] for u in expected if u in seen)
            self.progress("indexing", max(0, indexed), total)
            if not waiting:
                break
            now = time.monotonic()
            if indexed != last_seen:
                last_seen, last_change = indexed, now
            elif now - last_change >= self.settle_timeout:
                result.not_indexed = waiting
                break
            if self.cancelled.wait(0.05):
                raise PacsError("reconcile interrupted (stopping)")
        result.index_wait_seconds = time.monotonic() - started

    def _recompare(self, result: BackfillReport, studies: set[str], before: dict[str, int]) -> None:
        r, comparison = self.report, self.comparison
        now = vault_studies_by_uid(self.catalog, studies)
        result.backfilled_instances = sum(max(0, (now[u].instances or 0) - before[u]) for u in now)
        r.only_in_pacs = [s for s in r.only_in_pacs if s.study_uid not in studies]
        r.differing = [d for d in r.differing if d.study.study_uid not in studies]
        for uid in sorted(studies):
            pacs = comparison.pacs[uid]
            if uid not in now:
                r.only_in_pacs.append(pacs)
                result.still_missing += 1
                continue
            if uid not in comparison.vault:  # was only in the PACS: now on both sides
                r.in_both += 1
                r.vault_studies += 1
            comparison.vault[uid] = now[uid]
            diff = None if comparison.counts_agree(pacs, now[uid]) else comparison.compare_study(pacs, now[uid])
            if diff is None:
                result.studies_complete += 1
                continue
            r.differing.append(diff)
            if diff.more_in_pacs:
                result.still_missing += 1
            else:
                result.studies_complete += 1
        r.only_in_pacs.sort(key=newest_first, reverse=True)
        r.differing.sort(key=lambda d: newest_first(d.study), reverse=True)
