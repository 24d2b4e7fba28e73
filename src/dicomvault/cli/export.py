"""``dicomvault export --to DIR``: the selected instances as a DICOM File-set (DICOMDIR plus
byte-exact Part-10 files) for a migration or for a patient's disc or USB stick.

Exit codes: 0 everything selected was written; 1 refused or aborted (the reason on one line,
no File-set left behind); 2 the File-set was written but some stored copies were damaged or
missing (the report names each instance; the DICOMDIR lists only what was written).

``--to`` is a configured ``[peers.NAME]`` (its name, without a slash) or else a directory
(``./pacs`` forces a directory of that name). To a peer, the export is a network job run
by the restore engine (``jobs/restore/job.py``) in plain study order: C-STORE, byte-exact,
resumable by running the same command again, with the restore's exit codes and report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from dicomvault.cli.common import CliFailure, ConfigOption, actor, open_archive, out, progress_callback, settings
from dicomvault.config import find_peer

if TYPE_CHECKING:
    from dicomvault.catalog.selection import Selection
    from dicomvault.jobs.restore.export import ExportReport

EXIT_SOME_FAILED = 2


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the `dicomvault` app."""
    app.command("export")(export)


def export(
    to: Annotated[str, typer.Option("--to", help="A [peers.NAME] to send to over DICOM, or a directory to create "
                                                "the File-set in (new or empty): DIR/DICOMDIR plus DIR/DICOM/...")],
    since: Annotated[Optional[str], typer.Option(help="Only studies dated on/after YYYYMMDD")] = None,
    until: Annotated[Optional[str], typer.Option(help="Only studies dated on/before YYYYMMDD")] = None,
    patient: Annotated[Optional[list[str]], typer.Option("--patient", help="Patient ID (repeatable)")] = None,
    modality: Annotated[Optional[list[str]], typer.Option("--modality", help="Series modality, e.g. CT (repeatable)")] = None,
    study: Annotated[Optional[list[str]], typer.Option("--study", help="Study Instance UID (repeatable)")] = None,
    associations: Annotated[int, typer.Option(help="To a peer: parallel associations")] = 4,
    rate: Annotated[Optional[str], typer.Option(help="To a peer: e.g. 20MB/s or 50/s (instances)")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="To a peer: send everything again")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    coerce: Annotated[bool, typer.Option("--coerce-demographics", help="Write/send the current patient "
                                         "demographics (HL7 ADT updates) instead of the stored ones; each such "
                                         "instance is listed with both SHA-256s")] = False,
    config: ConfigOption = None,
) -> None:
    """Export to a folder as a standard DICOM File-set: a DICOMDIR that lists every instance
    and the files byte-identical to what was archived (a CD/DVD/USB layout, for a migration
    or a patient's copy). Without filters, everything is exported.
    """
    from dicomvault.catalog.selection import Selection, SelectionError

    try:
        selection = Selection.build(since, until, patient or (), modality or (), study or ())
    except SelectionError as exc:
        raise CliFailure(str(exc)) from exc
    if not to.strip():
        raise CliFailure("--to needs a directory to export into")
    peer = _configured_peer(to, config)
    if peer is not None:
        _export_to_peer(peer, selection, associations, rate, fresh, json_out, config, coerce)
        return
    report = _export_to_directory(Path(to).expanduser(), selection, config, coerce)
    _print_report(report, json_out)
    if report.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _configured_peer(to: str, config: Optional[Path]) -> object | None:
    """The ``[peers.NAME]`` that ``--to`` names (by name or AE title), when it has no slash."""
    return None if "/" in to else find_peer(settings(config).peers, to)


def _export_to_peer(peer: object, selection: "Selection", associations: int, rate: Optional[str], fresh: bool,
                    json_out: bool, config: Optional[Path], coerce: bool = False) -> None:
    """A network export: the restore engine in study order (not urgency), same report."""
    from dicomvault.cli.restore import EXIT_SOME_FAILED as SOME_REFUSED
    from dicomvault.cli.restore import plan_or_resume, print_job_report, run_job
    from dicomvault.jobs.restore.job import RateLimit
    from dicomvault.jobs.restore.plan import RestoreError, job_report

    if not 1 <= associations <= 32:
        raise CliFailure(f"--associations must be between 1 and 32, got {associations}")
    archive = open_archive(config)
    try:
        limit = RateLimit.parse(rate)
        job_id, already_done, plan = plan_or_resume(archive, "export", "study", peer, selection, fresh, False,
                                                    associations, rate)
        result = (job_report(archive, job_id) if already_done
                  else run_job(archive, job_id, peer, associations, limit, plan, coerce=coerce))
    except RestoreError as exc:
        raise CliFailure(str(exc)) from exc
    finally:
        archive.close()
    print_job_report(result, json_out)
    if result["failed"]:
        raise typer.Exit(SOME_REFUSED)


def _export_to_directory(out_dir: Path, selection: "Selection", config: Optional[Path],
                         coerce: bool = False) -> "ExportReport":
    """The File-set export with a progress bar on a terminal; refusals become one line."""
    from dicomvault.jobs.restore.export import ExportError, export_to_dir

    archive = open_archive(config)
    try:
        with progress_callback("exporting") as progress:
            return export_to_dir(archive, selection, out_dir, actor(),
                                 progress=progress,
                                 coerce=coerce)
    except ExportError as exc:
        raise CliFailure(str(exc)) from exc
    finally:
        archive.close()


def _print_report(report: "ExportReport", json_out: bool) -> None:
    if json_out:
        out.print_json(data=report.to_dict())
        return
    summary = report.to_dict()
    out.print(f"exported {summary['instances']} instance(s) of {summary['studies']} study(ies), "
              f"{summary['patients']} patient(s), {summary['bytes']} bytes to {report.destination} "
              f"in {summary['duration_s']} s ({summary['mb_per_s']} MB/s); {len(report.failed)} failed",
              markup=False, highlight=False, soft_wrap=True)
    for failed in report.failed:
        out.print(f"  FAILED {failed.sop_instance_uid} (study {failed.study_uid}): {failed.reason}",
                  markup=False, highlight=False, soft_wrap=True)
    for adjusted in report.adjusted:
        out.print(f"  NOTE {adjusted.sop_instance_uid} -> {adjusted.file_id}: {adjusted.change} "
                  f"(stored SHA-256 {adjusted.stored_sha256}, written {adjusted.written_sha256})",
                  markup=False, highlight=False, soft_wrap=True)
    for coerced in report.coerced:
        out.print(f"  COERCED {coerced['sop_instance_uid']}: current demographics written (stored SHA-256 "
                  f"{coerced['stored_sha256']}, written {coerced['sent_sha256']})",
                  markup=False, highlight=False, soft_wrap=True)
    if report.invented:
        keys = ", ".join(f"{k} x{n}" for k, n in sorted(report.invented.items()))
        out.print(f"  DICOMDIR: invented missing Type 1 keys (records only, files untouched): {keys}",
                  markup=False, highlight=False, soft_wrap=True)
