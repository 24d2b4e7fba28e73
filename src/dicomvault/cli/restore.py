"""``dicomvault restore``: pour the archive back into a PACS, most urgent first, resumably.

Exit codes: 0 every selected instance is in the PACS; 1 the job could not run or stopped
(PACS unreachable, interrupted: run the same command again to resume); 2 it finished but
the PACS refused some instances (the report names each one with the status it gave).
"""

from __future__ import annotations

import json
import signal
import threading
from typing import Annotated, Any, Optional

import typer

from dicomvault.cli.common import CliFailure, ConfigOption, actor, console, open_archive, out, progress_bar

EXIT_SOME_FAILED = 2


def register(app: typer.Typer) -> None:
    app.command("restore")(restore)


def resolve_peer(settings: Any, name: str) -> Any:
    """A ``[peers.NAME]`` entry by name or AE title, or a one-line failure naming the known ones."""
    from dicomvault.jobs.restore.service import RequestError, resolve_peer as find

    try:
        return find(settings, name)
    except RequestError as exc:
        raise CliFailure(str(exc)) from exc


def restore(
    to: Annotated[Optional[str], typer.Option("--to", help="The [peers.NAME] (name or AE title) to restore into")] = None,
    since: Annotated[Optional[str], typer.Option(help="Only studies dated on/after YYYYMMDD")] = None,
    until: Annotated[Optional[str], typer.Option(help="Only studies dated on/before YYYYMMDD")] = None,
    patient: Annotated[Optional[list[str]], typer.Option("--patient", help="Patient ID (repeatable)")] = None,
    modality: Annotated[Optional[list[str]], typer.Option("--modality", help="Series modality (repeatable)")] = None,
    study: Annotated[Optional[list[str]], typer.Option("--study", help="Study Instance UID (repeatable)")] = None,
    associations: Annotated[int, typer.Option(help="Parallel associations to the PACS")] = 4,
    rate: Annotated[Optional[str], typer.Option(help="Keep the PACS responsive: e.g. 20MB/s or 50/s (instances)")] = None,
    resume: Annotated[Optional[int], typer.Option("--resume", help="Resume job ID (its peer and selection)")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Plan anew even if the same restore was started before")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Send the job's refused instances again")] = False,
    report: Annotated[Optional[int], typer.Option("--report", help="Print job ID's report and exit (sends nothing)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    coerce: Annotated[bool, typer.Option("--coerce-demographics", help="Send the current patient demographics "
                                         "(HL7 ADT updates) instead of the stored ones; listed with both SHA-256s")] = False,
    in_server: Annotated[bool, typer.Option("--in-server", help="Hand the job to the running `dicomvault serve` "
                                            "(POST /api/restores): it goes on if this terminal goes away")] = False,
    config: ConfigOption = None,
) -> None:
    """Restore into a PACS: last 24 h first, then the last 7 days, then newest first.

    Running the same command again resumes the job (what the PACS acknowledged is not sent
    again); --fresh starts over. Progress shows in `dicomvault status --json` and /api/restores.
    """
    if in_server:
        if coerce:
            raise CliFailure("--coerce-demographics is not passed to the server; set [peers.NAME] "
                             "coerce_demographics = true for jobs the server runs")
        if report is not None:
            raise CliFailure("--report reads the catalog directly; drop --in-server")
        body = {key: value for key, value in {
            "to": to, "since": since, "until": until, "patient": patient, "modality": modality, "study": study,
            "rate": rate, "resume": resume}.items() if value}
        body.update(associations=associations, fresh=fresh, retry_failed=retry_failed)
        from dicomvault.cli.common import settings
        from dicomvault.serve.api_client import ServerClient, ServerError

        try:
            result = ServerClient.for_settings(settings(config)).run_restore(body, progress_bar)
        except ServerError as exc:
            raise CliFailure(str(exc)) from exc
        print_job_report(result, json_out)
        if result["state"] not in ("completed", "completed with failures"):
            raise typer.Exit(1)
        if result["failed"]:
            raise typer.Exit(EXIT_SOME_FAILED)
        return

    # Imported only here: the catalog pulls in SQLAlchemy (~0.2 s of start-up) and a job handed
    # to the server never opens it from this process.
    from dicomvault.catalog.selection import Selection, SelectionError
    from dicomvault.jobs.restore.job import RateLimit
    from dicomvault.jobs.restore.plan import RestoreError, job_report, load_job, requeue_failed

    archive = open_archive(config)
    try:
        if report is not None:
            try:
                print_job_report(job_report(archive, report), json_out)
            except RestoreError as exc:
                raise CliFailure(str(exc)) from exc
            return
        already_done, plan = False, None
        try:
            if not 1 <= associations <= 32:
                raise RestoreError(f"--associations must be between 1 and 32, got {associations}")
            limit = RateLimit.parse(rate)
            if resume is not None:
                if to or since or until or patient or modality or study:
                    raise CliFailure("--resume takes the job's own peer and selection; drop --to and the filters")
                job = load_job(archive.catalog, resume)
                peer = resolve_peer(archive.settings, job.peer)
                job_id = job.id
            else:
                if not to:
                    raise CliFailure("say where to restore: --to PEER (a [peers.NAME] entry), or --resume JOB")
                peer = resolve_peer(archive.settings, to)
                selection = Selection.build(since, until, patient or (), modality or (), study or ())
                job_id, already_done, plan = plan_or_resume(archive, "restore", "urgency", peer, selection, fresh,
                                                            retry_failed, associations, rate)
            if retry_failed:
                console.print(f"{requeue_failed(archive.catalog, job_id)} refused instance(s) queued again")
            if already_done:
                result = job_report(archive, job_id)
            else:
                result = run_job(archive, job_id, peer, associations, limit, plan, coerce=coerce)
        except (RestoreError, SelectionError) as exc:
            raise CliFailure(str(exc)) from exc
    finally:
        archive.close()
    print_job_report(result, json_out)
    if result["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


def plan_or_resume(archive: Any, kind: str, ordering: str, peer: Any, selection: Any, fresh: bool,
                   retry_failed: bool, associations: int, rate: str | None) -> tuple[int, bool, Any]:
    """jobs/restore_service.choose_or_create, telling the operator which job it is. Returns
    (job id, already done, the plan ``run_job`` writes out first or None)."""
    from dicomvault.jobs.restore.service import choose_or_create

    job_id, done, plan = choose_or_create(archive, kind, ordering, peer, selection, fresh, retry_failed,
                                          associations, rate, actor(), say=console.print)
    return job_id, done, None if plan is None else (selection, plan)


def run_job(archive: Any, job_id: int, peer: Any, associations: int, limit: Any, plan: Any = None,
            coerce: bool = False) -> dict[str, Any]:
    """Plan (when ``plan`` is given: under the job's lock, shown as planning) and send."""
    from dicomvault.jobs.restore.job import RestoreRunner
    from dicomvault.jobs.restore.plan import job_progress

    start = job_progress(archive.catalog, job_id)
    with progress_bar() as bar:
        task = bar.add_task(f"sending to {peer.name}", total=start["total"],
                            completed=start["sent"] + start["failed"])
        base = start["sent"] + start["failed"]
        runner = RestoreRunner(archive, job_id, peer, associations, limit, actor(),
                               on_progress=lambda c: bar.update(task, completed=base + c["sent"] + c["failed"]),
                               plan=plan, coerce=coerce)
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):  # stop cleanly: the job stays resumable
                previous[signum] = signal.signal(signum, lambda *_: runner.stop())
        try:
            result = runner.run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return result


def print_job_report(report: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print(json.dumps(report, indent=2, default=str))
        return
    out.print(f"{report['kind']} job {report['id']} to {report['peer']} ({report['destination']}): {report['state']}; "
              f"{report['sent']}/{report['total']} sent, {report['failed']} failed, {report['pending']} pending, "
              f"{report['transcoded']} transcoded")
    if report.get("instances_per_second"):
        out.print(f"  {report['bytes_sent'] / 1e6:.1f} MB in {report['seconds_sending']:.1f} s "
                  f"({report['instances_per_second']} instances/s, {report['megabytes_per_second']} MB/s)")
    for tier in report["tiers"]:
        out.print(f"  {tier['tier']}: {tier['sent']}/{tier['total']} sent, {tier['failed']} failed")
    for failure in report.get("failures", []):
        out.print(f"  FAILED {failure['sop_instance_uid']} ({failure['sop_class_uid']}): "
                  f"status {failure['status'] or '-'} {failure['reason']}", markup=False, highlight=False)
    for coerced in report.get("coerced", []):
        out.print(f"  coerced {coerced['sop_instance_uid']}: stored SHA-256 {coerced['stored_sha256']}, "
                  f"sent {coerced['sent_sha256']}", markup=False, highlight=False)
    for converted in report.get("transcoded_instances", []):
        out.print(f"  transcoded {converted['sop_instance_uid']}: {converted['stored']} -> {converted['sent']}",
                  markup=False, highlight=False)
