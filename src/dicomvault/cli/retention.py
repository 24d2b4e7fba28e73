"""``dicomvault retention plan`` and ``dicomvault hold add|list|release``.

``retention plan`` only reports (what expires when, what is due, which rule decided);
``retention run`` (cli/deletion.py) deletes what is due through the deletion engine. Holds
are written and audited by ``jobs/retention/holds.py``, the same code the operations API calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dicomvault.cli.common import CliFailure, ConfigOption, actor, out, settings

retention_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                            help="Retention rules: what expires when (plan) and deleting what expired (run).")
hold_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Legal holds: a held study is never due for deletion.")


def register(app: typer.Typer) -> None:
    app.add_typer(retention_app, name="retention")
    app.add_typer(hold_app, name="hold")


def _catalog(config: Optional[Path]) -> tuple[Any, Any]:
    from dicomvault.catalog import Catalog

    current = settings(config)
    return current, Catalog(current.catalog_url)


@retention_app.command("plan")
def plan(json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
         config: ConfigOption = None) -> None:
    """What expires when under [retention]: counts and bytes per month and year, the studies
    due now with the rule that decided each, expired studies kept by a hold. Deletes nothing."""
    from dicomvault.jobs.retention.plan import plan as make_plan

    current, catalog = _catalog(config)
    try:
        report = make_plan(catalog, current.retention, actor=actor())
    finally:
        catalog.close()
    if json_out:
        print(json.dumps(report, indent=2))
        return
    def say(text: str) -> None:
        out.print(text, markup=False, highlight=False)

    rules = ", ".join(f"{r['name']} ({_keep_text(r)})" for r in report["rules"]) or "none"
    say(f"retention as of {report['as_of']}: rules {rules}; default {report['default']}; "
        f"{'enabled' if report['enabled'] else 'disabled (nothing is deleted)'}")
    say(f"  {report['studies']} studies; kept forever: {report['forever']['studies']} "
        f"({report['forever']['bytes']} bytes); recomputed now: {report['recomputed']}")
    for item in report["by_year"]:
        say(f"  expire in {item['year']}: {item['studies']} studies, {item['bytes']} bytes")
    due = report["due_now"]
    say(f"  due now: {due['studies']} studies, {due['bytes']} bytes (`dicomvault retention run` deletes them)")
    for entry in report["due"]:
        say(f"    {entry['study_uid']} patient {entry['patient_id']} kept until {entry['keep_until']} "
            f"(rule {entry['rule']})")
    for entry in report["held"]:
        holds = ", ".join(f"hold {h['id']}: {h['reason']}" for h in entry["holds"])
        say(f"    HELD {entry['study_uid']} kept until {entry['keep_until']} (rule {entry['rule']}); {holds}")


def _keep_text(rule: dict) -> str:
    parts = [f"keep {rule['keep']}"] if rule["keep"] else []
    if rule["keep_after_age"]:
        parts.append(f"until age {rule['keep_after_age']['age']} + {rule['keep_after_age']['plus']}")
    return " or ".join(parts)


@hold_app.command("add")
def hold_add(
    reason: Annotated[str, typer.Option("--reason", help="Why, and who asked (recorded and audited)")],
    study: Annotated[Optional[str], typer.Option("--study", help="Hold this study (Study Instance UID)")] = None,
    patient: Annotated[Optional[str], typer.Option("--patient", help="Hold every study of this Patient ID, "
                                                                      "later ones too")] = None,
    config: ConfigOption = None,
) -> None:
    """Place a legal hold; prints its id. A held study is never due for deletion."""
    from dicomvault.jobs.retention.holds import HoldError, place_hold

    _, catalog = _catalog(config)
    try:
        hold = place_hold(catalog, study=study, patient=patient, reason=reason, actor=actor())
    except HoldError as exc:
        raise CliFailure(str(exc)) from exc
    finally:
        catalog.close()
    print(hold["id"])


@hold_app.command("list")
def hold_list(
    json_out: Annotated[bool, typer.Option("--json", help="Print the holds as JSON")] = False,
    active: Annotated[bool, typer.Option("--active", help="Only holds in force")] = False,
    config: ConfigOption = None,
) -> None:
    """Legal holds, in force and released."""
    from dicomvault.jobs.retention.holds import list_holds

    _, catalog = _catalog(config)
    try:
        rows = list_holds(catalog, active_only=active)
    finally:
        catalog.close()
    if json_out:
        print(json.dumps({"holds": rows}, indent=2))
        return
    for hold in rows:
        state = "IN FORCE" if hold["active"] else f"released by {hold['released_by']}: {hold['release_reason']}"
        out.print(f"{hold['id']}  {hold['scope']} {hold['target']}  {state}  (placed by {hold['actor']}: "
                  f"{hold['reason']})", markup=False, highlight=False)
    if not rows:
        out.print("no legal holds")


@hold_app.command("release")
def hold_release(
    hold_id: Annotated[str, typer.Argument(help="The hold's id (see `dicomvault hold list`)")],
    reason: Annotated[str, typer.Option("--reason", help="Why it is released, and who decided")],
    config: ConfigOption = None,
) -> None:
    """Release a legal hold (audited); its studies follow the retention rules again."""
    from dicomvault.jobs.retention.holds import HoldError, release

    _, catalog = _catalog(config)
    try:
        hold = release(catalog, hold_id, reason=reason, actor=actor())
    except HoldError as exc:
        raise CliFailure(str(exc)) from exc
    finally:
        catalog.close()
    out.print(f"released legal hold {hold['id']} ({hold['scope']} {hold['target']})", markup=False, highlight=False)
