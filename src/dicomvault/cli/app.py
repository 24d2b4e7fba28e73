"""The ``dicomvault`` command. Exit 0 on success, non-zero with a one-line reason on failure."""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dicomvault import __version__
from dicomvault.cli.common import CliFailure, ConfigOption, out, progress_bar
from dicomvault.cli.common import actor as _actor
from dicomvault.cli.common import open_archive as _open
from dicomvault.config import DEFAULT_CONFIG_NAME, DEFAULT_CONFIG_TEMPLATE, ConfigError, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, help="dicomvault: a disaster-recovery archive for DICOM.")
audit_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect and verify the hash-chained audit log.")
app.add_typer(audit_app, name="audit")
from dicomvault.cli.sites import SitesFailure, sites_app  # noqa: E402

app.add_typer(sites_app, name="sites")
from dicomvault.cli.replica import replica_app  # noqa: E402

app.add_typer(replica_app, name="replica-token")
from dicomvault.cli import export as cli_export
from dicomvault.cli import rebuild as cli_rebuild
from dicomvault.cli import reconcile as cli_reconcile
from dicomvault.cli import restore as cli_restore
from dicomvault.cli import verify as cli_verify

for _commands in (cli_restore, cli_reconcile, cli_export, cli_verify, cli_rebuild):  # each adds its top-level command(s)
    _commands.register(app)
from dicomvault.cli import drill as cli_drill

cli_drill.register(app)  # dicomvault drill
from dicomvault.cli import retention as cli_retention

cli_retention.register(app)  # dicomvault retention plan, dicomvault hold add|list|release
from dicomvault.cli import patient as cli_patient  # noqa: E402

cli_patient.register(app)  # dicomvault patient history ID
from dicomvault.cli import keys as cli_keys

cli_keys.register(app)  # dicomvault keys status|rotate
from dicomvault.cli import deletion as cli_deletion

cli_deletion.register(app, cli_retention.retention_app)  # dicomvault delete, deletions, retention run
from dicomvault.cli import capacity as cli_capacity

cli_capacity.register(app)  # dicomvault capacity
from dicomvault.cli import alerts as cli_alerts

cli_alerts.register(app)  # dicomvault alerts list|ack|test


@app.command()
def init(
    dir: Annotated[Path, typer.Option("--dir", help="Data directory to create the archive in")] = Path("."),
    force: Annotated[bool, typer.Option(help="Write the config even if one exists (keys are never overwritten)")] = False,
) -> None:
    """Create DIR/dicomvault.toml with commented defaults and generate the keys."""
    from dicomvault.crypto import generate_keys

    dir.mkdir(parents=True, exist_ok=True)
    config_path = dir / DEFAULT_CONFIG_NAME
    if config_path.exists() and not force:
        raise CliFailure(f"{config_path} already exists; use --force to rewrite it (keys are kept)")
    config_path.write_text(DEFAULT_CONFIG_TEMPLATE)
    settings = load_settings(config_path)
    recovery_private = dir / "recovery-key.pem"
    if not settings.site_key_file.exists():
        generate_keys(settings.site_key_file, settings.recovery_public_key_file, recovery_private)
    from dicomvault.archive.core import Archive

    archive = Archive.open(settings)
    from dicomvault.audit import AuditEvent, append

    with archive.catalog.write() as conn:
        append(conn, AuditEvent(actor=_actor(), action="config", subject=str(config_path.resolve()),
                                detail={"event": "init", "key_fingerprint": archive.keyring.fingerprint}))
    archive.close()
    from dicomvault.serve.tokens import write_new_tokens_file

    api_token = write_new_tokens_file(Path(settings.http.api_tokens_file), "admin")
    out.print(f"Created {config_path} (AE title DICOMVAULT, DIMSE port 11112, HTTP port 8080).")
    if api_token is not None:
        out.print(f"Token for the operations API and DICOMweb ('Authorization: Bearer <token>'): written to "
                  f"{settings.http.api_tokens_file} (mode 0600) as 'admin' with role admin; add a "
                  "name:token:roles line per dashboard, viewer or script (roles: read, store, operator, admin).")
    if recovery_private.exists():
        out.print(
            f"[bold red]RECOVERY KEY written to {recovery_private}.[/bold red] It opens every copy of this archive "
            "on every site. Move it OFFLINE now (safe, sealed envelope, HSM) and delete it from this machine; "
            "without it a copy whose site key is lost cannot be read."
        )
    out.print(f"Start the archive with: dicomvault serve --config {config_path}")


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run DIMSE, HTTP and the background workers in one process until SIGINT/SIGTERM."""
    from dicomvault.ingest.dimse import DimseServer
    from dicomvault.serve.http import HttpServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    archive = _open(config)
    adopted = archive.ingestor.recover()
    if adopted:
        logging.getLogger("dicomvault").warning("crash recovery re-indexed %d complete object(s)", len(adopted))
    settings = archive.settings
    from dicomvault.replicate.service import ReplicationService

    replication = ReplicationService(settings, archive.catalog, archive.site, archive.repository)
    archive.replication = replication
    archive.ingestor.on_stored.append(replication.notify)
    # --- storage commitment SCP (ingest/commitment.py): N-ACTION handler + background evaluator ---
    from dicomvault.ingest.commitment import StorageCommitmentService

    commitment = StorageCommitmentService(settings, archive.catalog)
    # Whatever can make the copy policy hold wakes the evaluator: a verified copy, a stored instance.
    replication.on_verified.append(commitment.notify)
    archive.ingestor.on_stored.append(commitment.notify)
    # --- end storage commitment ---
    from dicomvault.ingest.gate import AccessGate

    gate = AccessGate.from_settings(settings, archive.catalog)  # who may do what over DICOM
    from dicomvault.ingest.iocm import RejectionNotes

    notes = RejectionNotes.from_settings(settings, archive.catalog)  # IOCM rejection notes
    if settings.dicom.engine == "pynetdicom":
        dimse: Any = DimseServer(settings.dicom, archive.ingestor, commitment=commitment, gate=gate, notes=notes)
    else:
        from dicomvault.ingest.listener import FastDimseServer
        from dicomvault.serve.qr.find import QueryRetrieveService

        dimse = FastDimseServer(settings.dicom, archive.ingestor, commitment=commitment,
                                query_retrieve=QueryRetrieveService(archive), gate=gate,
                                spool_dir=Path(settings.base_dir) / "tmp" / "dimse", notes=notes)
    from dicomvault.jobs.restore.service import RestoreService

    restores = RestoreService(archive)  # jobs started with POST /api/restores
    from dicomvault.audit.forward import AuditForwarder

    # ATNA export: every audit row to [audit] syslog, in order (before listening: bad TLS files stop here)
    audit_export = AuditForwarder(archive.catalog, settings)
    archive.ingestor.on_stored.append(audit_export.notify)
    from dicomvault.ingest.hl7 import Hl7Listener

    try:
        hl7_listener = Hl7Listener(settings.hl7, archive.catalog)  # ADT feed; off unless [hl7] port
    except ConfigError as exc:
        raise CliFailure(str(exc)) from exc
    http = (HttpServer(archive, settings.http.bind, settings.http.port, restores=restores)
            if settings.http.enabled else None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if http is not None:  # first, so that a sender that gets a C-ECHO answer finds HTTP up too
        try:
            http.start()
        except OSError as exc:
            raise CliFailure(f"cannot serve HTTP on {settings.http.bind}:{settings.http.port}: {exc}") from exc
    try:
        dimse.start()
    except (OSError, ConfigError) as exc:  # a port in use, or [dicom] TLS files that cannot be used
        if http is not None:
            http.stop()
        if isinstance(exc, ConfigError):
            raise CliFailure(f"cannot start the DICOM TLS listener: {exc}") from exc
        ports = " and ".join(str(p) for p in (settings.dicom.port, settings.dicom.tls_port) if p)
        raise CliFailure(f"cannot listen for DICOM on {settings.dicom.bind}:{ports}: {exc.strerror}") from exc
    try:
        hl7_listener.start()
    except (OSError, ConfigError) as exc:
        dimse.stop()
        if http is not None:
            http.stop()
        why = str(exc) if isinstance(exc, ConfigError) else exc.strerror
        raise CliFailure(f"cannot listen for HL7 on {settings.hl7.bind}:{settings.hl7.port}: {why}") from exc
    archive.ingestor.durability.start()
    replication.start()
    commitment.start()  # storage commitment evaluator and report deliverer
    # --- scheduled reconcile ---
    from dicomvault.jobs.reconcile.schedule import ReconcileScheduler

    reconcile_scheduler = ReconcileScheduler(archive.catalog, settings)
    reconcile_scheduler.start()  # off unless [reconcile] peer is set
    # --- end scheduled reconcile ---
    from dicomvault.jobs.verify.scrub import ScrubScheduler

    scrub = ScrubScheduler(archive)
    scrub.start()  # proves every copy once per [scrub] period
    from dicomvault.jobs.drill.schedule import DrillScheduler

    drills = DrillScheduler(archive)
    drills.start()  # a restore drill from every site per [drill] every
    from dicomvault.jobs.rebuild.refill import PrimaryRefill
    from dicomvault.jobs.rebuild.snapshot import SnapshotScheduler

    snapshots = SnapshotScheduler(archive)
    snapshots.start()  # an encrypted catalog snapshot to every site per [snapshots] every
    refill = PrimaryRefill(archive.catalog, archive.repository, archive.site)
    refill.start()  # after a rebuild on a new host: copies the primary lacks, from the replicas
    _audit_serve(archive, "start")
    from dicomvault.jobs.retention.plan import refresh_in_background

    refresh_in_background(archive.catalog, settings.retention)  # keep-until dates after a [retention] change
    from dicomvault.jobs.retention.run import RetentionScheduler

    retention_runs = RetentionScheduler(archive)
    retention_runs.start()  # deletes what expired per [retention] schedule (when enabled); retries pending sites
    audit_export.start()  # off unless [audit] syslog is set
    from dicomvault.jobs.alerts.engine import AlertEngine
    from dicomvault.serve.status import archive_status

    alert_engine = AlertEngine(archive.catalog, settings, lambda: archive_status(archive))
    alert_engine.start()  # raises, reminds, resolves; tells every [alerts] channel
    print(
        f"dicomvault {__version__} serving: DICOM {settings.dicom.ae_title}@{settings.dicom.bind}:{settings.dicom.port}"
        + (f" (TLS :{settings.dicom.tls_port})" if settings.dicom.tls_port else "")
        + (f", HTTP {settings.http.bind}:{settings.http.port}" if http else "")
        + (f", HL7 {settings.hl7.bind}:{settings.hl7.port}" if settings.hl7.port else ""),
        flush=True,
    )
    stop.wait()
    alert_engine.stop()
    hl7_listener.stop()
    dimse.stop()
    if http is not None:
        http.stop()
    restores.close()  # API-started restores stop after the instances in flight; resumable
    scrub.stop()
    drills.stop()  # interrupts a drill in progress (recorded as interrupted)
    snapshots.stop()
    retention_runs.stop()
    refill.stop()
    # --- scheduled reconcile ---
    reconcile_scheduler.stop()  # interrupts a run in progress; never hangs
    # --- end scheduled reconcile ---
    commitment.stop()  # storage commitment threads
    replication.stop()
    archive.ingestor.close()
    _audit_serve(archive, "stop")
    audit_export.stop()  # delivers the stop event (and any backlog) for a few seconds, then stops
    archive.close()


def _audit_serve(archive: Any, event: str) -> None:
    """Application Activity (start / stop) for the audit trail: when was the archive serving."""
    from dicomvault.audit import AuditEvent, append

    with archive.catalog.write() as conn:
        append(conn, AuditEvent(actor=_actor(), action="serve", subject=archive.settings.dicom.ae_title,
                                detail={"event": event, "version": __version__, "pid": os.getpid()}))


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive)")],
    config: ConfigOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Store DICOM files and folders; non-DICOM and broken files are listed, never half-stored."""
    from dicomvault.ingest.folder import import_paths, iter_files

    archive = _open(config)
    total = sum(1 for _ in iter_files(paths))
    with progress_bar() as progress:
        task = progress.add_task("importing", total=total)
        report = import_paths(archive.ingestor, paths, _actor(), progress=lambda _p: progress.advance(task))
    archive.ingestor.durability.flush()
    archive.close()
    if json_out:
        out.print_json(data=report.to_dict())
    else:
        out.print(f"stored {report.stored}, already present {report.duplicates}, refused {len(report.refused)}")
        for path, reason in report.refused:
            out.print(f"  refused {path}: {reason}", markup=False, highlight=False)
    if report.refused and not (report.stored or report.duplicates):
        raise typer.Exit(1)


@app.command()
def find(
    config: ConfigOption = None,
    patient_id: Annotated[Optional[str], typer.Option("--patient-id", help="Patient ID (* wildcards)")] = None,
    patient_name: Annotated[Optional[str], typer.Option("--patient-name", help="Patient name (* wildcards)")] = None,
    date_from: Annotated[Optional[str], typer.Option("--from", help="Study date from (YYYYMMDD)")] = None,
    date_to: Annotated[Optional[str], typer.Option("--to", help="Study date to (YYYYMMDD)")] = None,
    modality: Annotated[Optional[str], typer.Option(help="Modality, e.g. CT")] = None,
    accession: Annotated[Optional[str], typer.Option(help="Accession number (* wildcards)")] = None,
    study_uid: Annotated[Optional[str], typer.Option("--study-uid", help="Study Instance UID")] = None,
    limit: Annotated[int, typer.Option(help="At most this many studies")] = 1000,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Search studies in the catalog."""
    for label, value in (("--from", date_from), ("--to", date_to)):
        if value and not (len(value) == 8 and value.isdigit()):
            raise CliFailure(f"{label} must be a date as YYYYMMDD, got {value!r}")
    archive = _open(config)
    rows = archive.catalog.find_studies(
        patient_id=patient_id, patient_name=patient_name, date_from=date_from, date_to=date_to,
        modality=modality, accession=accession, study_uid=study_uid, limit=limit,
    )
    from dicomvault.audit import AuditEvent, append

    with archive.catalog.write() as conn:
        append(conn, AuditEvent(actor=_actor(), action="query", detail={
            "filters": {k: v for k, v in dict(patient_id=patient_id, patient_name=patient_name, date_from=date_from,
                        date_to=date_to, modality=modality, accession=accession, study_uid=study_uid).items() if v},
            "results": len(rows)}))
    archive.close()
    if json_out:
        out.print_json(data=rows)
        return
    from rich.table import Table

    table = Table("Patient ID", "Name", "Date", "Modalities", "Accession", "Description", "Instances", "Study UID")
    for row in rows:
        table.add_row(row["patient_id"], row["patient_name"], row["study_date"], ",".join(row["modalities"]),
                      row["accession_number"], row["study_description"], str(row["instances"]), row["study_uid"])
    out.print(table)


@app.command()
def get(
    uid: Annotated[str, typer.Argument(help="Study, series or SOP Instance UID")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write Part-10 files into")],
    config: ConfigOption = None,
    all_versions: Annotated[bool, typer.Option("--all-versions", help="Every stored version, not only the latest")] = False,
) -> None:
    """Write a study, series or instance back as Part-10 files, byte-identical to what came in."""
    from dicomvault.jobs.restore.retrieve import RetrieveError, retrieve_to_dir

    archive = _open(config)
    try:
        with progress_bar() as progress:
            task = progress.add_task("retrieving", total=None)
            files = retrieve_to_dir(archive.catalog, archive.repository, uid, out_dir, _actor(), all_versions,
                                    progress=lambda _r: progress.advance(task))
    except RetrieveError as exc:
        raise CliFailure(str(exc)) from exc
    finally:
        archive.close()
    out.print(f"wrote {len(files)} file(s) to {out_dir}")


@app.command()
def status(
    config: ConfigOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    verify_audit: Annotated[bool, typer.Option("--verify-audit", help="Also walk the audit hash chain")] = False,
) -> None:
    """Protection state first (exit 0 protected, 1 at risk, 2 unprotected, 3 cannot tell),
    then counts, bytes, newest ingest, site health and alerts."""
    from dicomvault.archive.readiness import EXIT_CODES
    from dicomvault.serve.status import archive_status

    try:
        archive = _open(config)
        report = archive_status(archive, verify_audit=verify_audit)
        archive.close()
    except _one_line_failures() as exc:  # not "at risk": monitoring must see that nobody could judge
        print(f"dicomvault: error: {exc}", file=sys.stderr)
        raise typer.Exit(3) from exc
    protection = report["protection"]
    if json_out:
        print(json.dumps(report, indent=2, default=str))
    else:
        state = protection["state"].upper()
        out.print(state if not protection["reasons"] else
                  f"{state}: " + "; ".join(r["code"] for r in protection["reasons"]), markup=False, highlight=False)
        for reason in protection["reasons"]:
            out.print(f"  {reason['severity']}: {reason['text']}", markup=False, highlight=False)
        counts = report["counts"]
        out.print(f"{'OK' if not report['alerts'] else 'ATTENTION'}: {counts['studies']} studies, "
                  f"{counts['instances']} instances, "
                  f"{report['bytes_received']} bytes received, {report['bytes_stored']} stored")
        access = report["access"]
        out.print(f"  access: unknown AEs may {', '.join(['echo', *access['anonymous']])}; "
                  f"{len(access['peers'])} peer(s); {access['denied_last_24h']} request(s) refused in 24 h")
        kept = report["retention"]
        out.print(f"  retention: {', '.join(kept['rules']) or 'no rules'} (default {kept['default']}); "
                  f"{kept['due']} study(ies) due, {kept['expired_held']} expired but held; "
                  f"{kept['holds_active']} legal hold(s) in force"
                  + (f"; {kept['stale']} keep-until date(s) to recompute (`dicomvault retention plan`)"
                     if kept["stale"] else ""), markup=False, highlight=False)
        rejected = report["rejections"]
        if rejected["rejected"]:
            out.print(f"  rejected (IOCM): {rejected['rejected']} instance(s), {rejected['stored']} of them stored, "
                      f"{rejected['due']} due for deletion (delete_after {rejected['delete_after']})")
        keys = report["keys"]
        out.print(f"  keys: site key {', '.join(g['id'] for g in keys['site_keys'])} (current "
                  f"{keys['site_keys'][-1]['id']}), recovery key {keys['recovery_key']['id']}; "
                  f"{keys['shreddable']} stud(ies) crypto-shreddable, {keys['not_shreddable']} not (objects sealed "
                  "before key records carry their key: on write-once sites deletion cannot make them unreadable)"
                  if keys["not_shreddable"] else
                  f"  keys: site key {keys['site_keys'][-1]['id']}, recovery key {keys['recovery_key']['id']}; "
                  f"every study crypto-shreddable", markup=False, highlight=False)
        deleted = report["deletions"]
        recent = deleted["last_30_days"]
        if recent["deletions"] or deleted["pending_sites"]:
            out.print(f"  deletions in 30 days: {recent['deletions']} ({recent['instances']} instance(s), "
                      f"{recent['bytes']} bytes); {deleted['pending_sites']} site task(s) pending "
                      "(`dicomvault deletions`)", markup=False, highlight=False)
        export = report["audit"]["export"]
        if export["target"]:
            out.print(f"  audit export to {export['target']}: {export['backlog']} event(s) to send"
                      + (f" (last error: {export['error']})" if export["error"] else ""))
        for site, entry in report["sites"].items():
            if entry.get("not_started"):
                out.print(f"  site {site}: NOT STARTED ({entry['not_started']})", markup=False, highlight=False)
        alerting = report["alerting"]
        if alerting["channels"] or alerting["open"]:
            channels = ", ".join(f"{name} {'ok' if state['ok'] is not False else 'FAILING'}"
                                 for name, state in alerting["channels"].items()) or "no channel configured"
            out.print(f"  alerts sent by serve: {alerting['open']} open ({alerting['acknowledged']} acknowledged; "
                      f"`dicomvault alerts list`); {channels}", markup=False, highlight=False)
        for alert in report["alerts"]:
            out.print(f"  alert: {alert}")
    # The exit says the protection state only (monitoring scripts); other alerts show above and in "ok".
    if EXIT_CODES[protection["state"]]:
        raise typer.Exit(EXIT_CODES[protection["state"]])


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None) -> None:
    """Walk the hash chain; exit non-zero at the first row that does not hold."""
    from dicomvault.audit import verify_chain

    archive = _open(config)
    with archive.catalog.read() as conn:
        report = verify_chain(conn)
    archive.close()
    if not report.ok:
        raise CliFailure(f"audit chain BROKEN at row {report.first_bad_id}: {report.reason}")
    out.print(f"audit chain intact: {report.rows} rows")


@app.command("recover-read")
def recover_read(
    site_url: Annotated[str, typer.Option("--site", help="Where the copies are: s3://bucket/prefix, file:///mnt/nas/...")],
    recovery_key: Annotated[Path, typer.Option("--recovery-key", help="The offline recovery-key.pem written by init")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the Part-10 files")],
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Site option KEY=VALUE (repeatable)")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Only this Study Instance UID")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Disaster recovery: read a site's copies with only the recovery key (no catalog, no site key)."""
    from dicomvault.crypto.keys import RecoveryKey
    from dicomvault.archive.disaster import restore_from_site
    from dicomvault.sites import open_site

    options: dict[str, object] = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliFailure(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    recovery = RecoveryKey.load(recovery_key)
    site = open_site(site_url, options)
    with progress_bar() as progress:
        task = progress.add_task("reading copies", total=None)
        report = restore_from_site(site, recovery, out_dir, study, progress=lambda: progress.advance(task))
    if json_out:
        out.print_json(data=report.to_dict())
    else:
        out.print(f"wrote {report.written} instance(s), {report.bytes} bytes, to {out_dir}; "
                  f"{len(report.failed)} object(s) could not be opened")
        for name, reason in report.failed:
            out.print(f"  {name}: {reason}", markup=False, highlight=False)
    if report.failed or not report.written:
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


def _one_line_failures() -> tuple[type[Exception], ...]:
    """The failures reported as one line. The catalog's and the keys' are looked up only if
    their module was imported (one that was not cannot have raised), so `version` or `--help`
    do not pay for SQLAlchemy and cryptography."""
    found: list[type[Exception]] = [CliFailure, SitesFailure, ConfigError]
    for module, name in (("dicomvault.crypto.keys", "KeyError_"), ("dicomvault.sites.base", "SiteError"),
                         ("dicomvault.catalog.db", "CatalogError")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def _quick_exit() -> None:
    """At exit, spare the interpreter its last garbage collection over every imported module
    (0.15-0.25 s once SQLAlchemy is loaded): collect the young garbage the command left, then
    freeze the rest. The other atexit handlers, thread joins and stream flushes still run."""
    gc.collect(1)
    gc.freeze()


def main() -> None:
    atexit.register(_quick_exit)
    try:
        # Without standalone mode click returns (not raises) the code of a typer.Exit.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("dicomvault: aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # one-line failures, click usage errors
        if isinstance(exc, _one_line_failures()):
            print(f"dicomvault: error: {exc}", file=sys.stderr)
            sys.exit(1)
        # Usage errors: click's, or the copy typer vendors (typer._click) since typer 0.29.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        raise


if __name__ == "__main__":
    main()
