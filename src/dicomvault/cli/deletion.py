"""``dicomvault delete``, ``dicomvault deletions [show ID | retry]`` and ``dicomvault retention
run``: the deletion engine (jobs/retention/delete.py, jobs/retention/run.py) from a terminal.

``delete`` without ``--yes`` prints what would be deleted and exits 2, deleting nothing.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from dicomvault.cli.common import CliFailure, ConfigOption, actor, open_archive, out, progress_callback

deletions_app = typer.Typer(rich_markup_mode=None, invoke_without_command=True,
                            help="Deletion records: what was deleted, why, by whom, and on which sites.")


def register(app: typer.Typer, retention_app: typer.Typer) -> None:
    app.command("delete")(delete)
    app.add_typer(deletions_app, name="deletions")
    retention_app.command("run")(retention_run)


def say(text: str) -> None:
    out.print(text, markup=False, highlight=False)


@contextmanager
def _archive(config: Optional[Path]) -> Iterator[Any]:
    from dicomvault.jobs.retention.delete import DeletionError

    archive = open_archive(config)
    try:
        yield archive
    except DeletionError as exc:
        raise CliFailure(str(exc)) from exc
    finally:
        archive.close()


def _show(record: dict[str, Any]) -> None:
    say(f"deletion {record['id']}  {record['when']}  by {record['who']}  why: {record['why']}"
        + (f" ({record['rule']})" if record["rule"] else "") + f": {record['reason']}")
    say(f"  study {record['study_uid']}  patient {record['patient_id']}  {record['instances']} instances, "
        f"{record['versions']} versions, {record['bytes']} bytes"
        + ("" if record["completed"] else "  (sites still pending)"))
    for site in record["sites"]:
        counts = (f"{site['deleted']} deleted, {site['locked']} locked, {site['missing']} already absent"
                  if site["state"] != "not ours" else "a PACS: outside the archive's control")
        say(f"    {site['site']}: {site['state']}  ({counts})" + (f"  {site['last_error']}" if site["last_error"] else ""))


def delete(
    study: Annotated[str, typer.Option("--study", help="The Study Instance UID to delete")],
    reason: Annotated[str, typer.Option("--reason", help="Why, and who asked (kept in the deletion record)")],
    yes: Annotated[bool, typer.Option("--yes", help="Really delete (without it: show what would go, exit 2)")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the deletion record as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Delete a study from every index and every site that allows it; leaves a deletion record."""
    from dicomvault.jobs.retention.delete import delete_study, preview

    with _archive(config) as archive:
        if not yes:
            if not reason.strip():
                raise CliFailure("a reason is required (who asked and why)")
            plan = preview(archive, study)
            if json_out:
                print(json.dumps({"would_delete": plan}, indent=2))
            else:
                say(f"would delete study {plan['study_uid']} of patient {plan['patient_id']}: {plan['instances']} "
                    f"instances, {plan['versions']} versions, {plan['bytes']} bytes")
                for site in plan["sites"]:
                    say(f"  {site['site']}: {site['copies']} copies" + ("  (a PACS: not ours, not deleted)"
                                                                       if site["state"] == "not ours" else ""))
                if plan["held"]:
                    say(f"  REFUSED: {plan['hold']}")
                say("nothing deleted: add --yes to delete")
            raise typer.Exit(2)
        with progress_callback("deleting objects") as progress:
            record = delete_study(archive, study, why="request", reason=reason, actor=actor(), progress=progress)
    if json_out:
        print(json.dumps(record, indent=2))
    else:
        _show(record)


@deletions_app.callback()
def deletions_list(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print the records as JSON (with the SOP Instance UIDs)")] = False,
    config: ConfigOption = None,
) -> None:
    """Every deletion record, oldest first (records are never deleted)."""
    if ctx.invoked_subcommand is not None:
        return
    from dicomvault.catalog import Catalog
    from dicomvault.cli.common import settings
    from dicomvault.jobs.retention.delete import list_records

    catalog = Catalog(settings(config).catalog_url)
    try:
        records = list_records(catalog, with_uids=json_out)
    finally:
        catalog.close()
    if json_out:
        print(json.dumps({"deletions": records}, indent=2))
        return
    for record in records:
        _show(record)
    if not records:
        say("no deletions")


@deletions_app.command("show")
def deletions_show(
    deletion_id: Annotated[str, typer.Argument(help="The deletion's id (see `dicomvault deletions`)")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the record as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """One deletion record with its SOP Instance UIDs and each site's outcome."""
    from dicomvault.jobs.retention.delete import get

    with _archive(config) as archive:
        record = get(archive, deletion_id)
    if json_out:
        print(json.dumps(record, indent=2))
        return
    _show(record)
    for uid in record["sop_instance_uids"]:
        say(f"    {uid}")


@deletions_app.command("retry")
def deletions_retry(
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcomes as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Try every site a deletion is still pending on now (an unreachable site that is back)."""
    from dicomvault.jobs.retention.delete import retry_pending

    with _archive(config) as archive, progress_callback("deleting objects") as progress:
        outcomes = retry_pending(archive, actor=actor(), due_only=False, progress=progress)
    if json_out:
        print(json.dumps({"sites": outcomes}, indent=2))
    else:
        for item in outcomes:
            say(f"deletion {item['deletion']} on {item['site']}: {item['state']} ({item['deleted']} deleted, "
                f"{item['locked']} locked, {item['missing']} already absent)"
                + (f"  {item['error']}" if item["error"] else ""))
        if not outcomes:
            say("no deletion is pending on any site")
    if any(item["state"] == "pending" for item in outcomes):
        raise CliFailure("some sites are still unreachable; their deletions stay pending")


def retention_run(
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Delete every study past its keep-until that no hold covers, and rejected instances past
    [iocm] delete_after (only with [retention] enabled = true). Held studies are skipped."""
    from dicomvault.jobs.retention.run import run_retention

    with _archive(config) as archive, progress_callback("deleting objects") as progress:
        report = run_retention(archive, actor=actor(), progress=progress)
    if json_out:
        print(json.dumps(report, indent=2))
        return
    totals = report["totals"]
    say(f"retention run as of {report['as_of']}: {totals['studies']} studies and {totals['rejection_deletions']} "
        f"rejection deletions ({totals['instances']} instances, {totals['bytes']} bytes); "
        f"{totals['skipped']} skipped")
    for record in report["deleted"] + report["rejected"]:
        sites = ", ".join(f"{s['site']} {s['state']}" for s in record["sites"])
        say(f"  deletion {record['id']}: study {record['study_uid']} ({record['why']} {record['rule']}): "
            f"{record['instances']} instances; {sites}")
    for entry in report["skipped"]:
        say(f"  SKIPPED {entry['study_uid']}: {entry['error']}")
