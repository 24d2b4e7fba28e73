"""`dicomvault reconcile`: compare the vault with a PACS and say what is missing (jobs/reconcile/job.py).

Exit status (for cron and monitoring):

- 0: nothing the PACS has for the range is missing in the vault (studies only in the vault
  are reported but do not change the exit status: the PACS may have purged them);
- 1: the reconcile could not run or the backfill failed (one line on stderr says why:
  PACS unreachable, association rejected, unknown peer, bad dates, vault not serving...);
- 2: command-line usage error (missing or malformed option);
- 3: the vault lacks studies or parts of studies the PACS has (after the backfill, if asked).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Any, Optional

import typer

from dicomvault.cli.common import CliFailure, ConfigOption, actor, open_archive, out, progress_bar

EXIT_MISSING = 3
_TABLE_ROWS = 50  # rows per table in the readable summary (--json has everything)


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the `dicomvault` app."""
    app.command("reconcile")(reconcile)


def reconcile(
    pacs: Annotated[str, typer.Option("--pacs", help="The PACS: the NAME of a peers.NAME table in the config, or its AE title")],
    since: Annotated[str, typer.Option("--since", help="First study date to compare (YYYYMMDD)")],
    until: Annotated[Optional[str], typer.Option("--until", help="Last study date (YYYYMMDD, default today)")] = None,
    chunk_days: Annotated[int, typer.Option("--chunk-days", help="Days of studies per PACS query")] = 1,
    backfill: Annotated[bool, typer.Option("--backfill", help="Ask the PACS to C-MOVE what the vault lacks to "
                                                              "this vault (needs `dicomvault serve` running)")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the full report as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Compare the vault with a PACS, study by study, and say what is missing on either side.

    Exit status: 0 nothing missing in the vault; 3 the vault lacks studies the PACS has; 1 error (one line says why).
    """
    from dicomvault.jobs.reconcile.job import ReconcileError, Reconciler, parse_date
    from dicomvault.jobs.reconcile.report import COMPLETED

    # Cheap checks before opening anything.
    try:
        parse_date("--since", since)
        if until:
            parse_date("--until", until)
    except ReconcileError as exc:
        raise CliFailure(str(exc)) from None
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # our errors say it in one line
    archive = open_archive(config)
    try:
        with progress_bar() as bar:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int | None) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            try:
                run = Reconciler.create(archive.catalog, archive.settings, pacs, since, until, chunk_days, backfill,
                                        actor(), progress=progress)
            except ReconcileError as exc:
                raise CliFailure(str(exc)) from None
            report = run.run()
    finally:
        archive.close()
    if report.state != COMPLETED:
        raise CliFailure(f"reconcile with PACS {report.peer} failed (run {report.run_id}): {report.error}")
    if json_out:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        _print_summary(report)
    if report.backfill is not None and report.backfill.error:
        print(f"dicomvault: error: backfill failed: {report.backfill.error}", file=sys.stderr)
        raise typer.Exit(1)
    if report.missing_in_vault:
        raise typer.Exit(EXIT_MISSING)


def _n(value: int | None) -> str:
    return "?" if value is None else str(value)


def _table(table: Any) -> None:
    """On a terminal, its width; piped, wide enough that names and UIDs are never cut."""
    if out.is_terminal:
        out.print(table)
    else:
        from rich.console import Console

        Console(file=out.file, width=400, no_color=True).print(table)


def _row(table: Any, *cells: str) -> None:
    from rich.text import Text

    table.add_row(*(Text(str(c)) for c in cells))  # values from DICOM headers are never markup


def _studies(n: int) -> str:
    return f"{n} study" if n == 1 else f"{n} studies"


def _line(text: str) -> None:
    """Plain text, never re-wrapped or highlighted (piped output stays greppable)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _print_summary(report: Any) -> None:
    from rich.table import Column, Table

    def uid_column() -> Column:
        return Column("Study UID", overflow="fold")  # folded on a narrow terminal, never cut

    totals = report.totals()
    _line(
        f"PACS {report.peer} ({report.peer_ae_title}@{report.peer_address}), studies {report.date_from}-"
        f"{report.date_to}: {report.chunks} chunk(s) of {report.chunk_days} day(s), {report.duration_seconds:.1f} s")
    _line(f"  PACS {_studies(totals['pacs_studies'])}, vault {totals['vault_studies']}; {totals['in_both']} on both "
          f"sides, {totals['matching']} identical")

    def studies_table(title: str, studies: list[Any]) -> None:
        table = Table("Patient ID", "Name", "Date", "Modalities", "Series", "Instances", uid_column(),
                      title=title, title_justify="left")
        for s in studies[:_TABLE_ROWS]:
            _row(table, s.patient_id, s.patient_name, s.study_date, ",".join(m for m in s.modalities.split("\\") if m),
                 _n(s.series), _n(s.instances), s.study_uid)
        _table(table)
        if len(studies) > _TABLE_ROWS:
            _line(f"  ... and {len(studies) - _TABLE_ROWS} more (--json lists them all)")

    if report.only_in_pacs:
        studies_table(f"Missing in the vault ({_studies(len(report.only_in_pacs))} only in the PACS)",
                      report.only_in_pacs)
    if report.differing:
        table = Table("Patient ID", "Date", "PACS series/inst.", "Vault series/inst.", "More in", "Series that differ",
                      uid_column(), title=f"Studies on both sides whose counts differ ({len(report.differing)})",
                      title_justify="left")
        for d in report.differing[:_TABLE_ROWS]:
            detail = "; ".join(
                f"{s.modality or '?'} #{s.series_number or '?'}: PACS {'-' if s.pacs_instances is None else s.pacs_instances}"
                f", vault {'-' if s.vault_instances is None else s.vault_instances}" for s in d.series) or "series agree"
            _row(table, d.study.patient_id, d.study.study_date, f"{_n(d.pacs_series)}/{_n(d.pacs_instances)}",
                 f"{d.vault_series}/{d.vault_instances}", d.more, detail, d.study.study_uid)
        _table(table)
        if len(report.differing) > _TABLE_ROWS:
            _line(f"  ... and {len(report.differing) - _TABLE_ROWS} more (--json lists them all)")
    if report.only_in_vault:
        studies_table(f"Only in the vault ({_studies(len(report.only_in_vault))} the PACS does not have; not an error)",
                      report.only_in_vault)
    if report.dates_differ:
        _line(f"  {len(report.dates_differ)} study(ies) on both sides carry different study dates (see --json)")
    if report.backfill is not None:
        b = report.backfill
        _line(f"Backfill to {b.destination}: {len(b.moves)} of {b.moves_planned} move(s) for {_studies(b.studies)}, "
              f"{b.moved_instances} instance(s) sent by the PACS ({b.failed_suboperations} failed), "
              f"{b.backfilled_instances} new in the vault; {_studies(b.studies_complete)} now complete, "
              f"{b.still_missing} still missing")
        if b.not_indexed:
            _line(f"  {len(b.not_indexed)} moved study(ies) not fully indexed after waiting "
                  f"{b.index_wait_seconds:.1f} s")
    if report.missing_in_vault:
        hint = "" if report.backfill_requested else " - run again with --backfill to fetch them"
        _line(f"MISSING IN THE VAULT: {_studies(report.missing_in_vault)} ({report.missing_instances} instances){hint}")
    else:
        _line("Nothing the PACS has for this range is missing in the vault.")
