"""``dicomvault keys status`` and ``dicomvault keys rotate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from dicomvault.cli.common import CliFailure, ConfigOption, actor, open_archive, out, progress_callback

keys_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Site and recovery keys: which wrap what, and rotation.")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


@keys_app.command("status")
def status(json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
           config: ConfigOption = None) -> None:
    """Key ids and ages: site-key generations, the recovery key, study keys per generation,
    and how many studies cannot be crypto-shredded (objects sealed before key records)."""
    from dicomvault.jobs.keys.state import key_state

    archive = open_archive(config)
    try:
        state = key_state(archive)
    finally:
        archive.close()
    if json_out:
        print(json.dumps(state, indent=2))
        return
    for line in describe(state):
        out.print(line, markup=False, highlight=False)


def describe(state: dict) -> list[str]:
    lines = [f"site key generations (oldest first, the last wraps new keys): archive {state['fingerprint']}"]
    for generation in state["site_keys"]:
        lines.append(f"  {generation['id']}: {generation['study_keys']} study key(s); "
                     f"age {generation['age_days']} day(s)" + (" (current)" if generation["current"] else ""))
    recovery = state["recovery_key"]
    lines.append(f"recovery key {recovery['id']}: {recovery['study_keys']} study key(s) wrapped for it; "
                 f"public key age {recovery['age_days']} day(s)")
    if state["other_recovery_keys"]:
        lines.append(f"  study keys still wrapped for older recovery keys: {state['other_recovery_keys']}")
    lines.append(f"study keys: {state['study_keys']}; shreddable: {state['shreddable']}; not shreddable (objects "
                 f"carry their key, sealed before key records): {state['not_shreddable']}")
    return lines


@keys_app.command("rotate")
def rotate(new_recovery_key: Annotated[Optional[Path], typer.Option(
               "--new-recovery-key", help="Also make a new recovery key pair; its PRIVATE half is written here "
                                          "(move it offline at once)")] = None,
           json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
           config: ConfigOption = None) -> None:
    """A new site key generation wraps every new study key; every existing key record is
    re-wrapped (catalog and every site; payloads untouched) and old generations are dropped
    once nothing needs them. Stop `serve` first."""
    from dicomvault.jobs.keys.rotate import RotationError, rotate as run_rotate

    archive = open_archive(config)
    try:
        with progress_callback("re-wrapping key records") as progress:
            report = run_rotate(archive, actor(), new_recovery_key_file=new_recovery_key,
                                progress=progress)
    except RotationError as exc:
        raise CliFailure(str(exc)) from exc
    finally:
        archive.close()
    summary = report.to_dict()
    if json_out:
        print(json.dumps(summary, indent=2))
    else:
        say = lambda text: out.print(text, markup=False, highlight=False)  # noqa: E731
        say(f"new site key generation {report.new_kek_id}; {report.records} key record(s) re-wrapped")
        for name, site in report.sites.items():
            say(f"  {name}: {site['written']} record(s) written" +
                (f", {site['failed']} FAILED: {site['error']}" if site["failed"] else ""))
        if report.retired:
            say(f"  retired generation(s): {', '.join(report.retired)}")
        for kek_id, why in report.kept.items():
            say(f"  kept generation {kek_id}: {why}")
        if report.recovery_key_file:
            say(f"NEW RECOVERY KEY written to {report.recovery_key_file}: move it OFFLINE now. The old recovery "
                f"key still opens {report.old_recovery_key_still_opens}")
        say(f"catalog snapshot {report.snapshot or 'NOT taken: run `dicomvault snapshot`'}")
    if not report.complete:
        raise typer.Exit(1)
