"""HL7 v2 ADT messages applied to the catalog's patient records (the MLLP listener is
``ingest/hl7.py``; parsing is python-hl7's).

- A08 (update patient information): PID-3 (CX.1 ID, CX.4 assigning authority as the issuer)
  names the patient; PID-5 (XPN family^given^middle^suffix^prefix) becomes the DICOM PN
  ``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX``, PID-7 the birth date, PID-8 the sex. An empty field
  changes nothing; ``""`` (HL7's null) empties it.
- A40 (merge patient): every study of MRG-1 (the prior ID) moves under PID-3 (the survivor);
  the prior patient answers no query any more. A survivor the archive does not know yet: the
  prior patient takes its identifier (as A47 would).
- A47 (change patient identifier): MRG-1 (old) becomes PID-3 (new).

Every other event is acknowledged AA with "ignored": an ADT feed sends everything, and a
refusal would make the interface engine retry it forever. An update for a patient the archive
does not hold is acknowledged AA and changes nothing (it may never send us images; refusing
would block the feed). Each applied change is one catalog transaction: the patient rows, a
``patient_history`` row (sender, address, control id, event, old and new values), an audit row
(``patient-update`` / ``patient-merge`` / ``patient-id-change``) and the retention keep-until
dates of the studies involved. A message whose control id (MSH-10) the same sender already had
applied is acknowledged AA and not applied again.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import hl7

from dicomvault.audit import AuditEvent, append
from dicomvault.audit.throttle import AuditThrottle
from dicomvault.catalog import patients

log = logging.getLogger(__name__)

HANDLED = {"A08": "patient-update", "A40": "patient-merge", "A47": "patient-id-change"}
_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O", "X": "O", "U": ""}
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})")
_HL7_NULL = '""'


class AdtError(Exception):
    """The message cannot be applied: answered AE (or AR, ``code``) with this reason."""

    def __init__(self, reason: str, code: str = "AE") -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class Answer:
    code: str  # AA, AE, AR
    text: str


def _field(message: Any, segment: str, *path: int) -> str:
    try:
        return str(message.extract_field(segment, 1, *path)).strip()
    except (KeyError, IndexError):
        return ""


def _identifier(message: Any, segment: str, field: int, what: str) -> tuple[str, str]:
    """(ID, issuer) of a CX field: CX.1 and the namespace of CX.4 (first repetition)."""
    patient_id, issuer = _field(message, segment, field, 1, 1), _field(message, segment, field, 1, 4)
    if not patient_id:
        raise AdtError(f"{segment}-{field} ({what}) has no identifier")
    if len(patient_id) > 64 or len(issuer) > 64:
        raise AdtError(f"{segment}-{field} ({what}): identifier or assigning authority longer than 64 characters")
    return patient_id, issuer


def _name(message: Any) -> str | None:
    family = _field(message, "PID", 5, 1, 1)
    parts = [family] + [_field(message, "PID", 5, 1, c) for c in (2, 3, 5, 4)]  # given, middle, prefix, suffix
    if family == _HL7_NULL:
        return ""
    if not any(parts):
        return None
    if any("\\" in p or "=" in p for p in parts):
        raise AdtError("PID-5 (patient name) holds characters a DICOM name cannot carry")
    name = "^".join(parts).rstrip("^")
    if len(name) > 324:
        raise AdtError("PID-5 (patient name) is longer than a DICOM name allows (324 characters)")
    return name


def _given(message: Any, field: int) -> str | None:
    """A PID field's first component: None when empty (no change), "" for HL7's null ``""``."""
    raw = _field(message, "PID", field, 1, 1)
    return "" if raw == _HL7_NULL else (raw or None)


def _birth_date(message: Any) -> str | None:
    raw = _given(message, 7)
    if not raw:
        return raw
    match = _DATE.match(raw)
    if match is None:
        raise AdtError(f"PID-7 (birth date) {raw[:26]!r} is not a date YYYYMMDD")
    try:
        time.strptime(match.group(0), "%Y%m%d")
    except ValueError:
        raise AdtError(f"PID-7 (birth date) {raw[:26]!r} is not a calendar date") from None
    return match.group(0)


def _sex(message: Any) -> str | None:
    raw = _given(message, 8)
    if not raw:
        return raw
    if raw.upper() not in _SEX:
        raise AdtError(f"PID-8 (administrative sex) {raw[:8]!r} is not one of M, F, O, U, A, N")
    return _SEX[raw.upper()]


def demographics(message: Any) -> dict[str, str]:
    """The PID demographics the message sets (fields left empty are not in it)."""
    values = {"patient_name": _name(message), "birth_date": _birth_date(message), "sex": _sex(message)}
    return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class Envelope:
    """Who sent the message and which one it is (MSH)."""

    application: str
    facility: str
    event: str
    control_id: str
    address: str

    @property
    def sender(self) -> str:
        return f"{self.application}@{self.facility}"

    @classmethod
    def of(cls, message: Any, address: str) -> "Envelope":
        envelope = cls(_field(message, "MSH", 3, 1, 1), _field(message, "MSH", 4, 1, 1),
                       f"{_field(message, 'MSH', 9, 1, 1)}^{_field(message, 'MSH', 9, 1, 2)}",
                       _field(message, "MSH", 10), address)
        if not envelope.control_id:
            raise AdtError("MSH-10 (message control id) is empty")
        if len(envelope.control_id) > 64 or len(envelope.sender) > 256:
            raise AdtError("MSH-10 (message control id) or MSH-3/MSH-4 too long")
        return envelope


class AdtProcessor:
    """Applies one parsed message; the listener turns the ``Answer`` into the ACK."""

    def __init__(self, catalog: Any, allowed_facilities: tuple[str, ...]) -> None:
        self.catalog = catalog
        self.allowed = frozenset(allowed_facilities)
        self._throttle = AuditThrottle()

    def allowed_sender(self, envelope: Envelope) -> bool:
        return bool({envelope.facility, envelope.sender} & self.allowed) and bool(envelope.facility)

    def refuse(self, envelope: Envelope) -> Answer:
        reason = (f"sending facility {envelope.facility or '(empty MSH-4)'} ({envelope.sender}) is not in "
                  "[hl7] allowed_facilities")
        log.warning("HL7 %s %s from %s refused: %s", envelope.event, envelope.control_id, envelope.address, reason)
        if self._throttle.due((envelope.sender, envelope.address)):
            try:
                with self.catalog.write() as conn:
                    append(conn, AuditEvent(actor=f"hl7:{envelope.sender}", action="access-denied", subject="hl7",
                                            outcome="denied", detail={"address": envelope.address, "reason": reason,
                                                                      "event": envelope.event,
                                                                      "control_id": envelope.control_id}))
            except Exception:  # noqa: BLE001 - the refusal stands even if the audit row cannot be written
                log.exception("ALERT: could not audit a refused HL7 message from %s", envelope.address)
        return Answer("AR", reason)

    def apply(self, message: Any, envelope: Envelope) -> Answer:
        kind, _, trigger = envelope.event.partition("^")
        if kind != "ADT" or trigger not in HANDLED:
            log.info("HL7 %s %s from %s ignored (not handled)", envelope.event, envelope.control_id, envelope.sender)
            return Answer("AA", f"ignored: event {envelope.event} not handled")
        patient_id, issuer = _identifier(message, "PID", 3, "patient identifier")
        values = demographics(message)
        prior = _identifier(message, "MRG", 1, "prior patient identifier") if trigger != "A08" else None
        at = time.time()
        with self.catalog.write() as conn:
            if patients.already_applied(conn, envelope.sender, envelope.control_id):
                log.info("HL7 %s %s from %s: duplicate control id, already applied", envelope.event,
                         envelope.control_id, envelope.sender)
                return Answer("AA", f"duplicate: message {envelope.control_id} was applied before")
            if trigger == "A08":
                answer, changed = self._update(conn, envelope, patient_id, issuer, values, at)
            elif trigger == "A40":
                assert prior is not None
                answer, changed = self._merge(conn, envelope, (patient_id, issuer), prior, values, at)
            else:
                assert prior is not None
                answer, changed = self._change_id(conn, envelope, (patient_id, issuer), prior, at)
            if changed and self.catalog.on_followed is not None:  # retention: keep-until from birth dates
                self.catalog.on_followed(conn, [("patient", pk) for pk in changed])
        return answer

    def _audit(self, conn: Any, envelope: Envelope, trigger: str, subject: str, **detail: Any) -> None:
        append(conn, AuditEvent(actor=f"hl7:{envelope.sender}", action=HANDLED[trigger], subject=subject,
                                detail={"patient": subject, "event": envelope.event, "control_id": envelope.control_id,
                                        "address": envelope.address, **detail}))

    def _unknown(self, envelope: Envelope, patient_id: str, issuer: str) -> tuple[Answer, list[int]]:
        who = f"{patient_id}^^^{issuer}" if issuer else patient_id
        log.info("HL7 %s %s from %s: patient %s not held here, nothing changed", envelope.event,
                 envelope.control_id, envelope.sender, who)
        return Answer("AA", f"no change: patient {who} is not held by this archive"), []

    def _update(self, conn: Any, envelope: Envelope, patient_id: str, issuer: str, values: dict[str, str],
                at: float) -> tuple[Answer, list[int]]:
        patient = patients.find(conn, patient_id, issuer)
        if patient is None:
            return self._unknown(envelope, patient_id, issuer)
        if patient.merged_into is not None:
            patient = patients.by_pk(conn, patient.merged_into)
        old = {k: getattr(patient, k) for k in values if getattr(patient, k) != values[k]}
        new = {k: values[k] for k in old}
        if not new:
            return Answer("AA", "no change: the demographics are already current"), []
        patients.set_demographics(conn, patient, new, at)
        patients.record(conn, patient, "A08", envelope.sender, envelope.control_id, envelope.address, at, old, new)
        self._audit(conn, envelope, "A08", patient.patient_id, changed=sorted(new))
        return Answer("AA", f"updated {', '.join(sorted(new))}"), [patient.pk]

    def _merge(self, conn: Any, envelope: Envelope, survivor_id: tuple[str, str], prior_id: tuple[str, str],
               values: dict[str, str], at: float) -> tuple[Answer, list[int]]:
        prior = patients.find(conn, *prior_id)
        if prior is None or prior.merged_into is not None:
            return self._unknown(envelope, *prior_id)
        survivor = patients.find(conn, *survivor_id)
        if survivor is not None and survivor.merged_into is not None:
            survivor = patients.by_pk(conn, survivor.merged_into)
        if survivor is None:  # the survivor's ID is new here: the prior patient takes it
            patients.change_identifier(conn, prior, *survivor_id, at)
            self.catalog.forget_patient(prior.patient_id, prior.issuer)
            survivor, moved = patients.by_pk(conn, prior.pk), []
        elif survivor.pk == prior.pk:
            raise AdtError("PID-3 and MRG-1 name the same patient")
        else:
            moved = patients.merge(conn, prior, survivor, at)
            self.catalog.forget_patient(prior.patient_id, prior.issuer)
        new_values = {k: v for k, v in values.items() if getattr(survivor, k) != v}
        if new_values:
            patients.set_demographics(conn, survivor, new_values, at)
        old = {"patient_id": prior.patient_id, "issuer": prior.issuer, **{k: getattr(survivor, k) for k in new_values}}
        new = {"patient_id": survivor.patient_id, "issuer": survivor.issuer, "studies_moved": moved, **new_values}
        patients.record(conn, survivor, "A40", envelope.sender, envelope.control_id, envelope.address, at, old, new,
                        prior=(prior.patient_id, prior.issuer))
        self._audit(conn, envelope, "A40", survivor.patient_id, prior=prior.patient_id, studies=len(moved))
        return Answer("AA", f"merged {prior.patient_id} into {survivor.patient_id}: {len(moved)} study(ies) moved"), \
            [survivor.pk]

    def _change_id(self, conn: Any, envelope: Envelope, new_id: tuple[str, str], old_id: tuple[str, str],
                   at: float) -> tuple[Answer, list[int]]:
        patient = patients.find(conn, *old_id)
        if patient is None or patient.merged_into is not None:
            return self._unknown(envelope, *old_id)
        taken = patients.find(conn, *new_id)
        if taken is not None and taken.pk != patient.pk:
            raise AdtError(f"identifier {new_id[0]} already belongs to another patient here; send A40 to merge them")
        patients.change_identifier(conn, patient, *new_id, at)
        self.catalog.forget_patient(patient.patient_id, patient.issuer)
        old = {"patient_id": patient.patient_id, "issuer": patient.issuer}
        new = {"patient_id": new_id[0], "issuer": new_id[1]}
        patients.record(conn, patient, "A47", envelope.sender, envelope.control_id, envelope.address, at, old, new,
                        prior=(patient.patient_id, patient.issuer))
        self._audit(conn, envelope, "A47", new_id[0], prior=patient.patient_id)
        return Answer("AA", f"identifier {patient.patient_id} changed to {new_id[0]}"), []


def parse(raw: bytes) -> Any:
    """The message (python-hl7), or AdtError with what is wrong. Segments may end in CR, LF or
    CRLF (some senders); the text is UTF-8, else ISO 8859-1 (HL7's common defaults)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r \t\x00")
    if not text.startswith("MSH") or len(text) < 8:
        raise AdtError("malformed: the message does not start with an MSH segment")
    try:
        message = hl7.parse(text)
        message.segment("MSH")
    except Exception as exc:  # noqa: BLE001 - python-hl7 raises several kinds on bad input
        raise AdtError(f"malformed: {type(exc).__name__}: {str(exc)[:120]}") from None
    return message
