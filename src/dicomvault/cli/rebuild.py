"""``dicomvault snapshot`` and ``dicomvault rebuild-index``: the catalog's own disaster recovery.

``snapshot`` writes an encrypted catalog snapshot to every site now (``serve`` does it on
its schedule). ``rebuild-index --from SITE --recovery-key FILE`` rebuilds the catalog, and
on a new host the keys, from that one site. Exit codes: 0 done; 1 could not run (nothing
changed); 2 done, but some objects on the site could not be opened (listed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from dicomvault.cli.common import CliFailure, ConfigOption, actor, console, open_archive, out, progress_bar, settings


def register(app: typer.Typer) -> None:
    app.command("snapshot")(snapshot)
    app.command("rebuild-index")(rebuild_index)


def snapshot(
    site: Annotated[Optional[list[str]], typer.Option("--site", help="Only this site (repeatable)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Write an encrypted snapshot of the catalog to every site now (serve does it on a schedule)."""
    from dicomvault.jobs.rebuild.snapshot import SnapshotError, take_snapshot

    archive = open_archive(config)
    try:
        report = take_snapshot(archive, actor(), only_sites=site or None)
    except SnapshotError as exc:
        raise CliFailure(str(exc)) from exc
    finally:
        archive.close()
    if json_out:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        out.print(f"snapshot {report.name}: {report.rows} catalog rows, {report.size} bytes sealed, "
                  f"{report.seconds:.2f} s")
        for name, outcome in report.sites.items():
            out.print(f"  {name}: {outcome}" + (f" (pruned {report.pruned[name]} old)" if report.pruned.get(name)
                                                else ""), markup=False, highlight=False)
    if not report.ok:
        raise CliFailure("the snapshot could not be written to every site (see above)")


def rebuild_index(
    from_site: Annotated[str, typer.Option("--from", help="The site to rebuild from: primary or a [sites.NAME]")],
    recovery_key: Annotated[Path, typer.Option("--recovery-key", help="The offline recovery-key.pem from init")],
    force: Annotated[bool, typer.Option("--force", help="Replace the contents of a catalog that is not empty")] = False,
    refill: Annotated[bool, typer.Option("--refill", help="Then copy every object the primary lacks back onto it "
                                                         "(serve does it in the background otherwise)")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Rebuild the catalog (and missing host keys) from one site's newest snapshot plus the
    objects written after it, with the offline recovery key."""
    from dicomvault.catalog import CatalogError
    from dicomvault.jobs.rebuild.index import RebuildError, rebuild_index as run_rebuild

    started = time.monotonic()
    conf = settings(config)
    with progress_bar() as bar:
        task = bar.add_task("rebuilding the catalog", total=None)
        try:
            report = run_rebuild(conf, from_site, recovery_key, force=force, actor=actor(),
                                 progress=lambda what, done: bar.update(task, description=what, completed=done))
        except (RebuildError, CatalogError) as exc:
            raise CliFailure(str(exc)) from exc
    summary = report.to_dict()
    if refill and report.copies_owed_to_primary:
        from dicomvault.jobs.rebuild.refill import refill_primary

        archive = open_archive(config)
        try:
            with progress_bar() as bar:
                task = bar.add_task("copying objects back to the primary", total=report.copies_owed_to_primary)
                refilled = refill_primary(archive.catalog, archive.repository, archive.site,
                                          progress=lambda done, total: bar.update(task, completed=done))
        finally:
            archive.close()
        summary["refill"] = refilled.to_dict()
    summary["total_seconds"] = round(time.monotonic() - started, 3)
    if json_out:
        print(json.dumps(summary, indent=2))
    else:
        age = time.time() - (report.snapshot_created_at or time.time())
        out.print(f"catalog rebuilt from site {report.site}: snapshot {report.snapshot} ({age / 3600:.1f} h old, "
                  f"{report.snapshot_rows} rows) + {report.objects_after_snapshot} object(s) written after it; "
                  f"{report.studies} studies, {report.instances} instances; {summary['total_seconds']} s")
        if report.keys_restored:
            out.print("the archive's site key was restored from the snapshot (a key made by init was set aside as "
                      "*.replaced-*); the recovery key you used stays this archive's recovery key")
        for skipped in report.skipped_snapshots:
            out.print(f"  skipped damaged snapshot {skipped['name']}: {skipped['reason']}", markup=False)
        for bad in report.unreadable_objects:
            out.print(f"  object {bad['object']} NOT indexed: {bad['reason']}", markup=False, highlight=False)
        if report.copies_owed_to_primary and not refill:
            console.print(f"the primary lacks {report.copies_owed_to_primary} object(s): reads use the replicas "
                          "meanwhile; `dicomvault serve` copies them back (or run with --refill)")
        if "refill" in summary:
            out.print(f"copied {summary['refill']['copied']} object(s) back to the primary, "
                      f"{len(summary['refill']['failed'])} failed")
    if report.unreadable_objects or summary.get("refill", {}).get("failed"):
        raise typer.Exit(2)
