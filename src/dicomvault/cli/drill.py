"""``dicomvault drill``: a restore drill from every site, or the ones named.

Exit codes: 0 every site's drill restored every picked study byte for byte; 1 the drill
could not run (unknown site, no study of the date asked for, test PACS unreachable, another
drill running); 2 some site's drill failed (a missing or damaged copy, an unreachable site,
a date that cannot be recovered from it): the report and `status` name each problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dicomvault.cli.common import CliFailure, ConfigOption, actor, open_archive, out, progress_callback

EXIT_DRILL_FAILED = 2


def register(app: typer.Typer) -> None:
    app.command("drill")(drill)


def drill(
    site: Annotated[Optional[list[str]], typer.Option("--site", help="Only this site (repeatable): primary or a "
                                                                      "[sites.NAME]")] = None,
    random_count: Annotated[int, typer.Option("--random", help="Random studies per site, besides the newest")] = 3,
    date: Annotated[Optional[list[str]], typer.Option("--date", help="Also a study of this Study Date, YYYYMMDD "
                                                                      "(repeatable)")] = None,
    to: Annotated[Optional[str], typer.Option("--to", help="Restore into this test PACS ([peers.NAME]) instead of "
                                                            "a scratch folder")] = None,
    keep: Annotated[Optional[Path], typer.Option("--keep", help="Leave the restored files in this new or empty "
                                                                 "folder")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Restore drill: restore a few studies (newest, random, --date) from each site on its own,
    check them byte for byte, record how long it took; `status` shows the history."""
    from dicomvault.cli.restore import resolve_peer
    from dicomvault.jobs.drill.job import DrillError, drill as run_drill

    archive = open_archive(config)
    try:
        peer = resolve_peer(archive.settings, to) if to else None
        with progress_callback("restore drill") as progress:
            report = run_drill(archive, actor(), only_sites=site or None, random_count=random_count,
                               dates=date or [], peer=peer, keep=keep,
                               progress=progress)
    except DrillError as exc:
        raise CliFailure(str(exc)) from exc
    finally:
        archive.close()
    summary = report.to_dict()
    if json_out:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary)
    if report.failed:
        raise typer.Exit(EXIT_DRILL_FAILED)


def print_report(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("Site", "Result", "Studies", "Instances", "MB", "Seconds", "Picked")
    for result in summary["sites"]:
        picked = "; ".join(f"{','.join(p['why'])} {p['study_date'] or '(no date)'}" for p in result["picks"])
        table.add_row(result["site"], result["state"].upper(), str(result["studies"]), str(result["instances"]),
                      f"{result['bytes'] / 1e6:.1f}", f"{result['seconds']:.1f}", picked or result["skipped"])
    out.print(table)
    for result in summary["sites"]:
        for failure in result["failures"]:
            out.print(f"  {result['site']} {failure['object']}: {failure['problem']}", markup=False, highlight=False)
        for note in result["notes"]:
            out.print(f"  {result['site']} note: {note}", markup=False, highlight=False)
    where = f"PACS {summary['target']}" if summary["target"] != "scratch" else (
        f"{summary['kept']} (kept)" if summary["kept"] else "a scratch folder, removed")
    out.print(f"restored into {where}; {'FAILED' if summary['failed'] else 'every picked study came back intact'}")
