"""``dicomvault capacity [--json]``: bytes per modality, growth, and per site the space left and
the forecast for 1, 3 and 5 years with the retention rules applied (jobs/capacity.py, the same
report as ``GET /api/capacity``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dicomvault.cli.common import ConfigOption, out, settings


def register(app: typer.Typer) -> None:
    app.command("capacity")(capacity)


def _size(value: float | None) -> str:
    if value is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(value) < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return ""  # unreachable


def capacity(json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
             config: ConfigOption = None) -> None:
    """Stored and original bytes per modality with the compression ratio, growth per day over
    30 and 90 days, and per site: bytes stored, free space (file sites), days until full at the
    30-day rate, and the forecast for 1, 3 and 5 years with retention applied."""
    from dicomvault.catalog import Catalog
    from dicomvault.catalog import retention
    from dicomvault.jobs.capacity import capacity_report

    current = settings(config)
    catalog = Catalog(current.catalog_url)
    try:
        if current.retention.enabled:  # keep-until dates under the rules in force, as `retention plan`
            retention.refresh(catalog, current.retention)
        report = capacity_report(catalog, current)
    finally:
        catalog.close()
    if json_out:
        print(json.dumps(report, indent=2))
        return
    say = lambda text: out.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    say("per modality:")
    for m in report["by_modality"] or []:
        say(f"  {m['modality'] or '(none)':<8} {m['instances']:>10} instance(s)  {_size(m['bytes_original']):>10} "
            f"received  {_size(m['bytes_stored']):>10} stored  ratio {m['ratio'] or '-'}")
    if not report["by_modality"]:
        say("  nothing stored yet")
    for window, growth in report["growth"].items():
        say(f"growth over {window}: {growth['instances_per_day']:.1f} instance(s)/day, "
            f"{_size(growth['bytes_stored_per_day'])}/day stored")
    kept = "retention applied" if current.retention.enabled else "[retention] enabled = false: nothing expires"
    say(f"sites (forecast: {kept}):")
    for site in report["sites"]:
        full = site["days_until_full"]
        room = (f"free {_size(site['free_bytes'])} of {_size(site['capacity_bytes'])}"
                if site["free_bytes"] is not None else "free space unknown (the site cannot say)")
        say(f"  {site['site']:<12} {_size(site['bytes_stored'])} stored; {room}; "
            + (f"full in {full:.0f} day(s) at the 30-day rate" if full is not None else "days until full unknown")
            + "; forecast " + ", ".join(f"{k}: {_size(v)}" for k, v in site["forecast_bytes"].items()))
