"""Restore drills: the test DR guides ask operators to do by hand ("recover a study from a
certain date"), done by the archive itself, from each site on its own, and remembered.

For each readable site (the primary and every replica but a ``dicom://`` PACS or a
quarantined site) a few studies are picked (``jobs/drill/picks.py``: the newest, one per date
asked for, some at random). Every instance's latest version is read from THAT site only
(``Site.get``; never ``Repository.load``, which would quietly fall back to another site and
prove nothing about this one), authenticated, decrypted and checked against the catalog's
SHA-256, then restored: written as its Part-10 file into a scratch folder under the data
directory and read back from disk and hashed again (byte for byte), or sent with C-STORE to
a test PACS (``--to``), where anything but a success status fails. The scratch folder holds
plaintext images: it is private (0700) and removed at the end unless the operator keeps it.

Each site's drill is one ``drill_runs`` row with its timing, picks and failures, audited as
``drill`` (``jobs/drill/runs.py``). A missing or damaged copy, an unreachable site or a date that
cannot be recovered from the site makes that site's drill a failure; the other sites' drills
go on. One drill runs at a time on a host (a lock in ``DATA/locks``).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomvault.catalog.retrieval import RetrievalItem
from dicomvault.dicom import split_part10
from dicomvault.archive.repository import IntegrityError
from dicomvault.sites import SiteError, open_site

from dicomvault.jobs.drill import runs as drill_runs
from dicomvault.archive import quarantine
from dicomvault.jobs.drill.picks import Plan, has_studies, plan_site, studies_dated
from dicomvault.jobs.drill.targets import PeerTarget, ScratchTarget, Target, TargetLost
from dicomvault.archive.prefetch import Prefetcher
from dicomvault.jobs.restore.plan import lock_dir
from dicomvault.jobs.verify.job import PRIMARY, readable_site_names

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive
    from dicomvault.config import PeerSettings
    from dicomvault.sites.base import Site

log = logging.getLogger(__name__)

SCRATCH = "scratch"
READ_AHEAD = 8  # instances read and opened ahead of the restore (bounded memory)


class DrillError(Exception):
    """The drill cannot run (unknown site, no such date, another drill running...); the message
    says what to do."""


class DrillInterrupted(Exception):
    """Asked to stop (``serve`` shutting down): the site's run is recorded as interrupted."""


@dataclass
class SiteDrill:
    """One site's drill: what was restored, how long it took, and what failed."""

    site: str
    target: str
    run_id: int | None = None
    started_at: float = 0.0
    seconds: float = 0.0
    plan: Plan | None = None
    instances: int = 0  # restored and proven byte for byte
    bytes: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    skipped: str = ""  # why nothing was drilled (no row is recorded)

    @property
    def state(self) -> str:
        return "skipped" if self.skipped else drill_runs.FAILURE if self.failures else drill_runs.SUCCESS

    def to_dict(self) -> dict[str, Any]:
        picks = [p.to_dict() for p in self.plan.picks] if self.plan else []
        return {"site": self.site, "run_id": self.run_id, "state": self.state, "target": self.target,
                "started_at": self.started_at, "seconds": round(self.seconds, 3), "studies": len(picks),
                "instances": self.instances, "bytes": self.bytes, "picks": picks, "failures": self.failures,
                "notes": self.plan.notes if self.plan else [], "skipped": self.skipped}


@dataclass
class DrillReport:
    started_at: float
    target: str
    kept: str | None = None  # the folder the restored files were left in (--keep)
    sites: list[SiteDrill] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(s.state == drill_runs.FAILURE for s in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "target": self.target, "kept": self.kept, "failed": self.failed,
                "sites": [s.to_dict() for s in self.sites]}


def parse_dates(dates: list[str]) -> list[str]:
    """``--date`` values as YYYYMMDD calendar dates (de-duplicated, in the order given)."""
    for value in dates:
        try:
            _dt.datetime.strptime(value, "%Y%m%d")
        except ValueError:
            raise DrillError(f"--date must be a study date as YYYYMMDD, got {value!r}") from None
        if len(value) != 8:
            raise DrillError(f"--date must be a study date as YYYYMMDD, got {value!r}")
    return list(dict.fromkeys(dates))


def drillable_sites(archive: "Archive", only_sites: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(sites to drill, {site: why skipped}) for the readable sites, or those named."""
    readable = readable_site_names(archive.settings)
    quarantined = quarantine.active(archive.catalog)
    for name in only_sites or []:
        if name in quarantined:
            raise DrillError(f"site {name} is QUARANTINED ({quarantined[name]['reason']}): its copies are not trusted; "
                             f"investigate, `dicomvault sites clear {name}`, then drill it")
        if name not in readable:
            pacs = any(r.name == name and r.is_pacs for r in archive.settings.replicas)
            raise DrillError(f"site {name} is a dicom:// PACS: it cannot hand back sealed copies to drill"
                             if pacs else f"unknown site {name!r}; readable sites: {', '.join(readable)}")
    chosen = [n for n in readable if not only_sites or n in only_sites]
    return ([n for n in chosen if n not in quarantined],
            {n: f"quarantined: {quarantined[n]['reason']}" for n in chosen if n in quarantined})


def drill(archive: "Archive", actor: str, *, only_sites: list[str] | None = None, random_count: int = 3,
          dates: list[str] | None = None, peer: "PeerSettings | None" = None, keep: Path | None = None,
          progress: Callable[[int, int], None] | None = None,
          cancelled: threading.Event | None = None) -> DrillReport:
    """Drill every readable site (or ``only_sites``); see the module docstring."""
    if random_count < 0:
        raise DrillError(f"--random must be 0 or more, got {random_count}")
    wanted_dates = parse_dates(list(dates or []))
    if peer is not None and keep is not None:
        raise DrillError("--to sends the studies to a PACS, --keep keeps files on disk: choose one")
    names, skipped = drillable_sites(archive, only_sites)
    if not has_studies(archive.catalog):
        raise DrillError("nothing to drill: the archive holds no study yet")
    for date in wanted_dates:
        if not studies_dated(archive.catalog, date):
            raise DrillError(f"no study dated {date} in the archive (Study Date {date}); "
                             f"`dicomvault find --from {date} --to {date}` lists that day, or choose another date")
    report = DrillReport(started_at=time.time(), target=peer.name if peer else SCRATCH,
                         kept=str(keep) if keep else None)
    report.sites += [SiteDrill(name, report.target, skipped=reason) for name, reason in skipped.items()]
    with _exclusive(lock_dir(archive.settings) / "drill.lock"):
        if archive.catalog.is_sqlite:  # a shared PostgreSQL catalog may have a live drill on another host
            drill_runs.interrupt_stale(archive.catalog, actor)
        plans = {name: plan_site(archive.catalog, name, random_count, wanted_dates) for name in names}
        total = sum(plan.instances for plan in plans.values())
        counter = _Counter(total, progress)
        with _target(archive, peer, keep, plans) as target:
            for name in names:
                result = SiteDrill(name, report.target, plan=plans[name])
                report.sites.append(result)
                if not plans[name].picks and not plans[name].failures:
                    result.skipped = "nothing to drill: no study has a verified copy of every instance on this site yet"
                    continue
                _drill_site(archive, actor, result, target, counter, cancelled)
    return report


@dataclass
class _Counter:
    total: int
    report: Callable[[int, int], None] | None
    done: int = 0

    def step(self) -> None:
        self.done += 1
        if self.report is not None:
            self.report(self.done, self.total)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One drill at a time on this host: a flock the kernel drops if the drill dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DrillError("another restore drill is running on this host (the [drill] schedule of `dicomvault "
                             "serve`, or another `dicomvault drill`); try again when it has finished") from None
        yield


@contextmanager
def _target(archive: "Archive", peer: "PeerSettings | None", keep: Path | None,
            plans: dict[str, Plan]) -> Iterator[Target | None]:
    """Where studies are restored to: the test PACS, or a private scratch folder (removed at
    the end unless it is the operator's ``--keep`` folder); None when nothing was picked."""
    if not any(plan.picks for plan in plans.values()):
        yield None
        return
    if peer is not None:
        pairs = [(i.sop_class_uid, i.transfer_syntax_uid) for plan in plans.values() for p in plan.picks
                 for i in p.items]
        try:
            target: Target = PeerTarget(archive.settings, peer, pairs)
        except TargetLost as exc:
            raise DrillError(f"{exc}; nothing was drilled (is the test PACS up, and does it know our AE title "
                             f"{archive.settings.dicom.ae_title}?)") from exc
        try:
            yield target
        finally:
            target.close()
        return
    root = keep if keep is not None else Path(archive.settings.base_dir) / "drill" / f"{int(time.time())}-{os.getpid()}"
    try:
        if keep is not None and keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
            raise DrillError(f"--keep {keep}: the folder must be new or empty, so the drill's files are not mixed "
                             "with others")
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DrillError(f"cannot create the drill's scratch folder {root}: {exc.strerror or exc}") from exc
    try:
        yield ScratchTarget(root)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
            try:
                root.parent.rmdir()  # DATA/drill, unless another drill's folder is still there
            except OSError:
                pass


def _open(archive: "Archive", name: str) -> "Site":
    if name == PRIMARY:
        return archive.site
    replica = next(r for r in archive.settings.replicas if r.name == name)
    return open_site(replica.url, replica.option_map)


def _drill_site(archive: "Archive", actor: str, result: SiteDrill, target: Target | None, counter: _Counter,
                cancelled: threading.Event | None) -> None:
    assert result.plan is not None
    result.started_at = time.time()
    result.run_id = drill_runs.start_run(archive.catalog, result.site, actor, result.target, result.started_at)
    result.failures += result.plan.failures
    clock = time.monotonic()
    state = drill_runs.INTERRUPTED
    try:
        _restore_picks(archive, result, target, counter, cancelled)
        state = result.state
    except DrillInterrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded as the site's failure, then raised
        result.failures.append({"object": f"site {result.site}",
                                "problem": f"the drill stopped on an internal error: {type(exc).__name__}: {exc}"})
        state = drill_runs.FAILURE
        raise
    finally:
        result.seconds = time.monotonic() - clock
        summary = result.to_dict()
        drill_runs.finish_run(archive.catalog, result.run_id, actor, state, summary)
    if result.failures:
        log.error("ALERT: restore drill from site %s FAILED: %d problem(s), first: %s: %s", result.site,
                  len(result.failures), result.failures[0]["object"], result.failures[0]["problem"])
    else:
        log.info("restore drill from site %s: %d studies, %d instances in %.1f s", result.site,
                 len(result.plan.picks), result.instances, result.seconds)


def _restore_picks(archive: "Archive", result: SiteDrill, target: Target | None, counter: _Counter,
                   cancelled: threading.Event | None) -> None:
    assert result.plan is not None
    items = [(pick.study_uid, item) for pick in result.plan.picks for item in pick.items]
    if not items:
        return
    assert target is not None  # something was picked
    try:
        site = _open(archive, result.site)
    except SiteError as exc:
        result.failures.append({"object": f"site {result.site}", "problem": f"cannot open the site: {exc}"})
        return

    def load(entry: tuple[str, RetrievalItem]) -> bytes:
        item = entry[1]
        return archive.repository.open_blob(site.get(item.object_id), item.object_id, item.sha256)[1]

    def failed(item: RetrievalItem, problem: str) -> None:
        result.failures.append({"object": item.object_id, "problem": problem, "sop_instance_uid": item.sop_instance_uid,
                                "study_uid": item.study_uid})

    # Reading, AES-GCM, zstd and SHA-256 release the GIL: a few instances are opened ahead.
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="drill") as pool:
        feed: Prefetcher[tuple[str, RetrievalItem], bytes] = Prefetcher(items, load, pool, READ_AHEAD)
        for done, ((_study, item), loading) in enumerate(feed):
            if cancelled is not None and cancelled.is_set():
                raise DrillInterrupted(f"drill of site {result.site} interrupted")
            try:
                original = loading.result()
            except KeyError:
                failed(item, f"missing: the copy is not on site {result.site}")
            except IntegrityError as exc:
                failed(item, f"damaged: {exc}")
            except SiteError as exc:
                failed(item, f"site unreachable: {exc}; {len(items) - done - 1} more instance(s) not tried")
                return
            else:
                try:
                    problem = target.deliver(result.site, item, original, split_part10(original)[0])
                except TargetLost as exc:
                    failed(item, f"{exc}; {len(items) - done - 1} more instance(s) not tried")
                    return
                if problem is None:
                    result.instances += 1
                    result.bytes += len(original)
                else:
                    failed(item, problem)
            counter.step()
