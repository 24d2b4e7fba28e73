"""``dicomvault export --to DIR``: the selected instances as a standard DICOM File-set, for a
migration or for handing a patient's images over on a disc or a USB stick.

``DIR/DICOMDIR`` plus ``DIR/DICOM/Pnnnnnnn/Snnnnnnn/SEnnnnnn/Innnnnnn`` (``dicom/dicomdir.py``
names them and builds the DICOMDIR). Each file is the stored Part-10 bytes, verified against
their SHA-256 when opened (``Repository.load``) and written byte for byte. The only
exception is a legacy copy that was archived without File Meta Information (or without
its preamble): a File-set member must have one, so it is added in front of the unchanged
dataset bytes and the report lists the instance with both hashes.

Safety, in order: the target must be absent or empty; every file goes to a temporary name,
is fsynced and renamed; directories are fsynced; the DICOMDIR is written last (same way),
so a folder with a DICOMDIR is complete. A damaged or missing stored copy is reported by
UID and left out (the DICOMDIR lists only what was written); the export goes on with the
rest. Anything that makes the folder unusable (disk full, permission) removes what this
export wrote and fails. Every attempt is one ``export`` audit event.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog.selection import SelectedInstance, Selection, rejected_in, select_instances
from dicomvault.dicom.dicomdir import ROOT_FOLDER, DicomDir, FileSetError, frame_for_file_set, read_header
from dicomvault.archive.coercion import Coercer, CoercionError
from dicomvault.archive.repository import IntegrityError
from dicomvault.sites import SiteError
from dicomvault.sites.file import fsync_dir, write_synced

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive
    from dicomvault.archive.repository import Repository

MAX_FAILED_IN_AUDIT = 1000  # the report lists every failure; the audit row stays bounded


class ExportError(Exception):
    """The export was refused or aborted and left no File-set behind; the message says why."""


@dataclass(frozen=True)
class Failed:
    sop_instance_uid: str
    study_uid: str
    reason: str


@dataclass(frozen=True)
class Adjusted:
    """An instance written with framing its stored copy lacked (dataset bytes unchanged)."""

    sop_instance_uid: str
    file_id: str
    change: str
    stored_sha256: str
    written_sha256: str


@dataclass
class ExportReport:
    destination: str
    selection: Selection
    selected: int = 0
    instances: int = 0
    bytes: int = 0
    patients: int = 0  # PATIENT records in the DICOMDIR
    studies: set[str] = field(default_factory=set)
    series: set[str] = field(default_factory=set)
    failed: list[Failed] = field(default_factory=list)
    adjusted: list[Adjusted] = field(default_factory=list)
    invented: dict[str, int] = field(default_factory=dict)  # DICOMDIR keys the instances lacked
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (study, instance, why): IOCM
    coerced: list[dict[str, str]] = field(default_factory=list)  # --coerce-demographics: both SHA-256s
    dicomdir: str = ""  # path of the DICOMDIR once written
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.dicomdir) and not self.failed

    def to_dict(self) -> dict[str, Any]:
        seconds = max(self.duration, 1e-9)
        return {
            "ok": self.ok,
            "destination": self.destination,
            "dicomdir": self.dicomdir,
            "selection": {**asdict(self.selection), "description": self.selection.describe()},
            "selected": self.selected,
            "instances": self.instances,
            "series": len(self.series),
            "studies": len(self.studies),
            "patients": self.patients,
            "bytes": self.bytes,
            "failed": [asdict(f) for f in self.failed],
            "adjusted": [asdict(a) for a in self.adjusted],
            "coerced": list(self.coerced),
            "dicomdir_invented": dict(sorted(self.invented.items())),
            "skipped": [{"sop_instance_uid": sop, "study_uid": study, "reason": why}
                        for study, sop, why in self.skipped],
            "duration_s": round(self.duration, 3),
            "instances_per_s": round(self.instances / seconds, 1),
            "mb_per_s": round(self.bytes / seconds / 1e6, 2),
        }


def export_to_dir(archive: "Archive", selection: Selection, out_dir: Path, actor: str,
                  progress: Callable[[int, int], None] | None = None, coerce: bool = False) -> ExportReport:
    """Write the selection under ``out_dir`` as a File-set; raise ``ExportError`` when it is
    refused (target not empty, nothing matches) or aborted (nothing usable left behind).

    Instances whose stored copy is damaged or missing do not abort: they are in
    ``report.failed`` and the caller exits non-zero. ``progress(done, total)`` is called
    after each instance. ``coerce``: the files (and the DICOMDIR) carry the catalog's current
    patient demographics (archive/coercion.py), each such file listed in ``report.coerced``.
    """
    started = time.monotonic()
    out_dir = Path(os.path.abspath(out_dir))
    report = ExportReport(destination=str(out_dir), selection=selection)
    error = ""
    try:
        _check_target(out_dir)
        rows = select_instances(archive.catalog, selection)
        report.selected = len(rows)
        report.skipped = rejected_in(archive.catalog, selection)
        if not rows:
            raise ExportError(f"nothing matches {selection.describe()}; nothing written"
                              + (f" ({len(report.skipped)} instance(s) skipped as rejected, IOCM)" if report.skipped else ""))
        created = _create_target(out_dir)
        try:
            coercer = Coercer(archive.catalog) if coerce else None
            dicomdir = _write_instances(archive.repository, rows, out_dir, report, progress, coercer)
            report.coerced = coercer.coerced if coercer else []
            report.invented = dict(dicomdir.invented)
            report.patients = dicomdir.patients
            if not report.instances:
                first = report.failed[0]
                raise ExportError(f"none of the {len(rows)} selected instance(s) could be exported; nothing written "
                                  f"(first: {first.sop_instance_uid}: {first.reason})")
            _write_dicomdir(out_dir, dicomdir)
        except BaseException:
            _remove_partial(out_dir, created)
            raise
        report.dicomdir = str(out_dir / "DICOMDIR")
    except ExportError as exc:
        error = str(exc)
        raise
    except FileSetError as exc:
        error = f"cannot write the DICOMDIR: {exc}; nothing usable written"
        raise ExportError(error) from exc
    except OSError as exc:
        error = f"cannot write to {out_dir}: {exc.strerror or exc}; nothing usable written"
        raise ExportError(error) from exc
    except BaseException as exc:  # Ctrl-C, or a bug: still one audit row saying so
        error = f"stopped by {type(exc).__name__} {exc}".rstrip() + "; nothing usable written"
        raise
    finally:
        report.duration = time.monotonic() - started
        _audit(archive, actor, report, error)
    return report


def _check_target(out_dir: Path) -> None:
    """Refuse before reading anything: exporting into a folder with content would mix two
    File-sets (or clobber someone's files)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory; nothing written")
    if out_dir.is_dir():
        try:
            not_empty = any(out_dir.iterdir())
        except OSError as exc:
            raise ExportError(f"cannot read {out_dir}: {exc.strerror or exc}; nothing written") from exc
        if not_empty:
            raise ExportError(f"{out_dir} is not empty; export needs a new or empty directory (nothing written)")


def _create_target(out_dir: Path) -> bool:
    """Create the target (and its parents); True if the target itself was created here."""
    existed = out_dir.is_dir()
    (out_dir / ROOT_FOLDER).mkdir(parents=True, exist_ok=False)
    return not existed


def _remove_partial(out_dir: Path, created: bool) -> None:
    """Take back what this export wrote: without a DICOMDIR the folder is not a File-set."""
    shutil.rmtree(out_dir / ROOT_FOLDER, ignore_errors=True)
    for name in ("DICOMDIR", ".DICOMDIR.partial"):
        try:
            (out_dir / name).unlink()
        except OSError:
            pass
    if created:
        try:
            out_dir.rmdir()
        except OSError:
            pass


def _write_instances(repository: "Repository", rows: list[SelectedInstance], out_dir: Path, report: ExportReport,
                     progress: Callable[[int, int], None] | None, coercer: Coercer | None = None) -> DicomDir:
    """Write every instance that can be read intact; OSError (the target's fault) propagates."""
    dicomdir = DicomDir()
    folders: set[Path] = {out_dir, out_dir / ROOT_FOLDER}
    for done, row in enumerate(rows, 1):
        try:
            file_id, data = _prepare(repository, row, dicomdir, report, coercer)
        except (IntegrityError, KeyError, SiteError, FileSetError, CoercionError) as exc:
            report.failed.append(Failed(row.sop_instance_uid, row.study_uid, _reason(exc)))
        else:
            path = out_dir.joinpath(*file_id)
            folders.update(p for p in path.parents if p.is_relative_to(out_dir))
            path.parent.mkdir(parents=True, exist_ok=True)
            write_durably(path, data)
            report.instances += 1
            report.bytes += len(data)
            report.studies.add(row.study_uid)
            report.series.add(row.series_uid)
        if progress is not None:
            progress(done, len(rows))
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)  # the renamed files' entries, deepest first, before the DICOMDIR
    return dicomdir


def _prepare(repository: "Repository", row: SelectedInstance, dicomdir: DicomDir,
             report: ExportReport, coercer: Coercer | None = None) -> tuple[tuple[str, ...], bytes]:
    """(File ID, bytes to write) for one instance, or the reason it cannot be exported.

    Everything that can fail for this instance alone happens here, before its file exists.
    """
    _metadata, stored = repository.load(row.object_id, row.sha256)
    framed = frame_for_file_set(stored, row.sop_class_uid, row.sop_instance_uid)
    del stored  # keep one copy of a large instance in memory, not two
    data = coercer.file(row.sop_instance_uid, row.sha256, framed.data) if coercer else framed.data
    file_id = dicomdir.add(read_header(data))
    if framed.change:
        report.adjusted.append(Adjusted(row.sop_instance_uid, "/".join(file_id), framed.change, row.sha256,
                                        hashlib.sha256(framed.data).hexdigest()))
    return file_id, data


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"stored copy missing: {exc.args[0] if exc.args else exc}"
    return str(exc)


def write_durably(path: Path, data: bytes) -> None:
    """Temporary name, fsync, rename: a reader never sees half a file under the real name."""
    tmp = path.with_name(f".{path.name}.partial")
    write_synced(tmp, data, 0o644, exclusive=False)
    os.replace(tmp, path)


def _write_dicomdir(out_dir: Path, dicomdir: DicomDir) -> None:
    """Last, and atomically: its presence is what says the File-set is complete."""
    write_durably(out_dir / "DICOMDIR", dicomdir.encode())
    fsync_dir(out_dir)
    fsync_dir(out_dir.parent)  # in case the target itself was created by this export


def _audit(archive: "Archive", actor: str, report: ExportReport, error: str) -> None:
    """One event per attempt, refused ones included: who took which images where."""
    if error:
        outcome = "failure"
    else:
        outcome = "partial" if report.failed else "success"
    summary = report.to_dict()
    detail = {key: summary[key] for key in ("destination", "selection", "selected", "instances", "series", "studies",
                                            "patients", "bytes", "duration_s")}
    detail["failed"] = summary["failed"][:MAX_FAILED_IN_AUDIT]
    detail["failed_count"] = len(report.failed)
    detail["adjusted"] = [{"sop_instance_uid": a.sop_instance_uid, "change": a.change} for a in report.adjusted]
    if report.coerced:
        detail["coerced"] = report.coerced[:MAX_FAILED_IN_AUDIT]
    if error:
        detail["error"] = error
    with archive.catalog.write() as conn:
        append(conn, AuditEvent(actor=actor, action="export", subject=report.destination, outcome=outcome,
                                detail=detail))
