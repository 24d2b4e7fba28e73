"""``dicomvault verify``: read back every copy on every site, check it, repair what fails.

Exit codes: 0 every copy checked is good (damage found was repaired: the report and the
audit log say which); 1 the check could not run; 2 some copy is damaged or missing and could
not be repaired from any other site (ALERT: that object has fewer good copies than promised),
or a site is quarantined (its copies are neither checked nor trusted until it is cleared).
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from dicomvault.cli.common import CliFailure, ConfigOption, actor, open_archive, out, progress_callback

EXIT_UNREPAIRED = 2


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)


def verify(
    all_copies: Annotated[bool, typer.Option("--all", help="Every copy (the default)")] = False,
    sample: Annotated[Optional[int], typer.Option("--sample", help="Only N random copies per site")] = None,
    site: Annotated[Optional[list[str]], typer.Option("--site", help="Only this site (repeatable): primary or a "
                                                                      "[sites.NAME]")] = None,
    no_repair: Annotated[bool, typer.Option("--no-repair", help="Report damage without rewriting copies (or "
                                                                "renewing S3 Object Lock retention)")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Prove the copies: read, authenticate, decrypt and SHA-256-check each one on each site;
    rewrite a missing or damaged copy from a healthy site (audited, alerted); on S3 sites with
    object_lock_days, keep each good copy under Object Lock retention."""
    from dicomvault.jobs.verify.job import VerifyError, verify as run_verify
    from dicomvault.jobs.verify.retention import RENEW_FRACTION

    if all_copies and sample is not None:
        raise CliFailure("--all and --sample N exclude each other")
    if sample is not None and sample < 1:
        raise CliFailure(f"--sample must be at least 1, got {sample}")
    archive = open_archive(config)
    try:
        with progress_callback("verifying copies") as progress:
            report = run_verify(archive, actor(), only_sites=site or None, sample=sample, repair=not no_repair,
                                progress=progress)
    except VerifyError as exc:
        raise CliFailure(str(exc)) from exc
    finally:
        archive.close()
    summary = report.to_dict()
    if json_out:
        print(json.dumps(summary, indent=2))
    else:
        for name, result in summary["sites"].items():
            if name in summary["quarantined"] and not result["checked"]:
                out.print(f"{name}: QUARANTINED, not checked (`dicomvault sites clear {name}` after investigating)")
                continue
            out.print(f"{name}: {result['checked']} checked, {result['ok']} good, {result['missing']} missing, "
                      f"{result['damaged']} damaged, {result['repaired']} repaired, {result['unrepaired']} NOT repaired")
            lock = result.get("retention")  # S3 sites with object_lock_days
            if lock and lock["warning"]:
                out.print(f"  WARNING: {lock['warning']}", markup=False, highlight=False)
            elif lock:
                out.print(f"  Object Lock retention ({lock['days']} days): {lock['missing']} missing, {lock['short']} "
                          f"ending within {lock['days'] * RENEW_FRACTION:g} days, {lock['fixed']} set or extended, "
                          f"{lock['failed']} could NOT be set" + (f" ({lock['error']})" if lock["error"] else ""),
                          markup=False, highlight=False)
        for finding in summary["findings"]:
            fix = f"repaired from {finding['repaired_from']}" if finding["repaired_from"] else \
                f"NOT repaired: {finding['repair_error'] or 'repair disabled'}"
            out.print(f"  {finding['site']} {finding['object_id']}: {finding['problem']} ({finding['detail']}); {fix}",
                      markup=False, highlight=False)
        out.print(f"{summary['original_megabytes_per_second']} MB/s of original data verified in {summary['seconds']} s")
    if report.unrepaired or report.quarantined:
        raise typer.Exit(EXIT_UNREPAIRED)
