"""Reconcile the vault with a PACS: what does the PACS hold that the vault does not (and back)?

Nobody should have to trust that "the backup is running". ``dicomvault reconcile --pacs PEER
--since DATE`` (and the ``[reconcile]`` schedule inside ``dicomvault serve``) compares the two
study by study and says what is missing; ``--backfill`` asks the PACS to send it.

This module is the entry point: it checks the request (bad input, an unknown peer or bad
dates, is refused with :class:`ReconcileError` before a run starts) and runs one reconcile
(:class:`Reconciler`): record the run, open one association with the PACS, compare, backfill
if asked, record the outcome. A PACS problem never raises out of :meth:`Reconciler.run`: the
run is recorded as ``failed`` with the reason. The parts, lowest level first (each module's
docstring says more):

- ``reconcile_pacs``: the DICOM client side (C-FIND / C-MOVE SCU, one association per run);
- ``reconcile_report``: the report (:class:`ReconcileReport`) and the run states;
- ``reconcile_compare``: the comparison itself (date chunks, vault side vs PACS side, strays
  by UID, series and instance counts);
- ``reconcile_backfill``: the C-MOVE backfill and the wait until the vault has indexed it;
- ``reconcile_runs``: the ``reconcile_runs`` table, the audit, and ``reconcile_status`` (for
  ``dicomvault status``, with its alerts);
- ``reconcile_schedule``: the ``[reconcile]`` schedule inside ``dicomvault serve``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
from typing import Any

from dicomvault.catalog import Catalog
from dicomvault.config import PeerSettings, Settings, describe_peers, find_peer
from dicomvault.jobs.reconcile.backfill import Backfill
from dicomvault.jobs.reconcile.compare import Comparison, Progress
from dicomvault.peers.query import PacsClient, PacsError
from dicomvault.jobs.reconcile.report import COMPLETED, FAILED, ReconcileReport, dicom_date
from dicomvault.jobs.reconcile.runs import abandon_run, finish_run, start_run

log = logging.getLogger(__name__)


class ReconcileError(Exception):
    """The reconcile cannot start as asked (unknown peer, bad dates): the message says why."""


# --- input --------------------------------------------------------------------------------


def parse_date(label: str, value: str) -> _dt.date:
    raw = (value or "").strip()
    if len(raw) != 8 or not raw.isdigit():
        raise ReconcileError(f"{label} must be a date as YYYYMMDD, got {value!r}")
    try:
        return _dt.date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
    except ValueError:
        raise ReconcileError(f"{label} {value!r} is not a valid calendar date") from None


def resolve_peer(settings: Settings, name: str) -> PeerSettings:
    """A ``[peers.NAME]`` entry by name or AE title (exact first, then ignoring case)."""
    wanted = (name or "").strip()
    peer = find_peer(settings.peers, wanted) or find_peer(settings.peers, wanted, ignore_case=True)
    if peer is not None:
        if not peer.callable:
            raise ReconcileError(peer.not_callable_reason())
        return peer
    if not settings.peers:
        raise ReconcileError(f"unknown PACS {wanted!r}: no [peers.NAME] is configured; add one with ae_title, host "
                             "and port to the config")
    known = describe_peers(settings.peers)
    raise ReconcileError(f"unknown PACS {wanted!r}: configured peers are {known}")


# --- the run ------------------------------------------------------------------------------


class Reconciler:
    """One reconcile run. Build it with :meth:`create` (validates the input), then :meth:`run`."""

    def __init__(self, catalog: Catalog, settings: Settings, peer: PeerSettings, since: _dt.date,
                 until: _dt.date, chunk_days: int = 1, backfill: bool = False, actor: str = "",
                 progress: Progress | None = None, cancelled: threading.Event | None = None,
                 settle_timeout: float = 30.0) -> None:
        self.catalog = catalog
        self.settings = settings
        self.peer = peer
        self.since, self.until = since, until
        self.chunk_days = chunk_days
        self.do_backfill = backfill
        self.actor = actor
        self.progress = progress or (lambda _stage, _done, _total: None)
        self.cancelled = cancelled or threading.Event()
        self.settle_timeout = settle_timeout
        self.our_ae = settings.dicom.ae_title
        self.timeout = float(getattr(settings.dicom, "network_timeout", 60.0) or 60.0)
        self.client: PacsClient | None = None
        self.report = ReconcileReport(
            peer=peer.name, peer_ae_title=peer.ae_title, peer_address=f"{peer.host}:{peer.port}",
            our_ae_title=self.our_ae, date_from=dicom_date(since), date_to=dicom_date(until),
            chunk_days=chunk_days, backfill_requested=backfill, actor=actor,
        )

    @classmethod
    def create(cls, catalog: Catalog, settings: Settings, peer: str, since: str, until: str | None = None,
               chunk_days: int = 1, backfill: bool = False, actor: str = "", **kwargs: Any) -> "Reconciler":
        """Validate the request (ReconcileError with a one-line reason) and build the run."""
        first = parse_date("--since", since)
        last = parse_date("--until", until) if until else _dt.date.today()
        if last < first:
            raise ReconcileError(f"--until {dicom_date(last)} is before --since {dicom_date(first)}")
        if isinstance(chunk_days, bool) or not isinstance(chunk_days, int) or not 1 <= chunk_days <= 3660:
            raise ReconcileError(f"--chunk-days must be a whole number of days from 1 to 3660, got {chunk_days!r}")
        return cls(catalog, settings, resolve_peer(settings, peer), first, last, chunk_days, backfill, actor, **kwargs)

    def abort(self) -> None:
        """From another thread: stop the run soon (between operations, or by aborting the association)."""
        self.cancelled.set()
        client = self.client
        if client is not None:
            client.abort()

    def abandon(self, reason: str) -> None:
        """From another thread, when the run does not stop in time: record it as failed, so
        ``status`` does not show it running forever (if it finishes after all, it records its
        own outcome over this one)."""
        abandon_run(self.catalog, self.report, reason)

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> ReconcileReport:
        """Run, persist and audit; never raises for a PACS problem (the report's state says
        ``failed`` and ``error`` why). Interrupts (KeyboardInterrupt) are recorded, then re-raised."""
        report = self.report
        start_run(self.catalog, report)
        try:
            self.client = PacsClient(self.peer, self.our_ae, self.timeout, self.cancelled, self.settings.dicom)
            with self.client:
                comparison = Comparison(self.catalog, self.client, report, self.progress, self.cancelled)
                comparison.compare_range(self.since, self.until, self.chunk_days)
                if self.do_backfill:
                    Backfill(comparison, self.settings, self.our_ae, self.settle_timeout).run()
            report.state = COMPLETED
        except PacsError as exc:
            report.state, report.error = FAILED, str(exc)
        except Exception as exc:  # noqa: BLE001 - recorded as a failed run, not a crash of `serve`
            log.exception("reconcile with %s failed", self.peer.name)
            report.state, report.error = FAILED, f"{type(exc).__name__}: {exc}"
        except BaseException:
            report.state, report.error = FAILED, "interrupted"
            finish_run(self.catalog, report)
            raise
        finally:
            self.client = None
        if report.state == COMPLETED and report.backfill and report.backfill.error:
            report.error = f"backfill: {report.backfill.error}"
        finish_run(self.catalog, report)
        return report
