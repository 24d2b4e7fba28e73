"""`dicomvault sites`: list, add, test, status and retry the replica sites.

Sites are defined in ``dicomvault.toml`` (the admin's single source of truth, comments
kept): ``add`` appends a ``[sites.NAME]`` table after checking the site answers, and the
running server picks it up at its next start (it then backfills every existing object).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from dicomvault.config import ConfigError, load_settings, resolve_config_path

sites_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Replica sites: where the copies go (NAS, S3, another vault).")
out = Console()

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="dicomvault.toml (default: $DICOMVAULT_CONFIG or ./dicomvault.toml)"),
]


class SitesFailure(Exception):
    """A sites command failed; the message says what to do."""


def _toml_value(text: str) -> str:
    if text.lower() in ("true", "false"):
        return text.lower()
    if text.lstrip("-").isdigit():
        return text
    return json.dumps(text)  # a JSON string is a valid TOML basic string


@sites_app.command("list")
def list_sites(config: ConfigOption = None, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every configured site with its role, rate and schedule."""
    settings = load_settings(config)
    rows = [{"name": "primary", "url": settings.primary_site_url, "offsite": False, "rate": "-", "schedule": []}]
    rows += [{"name": r.name, "url": r.url, "offsite": r.offsite, "rate": r.rate, "schedule": list(r.schedule)}
             for r in settings.replicas]
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table  # only the human-readable listings draw tables

    table = Table("site", "url", "where", "rate", "schedule")
    for row in rows:
        table.add_row(row["name"], row["url"], "off-site" if row["offsite"] else "on-site", row["rate"],
                      "; ".join(row["schedule"]))
    out.print(table)


@sites_app.command("add")
def add_site(
    name: Annotated[str, typer.Argument(help="Short name, e.g. offsite or nas")],
    url: Annotated[str, typer.Argument(help="file:///mnt/nas/dv, s3://bucket/prefix")],
    config: ConfigOption = None,
    onsite: Annotated[bool, typer.Option("--onsite", help="The site is in the same building (does not count as off-site)")] = False,
    rate: Annotated[str, typer.Option(help='Upload limit outside the windows, e.g. "20MB/s"')] = "unlimited",
    window: Annotated[Optional[list[str]], typer.Option("--window", help='e.g. "Mon-Fri 07:00-19:00 20MB/s" (repeatable)')] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Backend option KEY=VALUE, e.g. endpoint_url=https://... (repeatable)")] = None,
    workers: Annotated[int, typer.Option(help="Parallel uploads to this site (1-32)")] = 4,
    no_test: Annotated[bool, typer.Option("--no-test", help="Add it even if it does not answer now")] = False,
) -> None:
    """Add a replica site to the configuration after checking it answers."""
    from dicomvault.replicate.targets import SiteTarget, open_target

    path = resolve_config_path(config)
    settings = load_settings(path)
    if name == "primary" or any(r.name == name for r in settings.replicas):
        raise SitesFailure(f"a site named {name!r} already exists; pick another name")
    options: dict[str, str] = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SitesFailure(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    if window or rate != "unlimited":
        from dicomvault.replicate.throttle import Schedule

        try:
            Schedule.parse(rate, list(window or []))
        except ValueError as exc:
            raise SitesFailure(str(exc)) from exc
    lines = ["", f"[sites.{name}]", f"url = {json.dumps(url)}", f"offsite = {'false' if onsite else 'true'}",
             f"workers = {workers}"]
    if rate != "unlimited":
        lines.append(f"rate = {json.dumps(rate)}")
    if window:
        lines.append("schedule = [" + ", ".join(json.dumps(w) for w in window) + "]")
    lines += [f"{key} = {_toml_value(value)}" for key, value in options.items()]
    original = path.read_text(encoding="utf-8")
    path.write_text(original.rstrip("\n") + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    try:
        new_settings = load_settings(path)
        added = next(r for r in new_settings.replicas if r.name == name)
        target = open_target(added, dicom=new_settings.dicom)  # a PACS needs no key to answer a C-ECHO
        health = target.health()
        if not health.get("ok") and not no_test:
            raise SitesFailure(f"site {name} does not answer: {health.get('error')}; fix it or add with --no-test")
    except (SitesFailure, ConfigError, Exception) as exc:
        path.write_text(original, encoding="utf-8")  # leave the configuration as it was
        if isinstance(exc, SitesFailure):
            raise
        raise SitesFailure(f"site {name} not added: {exc}") from exc
    if not isinstance(target, SiteTarget):
        out.print("[bold yellow]WARNING:[/bold yellow] a dicom:// site receives DECRYPTED images (a PACS must read "
                  "them). Use it only for a destination trusted with patient data; it is not an encrypted copy.")
    from dicomvault.archive.core import Archive
    from dicomvault.replicate.service import running_sites

    archive = Archive.open(new_settings)
    try:  # owed from now on, so status shows its true backlog (never "0 s behind") before serve copies
        owed = archive.catalog.owe_missing_copies(name)
    finally:
        archive.close()
    running = running_sites(new_settings) is not None
    out.print(f"added site {name} ({added.url}); {owed} existing object(s) owed to it. "
              + ("`dicomvault serve` is running: RESTART it to start copying (until then `status` shows the site "
                 "as not started)" if running else "`dicomvault serve` copies them when it starts"),
              markup=False, highlight=False)


@sites_app.command("test")
def test_site(name: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """Check a site answers (health probe and a listing; a dicom:// PACS: C-ECHO only)."""
    from dicomvault.replicate.targets import SiteTarget, open_target
    from dicomvault.sites import open_site

    settings = load_settings(config)
    if name == "primary":
        site = open_site(settings.primary_site_url)
    else:
        replica = next((r for r in settings.replicas if r.name == name), None)
        if replica is None:
            raise SitesFailure(f"no site named {name!r}; see `dicomvault sites list`")
        target = open_target(replica, dicom=settings.dicom)
        if not isinstance(target, SiteTarget):
            health = target.health()
            if not health.get("ok"):
                raise SitesFailure(f"{name} does not answer: {health.get('error')}")
            out.print(f"{name} answers a C-ECHO ({target.url}); it is a PACS: it receives decrypted images and "
                      "cannot be listed")
            return
        site = target.site
    health = site.health()
    if not health.get("ok"):
        raise SitesFailure(f"site {name} does not answer: {health.get('error')}")
    listed = sum(1 for _ in zip(range(10), site.list()))
    out.print(f"site {name} answers ({site.url}); listing works ({listed}{'+' if listed == 10 else ''} objects seen)")


@sites_app.command("status")
def site_status(config: ConfigOption = None, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Backlog, live RPO (oldest owed copy), throughput and errors per site."""
    from dicomvault.replicate.outbox import Outbox
    from dicomvault.archive.core import Archive

    archive = Archive.open(load_settings(config))
    outbox = Outbox(archive.catalog)
    report: dict[str, Any] = {r.name: outbox.lag(r.name) for r in archive.settings.replicas}
    archive.close()
    if json_out:
        print(json.dumps(report, indent=2, default=str))
        return
    from rich.table import Table

    table = Table("site", "backlog", "bytes owed", "oldest owed", "verified", "MB/s (1 min)", "dead", "last error")
    for name, lag in report.items():
        table.add_row(name, str(lag["backlog_objects"]), str(lag["backlog_bytes"]),
                      f"{lag['oldest_owed_age_seconds']:.0f} s", str(lag["verified_objects"]),
                      f"{lag['throughput_bytes_per_second'] / 1e6:.2f}", str(lag["dead_letters"]),
                      (lag["last_error"] or "")[:60])
    out.print(table)


@sites_app.command("retry")
def retry_dead(name: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """Re-queue every dead-lettered copy of a site (after fixing the cause)."""
    from dicomvault.replicate.outbox import Outbox
    from dicomvault.archive.core import Archive

    archive = Archive.open(load_settings(config))
    if not any(r.name == name for r in archive.settings.replicas):
        archive.close()
        raise SitesFailure(f"no replica site named {name!r}")
    count = Outbox(archive.catalog).retry_dead(name)
    archive.close()
    out.print(f"{count} dead-lettered copies of {name} queued again")


@sites_app.command("clear")
def clear_quarantine(name: Annotated[str, typer.Argument(help="primary or a [sites.NAME]")],
                     config: ConfigOption = None) -> None:
    """End a site's quarantine once you have investigated; the next verify repairs it."""
    from dicomvault.archive.core import Archive
    from dicomvault.cli.common import actor
    from dicomvault.archive.quarantine import clear

    archive = Archive.open(load_settings(config))
    try:
        if not clear(archive.catalog, name, actor()):
            raise SitesFailure(f"site {name!r} is not quarantined")
    finally:
        archive.close()
    out.print(f"site {name} is back in service; run `dicomvault verify --site {name}` to repair its copies now")
