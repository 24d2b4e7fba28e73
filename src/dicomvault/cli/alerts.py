"""``dicomvault alerts list|ack|test``: the alerts `serve` raised, acknowledging one (no more
reminders), and a test notice to every [alerts] channel (exit 1 when one failed)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer

from dicomvault.cli.common import CliFailure, ConfigOption, actor, open_archive, out

alerts_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="Alerts: list, acknowledge, and test the delivery channels.")


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@alerts_app.command("list")
def list_alerts(all_: Annotated[bool, typer.Option("--all", help="Also resolved alerts (the newest 1000)")] = False,
                json_out: Annotated[bool, typer.Option("--json", help="Print them as JSON")] = False,
                config: ConfigOption = None) -> None:
    """Open alerts (with --all: resolved ones too), oldest first."""
    from dicomvault.catalog.alerts import list_alerts as rows
    from dicomvault.jobs.alerts.engine import public

    archive = open_archive(config)
    try:
        alerts = [public(a) for a in rows(archive.catalog, include_resolved=all_)]
    finally:
        archive.close()
    if json_out:
        print(json.dumps({"alerts": alerts}, indent=2))
        return
    if not alerts:
        out.print("no open alerts" if not all_ else "no alerts")
    for a in alerts:
        state = (f"resolved {_when(a['resolved_at'])}" if a["resolved_at"] else
                 f"acknowledged by {a['acknowledged_by']} {_when(a['acknowledged_at'])}" if a["acknowledged_at"]
                 else "OPEN")
        print(f"#{a['id']} [{a['severity']}] {a['text']}\n    raised {_when(a['raised_at'])}, {state}; key {a['key']}")


@alerts_app.command("ack")
def ack(alert_id: Annotated[int, typer.Argument(help="The alert's id (`dicomvault alerts list`)")],
        note: Annotated[str, typer.Option("--note", help="Why, who is on it")] = "",
        config: ConfigOption = None) -> None:
    """Acknowledge an open alert: it stays open until its condition clears, with no reminders."""
    from dicomvault.jobs.alerts.engine import AlertError, acknowledge

    archive = open_archive(config)
    try:
        alert = acknowledge(archive.catalog, alert_id, actor(), note)
    except AlertError as exc:
        raise CliFailure(str(exc)) from exc
    finally:
        archive.close()
    out.print(f"alert #{alert['id']} acknowledged by {alert['acknowledged_by']}: {alert['text']}",
              markup=False, highlight=False)


@alerts_app.command("test")
def test(config: ConfigOption = None) -> None:
    """Send a test alert to every channel and say, per channel, whether it was delivered."""
    from dicomvault.jobs.alerts.engine import send_test

    archive = open_archive(config)
    try:
        if not archive.settings.alerts.channels:
            raise CliFailure("no alert channel is configured: set [alerts] webhook_url, smtp_host (with mail_from, "
                             "mail_to) or syslog")
        results = send_test(archive.catalog, archive.settings, actor())
    finally:
        archive.close()
    for name, result in results.items():
        print(f"{name}: {result}", flush=True)  # one line per channel, never wrapped
    if any(result != "ok" for result in results.values()):
        raise typer.Exit(1)
