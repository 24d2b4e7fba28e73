"""``dicomvault patient history ID``: the HL7 ADT changes applied to a patient record."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer

from dicomvault.cli.common import ConfigOption, actor, out, settings

patient_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                          help="Patient records: the demographics changes HL7 ADT messages made.")


def register(app: typer.Typer) -> None:
    app.add_typer(patient_app, name="patient")


@patient_app.command("history")
def history(
    patient_id: Annotated[str, typer.Argument(help="Patient ID (current, or a prior one merged or changed)")],
    issuer: Annotated[Optional[str], typer.Option("--issuer", help="Only this Issuer of Patient ID")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the history as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Every update (A08), merge (A40) and change of identifier (A47) that named this patient,
    oldest first: when, from which sender and address, which message, the values before and after."""
    from dicomvault.audit import AuditEvent, append
    from dicomvault.catalog import Catalog, patients

    catalog = Catalog(settings(config).catalog_url)
    try:
        with catalog.read() as conn:
            rows = patients.history(conn, patient_id, issuer)
        with catalog.write() as conn:  # patient data was read: who looked
            append(conn, AuditEvent(actor=actor(), action="query", subject=patient_id,
                                    detail={"query": {"patient_history": patient_id}, "results": len(rows)}))
    finally:
        catalog.close()
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print(f"no recorded changes for patient {patient_id}", markup=False, highlight=False)
    for row in rows:
        when = datetime.fromtimestamp(row["received_at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        changes = ", ".join(f"{key}: {row['old'].get(key, '')!r} -> {value!r}" for key, value in row["new"].items()
                            if key != "studies_moved")
        moved = row["new"].get("studies_moved")
        out.print(f"{when} {row['event']} {row['patient_id']} message {row['control_id']} from {row['sender']} "
                  f"({row['address']}): {changes}" + (f"; {len(moved)} study(ies) moved" if moved else ""),
                  markup=False, highlight=False)
