"""Audit rows as DICOM Audit Messages (PS3.15 A.5, the RFC 3881-derived XML of ATNA).

A hospital's audit record repository understands DICOM Audit Messages, not our rows. Each
row's ``action`` picks the DICOM event (Instances Transferred, Query, Security Alert...), its
direction picks who is source and who destination, and its ``detail`` gives the objects
(study, patient, query). Every message also carries the row's own action as an extra
EventTypeCode in the local code system ``99DICOMVAULT``, so nothing the row says is lost
when the DICOM vocabulary has no exact word for it. An action this module does not know
still leaves: as a Security Alert when it was refused, else as Application Activity.
"""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

LOCAL_CODES = "99DICOMVAULT"  # HL7's "99" prefix: a locally defined code system


@dataclass(frozen=True)
class Code:
    code: str
    text: str
    system: str = "DCM"


# EventID (PS3.16 CID 400 family)
APPLICATION_ACTIVITY = Code("110100", "Application Activity")
BEGIN_TRANSFERRING = Code("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", "DICOM Study Deleted")
EXPORT = Code("110106", "Export")
PATIENT_RECORD = Code("110110", "Patient Record")
QUERY = Code("110112", "Query")
SECURITY_ALERT = Code("110113", "Security Alert")
USER_AUTHENTICATION = Code("110114", "User Authentication")
# EventTypeCode
APPLICATION_START = Code("110120", "Application Start")
APPLICATION_STOP = Code("110121", "Application Stop")
LOGIN = Code("110122", "Login")
LOGOUT = Code("110123", "Logout")
NODE_AUTHENTICATION = Code("110126", "Node Authentication")
SECURITY_CONFIGURATION = Code("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = Code("110131", "Software Configuration")
RESTRICTED_FUNCTION = Code("110132", "Use of Restricted Function")
OBJECT_SECURITY_CHANGED = Code("110135", "Object Security Attributes Changed")
# RoleIDCode
ROLE_APPLICATION = Code("110150", "Application")
ROLE_LAUNCHER = Code("110151", "Application Launcher")
ROLE_DESTINATION = Code("110152", "Destination Role ID")
ROLE_SOURCE = Code("110153", "Source Role ID")
ROLE_DESTINATION_MEDIA = Code("110154", "Destination Media")
# ParticipantObjectIDTypeCode
STUDY_UID = Code("110180", "Study Instance UID")
SOP_CLASS_UID = Code("110181", "SOP Class UID")
PATIENT_NUMBER = Code("2", "Patient Number", "RFC-3881")
URI = Code("12", "URI", "RFC-3881")

# Flows: who is source and who destination of the event.
INBOUND, OUTBOUND, REQUEST, LOCAL = "inbound", "outbound", "request", "local"


@dataclass(frozen=True)
class Rule:
    event: Code
    action_code: str  # C create, R read, U update, D delete, E execute
    flow: str = LOCAL
    type_code: Code | None = None


# Every action the archive audits today (grep AuditEvent in src). Unknown ones: see ``rule_for``.
RULES: dict[str, Rule] = {
    "store": Rule(INSTANCES_TRANSFERRED, "C", INBOUND),
    "recover": Rule(INSTANCES_TRANSFERRED, "C", INBOUND),  # re-indexed after a crash
    "replica-put": Rule(INSTANCES_TRANSFERRED, "C", INBOUND),  # another vault's ciphertext
    "replica-snapshot": Rule(INSTANCES_TRANSFERRED, "C", INBOUND),
    "replica-delete": Rule(STUDY_DELETED, "D", REQUEST),  # a sender removes its ciphertext here
    "replica-key": Rule(INSTANCES_TRANSFERRED, "C", INBOUND),  # a sender's (wrapped) study key record
    "replica-key-delete": Rule(STUDY_DELETED, "D", REQUEST),  # a sender shreds a study here
    "get": Rule(INSTANCES_TRANSFERRED, "R", OUTBOUND),
    "move": Rule(INSTANCES_TRANSFERRED, "R", OUTBOUND),
    "read": Rule(INSTANCES_TRANSFERRED, "R", OUTBOUND),  # WADO, `get`; API reads: see build()
    "restore": Rule(INSTANCES_TRANSFERRED, "R", OUTBOUND),  # "started" -> Begin Transferring
    "export": Rule(EXPORT, "R", OUTBOUND),  # a DICOMDIR folder, or a network export job
    "replicate": Rule(EXPORT, "R", OUTBOUND),  # ciphertext copies to the other sites
    "snapshot": Rule(EXPORT, "R", OUTBOUND),  # the sealed catalog to the sites
    "query": Rule(QUERY, "E", REQUEST),
    "reconcile": Rule(QUERY, "E", OUTBOUND),  # the archive asks the PACS
    "drill": Rule(INSTANCES_ACCESSED, "R"),
    "verify": Rule(INSTANCES_ACCESSED, "R"),
    "login": Rule(USER_AUTHENTICATION, "E", REQUEST, LOGIN),
    "logout": Rule(USER_AUTHENTICATION, "E", REQUEST, LOGOUT),  # a dashboard session ended
    "replica-auth": Rule(USER_AUTHENTICATION, "E", REQUEST, LOGIN),
    "api": Rule(SECURITY_ALERT, "E", REQUEST, RESTRICTED_FUNCTION),
    "access-denied": Rule(SECURITY_ALERT, "E", REQUEST, RESTRICTED_FUNCTION),  # a DIMSE right refused
    "association": Rule(SECURITY_ALERT, "E", REQUEST, NODE_AUTHENTICATION),
    "config": Rule(SECURITY_ALERT, "E", LOCAL, SECURITY_CONFIGURATION),
    "keys-rotate": Rule(SECURITY_ALERT, "E", LOCAL, SECURITY_CONFIGURATION),  # a new site key generation
    "damage": Rule(SECURITY_ALERT, "E"),  # a stored copy failed its check: tampering or decay
    "repair": Rule(SECURITY_ALERT, "U"),
    "quarantine": Rule(SECURITY_ALERT, "U"),
    "retention": Rule(SECURITY_ALERT, "E", LOCAL, OBJECT_SECURITY_CHANGED),
    "hold": Rule(SECURITY_ALERT, "U", LOCAL, OBJECT_SECURITY_CHANGED),  # a legal hold placed
    "hold-release": Rule(SECURITY_ALERT, "U", LOCAL, OBJECT_SECURITY_CHANGED),
    # An IOCM rejection note applied: the referenced instances' status changes (hidden, due for
    # deletion later) but nothing is deleted yet, so DICOM Instances Accessed with action Update
    # (PS3.15 A.5.3.2), the sending peer as requestor; the deletion itself is audited later.
    "reject": Rule(INSTANCES_ACCESSED, "U", REQUEST),
    "delete": Rule(STUDY_DELETED, "D"),  # jobs/retention/delete.py: a study (or rejected instances) deleted
    "deletion-site": Rule(STUDY_DELETED, "D"),  # that deletion's outcome on one site
    "delete-study": Rule(STUDY_DELETED, "D"),
    "delete-patient": Rule(PATIENT_RECORD, "D"),
    # HL7 ADT changes to a patient record (ingest/adt.py), the sending system as requestor.
    "patient-update": Rule(PATIENT_RECORD, "U", REQUEST),
    "patient-merge": Rule(PATIENT_RECORD, "U", REQUEST),
    "patient-id-change": Rule(PATIENT_RECORD, "U", REQUEST),
    "serve": Rule(APPLICATION_ACTIVITY, "E"),  # start / stop of `dicomvault serve`
    "rebuild-index": Rule(APPLICATION_ACTIVITY, "E"),
    "site-state": Rule(APPLICATION_ACTIVITY, "E"),
    "replicate-retry": Rule(APPLICATION_ACTIVITY, "E"),
    "commitment-request": Rule(APPLICATION_ACTIVITY, "E", REQUEST),
    "commitment-report": Rule(APPLICATION_ACTIVITY, "E", OUTBOUND),
    # Alerts (jobs/alerts/engine.py): raised and resolved by serve, acknowledged by a person,
    # a test notice, a delivery channel failing or working again.
    "alert-raised": Rule(APPLICATION_ACTIVITY, "E"),
    "alert-resolved": Rule(APPLICATION_ACTIVITY, "E"),
    "alert-ack": Rule(APPLICATION_ACTIVITY, "E", REQUEST),
    "alert-test": Rule(APPLICATION_ACTIVITY, "E", OUTBOUND),
    "alert-channel": Rule(APPLICATION_ACTIVITY, "E", OUTBOUND),
}

SUCCESS_OUTCOMES = {"success", "duplicate", "stored", "started", "accepted", "repaired", "quarantined",
                    "reachable", "cleared", "stop requested", "completed", "deleted", "shredded"}
MINOR_OUTCOMES = {"partial", "retry", "failures", "interrupted", "cancelled", "abandoned", "unreachable",
                  "locked", "pending"}
DENIED_OUTCOMES = {"denied", "forbidden", "unauthorized"}  # a right was missing: a Security Alert
FAILURE_OUTCOMES = {"failure", "failed", "refused", "rejected", "error", "dead", "conflict"} | DENIED_OUTCOMES


def rule_for(action: str, outcome: str) -> Rule:
    """The DICOM event of one row: a refused right is a Security Alert whatever was tried;
    an unknown action is a Security Alert when refused, else Application Activity."""
    if outcome in DENIED_OUTCOMES:
        return Rule(SECURITY_ALERT, "E", REQUEST, RESTRICTED_FUNCTION)
    rule = RULES.get(action)
    if rule is not None:
        return rule
    if outcome in ("refused", "rejected"):
        return Rule(SECURITY_ALERT, "E", REQUEST)
    return Rule(APPLICATION_ACTIVITY, "E")


def outcome_indicator(outcome: str) -> int:
    """EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure (and any outcome
    not listed above: an unknown word is not evidence of success)."""
    return 0 if outcome in SUCCESS_OUTCOMES else 4 if outcome in MINOR_OUTCOMES else 8


@dataclass(frozen=True)
class Source:
    """This archive as the messages name it."""

    source_id: str  # AuditSourceID
    app_name: str  # the archive's UserID
    ae_title: str
    hostname: str


@dataclass
class Participant:
    user_id: str
    requestor: bool
    role: Code | None = None
    alternative: str = ""
    access_point: str = ""  # host name or IP address


@dataclass
class Obj:
    object_id: str
    id_type: Code
    type_code: int  # 1 person, 2 system object
    role: int  # 1 patient, 3 report, 4 domain resource, 13 security resource, 20 job, 24 query
    query: bytes = b""
    description: str = ""
    sop_class: str = ""
    instances: list[str] = field(default_factory=list)


_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")
MAX_TEXT = 1024  # per attribute: a message stays a few KB, far below any syslog limit
MAX_QUERY = 4096


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    return _NOT_XML.sub("\ufffd", str(value))[:limit]


def _host(address: str) -> str:
    """"10.0.0.5:104" or "pacs:104" -> the host; an IPv6 address (several colons) stays whole."""
    host, colon, port = address.rpartition(":")
    return host if colon and port.isdigit() and ":" not in host else address


def _access_point_type(address: str) -> str:
    """NetworkAccessPointTypeCode: 1 machine name, 2 IP address."""
    return "2" if re.match(r"^[0-9.]+$", address) or ":" in address else "1"


def parse_actor(actor: str, address: str = "") -> Participant:
    """``dicom:AE``, ``api:name@addr``, ``dicomweb:addr``, ``cli:user@host``, ``dicomvault:x``,
    ``hl7:APP@FACILITY``."""
    kind, _, rest = actor.partition(":")
    if kind == "dicom" and rest:
        return Participant(rest, True, alternative=f"AETITLES={rest}", access_point=_host(address))
    if kind == "hl7" and rest:  # hl7:APPLICATION@FACILITY (MSH-3@MSH-4); the address is the detail's
        return Participant(actor, True, access_point=_host(address))
    name, at, where = rest.rpartition("@")
    if at:
        return Participant(f"{kind}:{name}" if name else actor, True, access_point=_host(where))
    if kind in ("api", "dicomweb", "replica") and rest and rest != "unauthenticated":
        return Participant(actor, True, access_point=_host(rest))
    return Participant(actor or "unknown", True, access_point=_host(address))


def _archive(source: Source, requestor: bool, role: Code | None) -> Participant:
    return Participant(source.app_name, requestor, role, f"AETITLES={source.ae_title}", source.hostname)


def _destination(row: Any, detail: dict[str, Any]) -> Participant:
    """The node the archive sent to: the C-MOVE destination AE, else the peer or site the row
    names (its ``destination`` "AE@host:port" adds the AE title and address)."""
    where = str(detail.get("destination") or "")
    if row.action == "move":
        return Participant(where or "unknown", False, ROLE_DESTINATION,
                           alternative=f"AETITLES={where}" if where else "")
    ae, at, address = where.partition("@")
    return Participant(row.subject or where or "unknown", False, ROLE_DESTINATION,
                       alternative=f"AETITLES={ae}" if at else "", access_point=_host(address) if at else "")


def _participants(rule: Rule, row: Any, detail: dict[str, Any], source: Source) -> list[Participant]:
    """Who took part, with the roles PS3.15 A.5.3 asks for the event's direction."""
    internal = row.actor.startswith("dicomvault")  # the archive acting on its own
    source_address = str(detail.get("source", "")).rpartition("@")[2]  # "dimse:AE@10.0.0.5" of a store
    actor = parse_actor(row.actor, str(detail.get("address") or source_address))
    if rule.event == APPLICATION_ACTIVITY and row.action == "serve":
        return [_archive(source, False, ROLE_APPLICATION), Participant(actor.user_id, True, ROLE_LAUNCHER,
                                                                       access_point=actor.access_point)]
    if rule.flow == INBOUND:
        if internal:
            return [_archive(source, True, ROLE_DESTINATION)]
        actor.role = ROLE_SOURCE
        return [actor, _archive(source, False, ROLE_DESTINATION)]
    if rule.flow == OUTBOUND:
        archive = _archive(source, internal, ROLE_SOURCE)
        others = [] if internal else [actor]
        if row.action in ("get", "read"):  # the requester receives
            actor.role = ROLE_DESTINATION
            return [archive, actor]
        if row.action == "export" and "job" not in detail:  # a DICOMDIR folder: media
            return [archive, Participant(row.subject or "unknown", False, ROLE_DESTINATION_MEDIA)] + others
        return [archive, _destination(row, detail)] + others
    if rule.flow == REQUEST:
        actor.role = ROLE_SOURCE
        return [actor, _archive(source, False, ROLE_DESTINATION)]
    return [_archive(source, internal, ROLE_APPLICATION)] + ([] if internal else [actor])


def _keys(subject: str) -> list[str]:
    return [k for k in subject.split("\\") if k]


def _objects(rule: Rule, row: Any, detail: dict[str, Any]) -> list[Obj]:
    """What the event touched: studies and patients for transfers, the query for a query,
    the resource for anything else."""
    action, subject = row.action, row.subject
    if rule.event in (INSTANCES_TRANSFERRED, BEGIN_TRANSFERRING, EXPORT, STUDY_DELETED) and \
            action not in ("replicate", "snapshot", "replica-put", "replica-snapshot"):
        objects: list[Obj] = []
        if detail.get("study"):  # one stored instance
            objects.append(Obj(str(detail["study"]), STUDY_UID, 2, 3, sop_class=str(detail.get("sop_class", "")),
                               instances=[subject] if _UID.match(subject) else []))
            if detail.get("patient"):
                objects.append(Obj(str(detail["patient"]), PATIENT_NUMBER, 1, 1))
            return objects
        uids = [k for k in _keys(subject) if _UID.match(k)]
        if uids and action not in ("restore", "export"):
            objects += [Obj(uid, STUDY_UID, 2, 3) for uid in uids[:100]]
            objects += [Obj(k, PATIENT_NUMBER, 1, 1) for k in _keys(subject) if not _UID.match(k)][:100]
            return objects
        if "job" in detail:
            return [Obj(f"job {detail['job']}", Code(action, f"{action} job", LOCAL_CODES), 2, 20,
                        description=str(detail.get("selection", "")))]
    if rule.event == QUERY:
        model = str(detail.get("model") or "")
        filters = detail.get("filters", detail.get("query", {}))
        query = json.dumps(filters, sort_keys=True, default=str).encode()[:MAX_QUERY]
        if model:
            return [Obj(model, SOP_CLASS_UID, 2, 24, query=query)]
        resource = str(detail.get("resource") or subject or action)
        return [Obj(resource, URI, 2, 24, query=query)]
    if rule.event == USER_AUTHENTICATION:
        return []
    if rule.event == PATIENT_RECORD and (detail.get("patient") or subject):
        return [Obj(str(detail.get("patient") or subject), PATIENT_NUMBER, 1, 1)]
    resource = str(detail.get("resource") or subject)
    if not resource:
        return []
    if rule.event == INSTANCES_TRANSFERRED and _UID.match(resource):
        return [Obj(resource, STUDY_UID, 2, 3)]
    role = 13 if rule.event == SECURITY_ALERT else 4
    return [Obj(resource, URI if resource.startswith("/") else Code(action, action, LOCAL_CODES), 2, role)]


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.text})


def _detail_reason(detail: dict[str, Any]) -> str:
    for key in ("error", "reason", "problem", "last_error"):
        if detail.get(key):
            return _text(detail[key])
    return ""


def event_of(row: Any) -> tuple[Rule, int]:
    """The rule and EventOutcomeIndicator of one row (also decides the syslog severity)."""
    rule = rule_for(row.action, row.outcome)
    if rule.flow == OUTBOUND and row.outcome == "started":  # a restore or network export job begins
        rule = Rule(BEGIN_TRANSFERRING, "E", rule.flow)
    if row.action == "read" and not _UID.match(row.subject.split("\\")[0] if row.subject else ""):
        rule = Rule(INSTANCES_ACCESSED, "R", REQUEST)  # an API or resource read, not instances
    return rule, outcome_indicator(row.outcome)


def build(row: Any, source: Source) -> bytes:
    """One audit row (id, ts, actor, action, subject, outcome, detail) as the UTF-8 XML of a
    DICOM Audit Message."""
    try:
        detail = json.loads(row.detail or "{}")
    except ValueError:
        detail = {}
    if not isinstance(detail, dict):
        detail = {"value": detail}
    rule, indicator = event_of(row)
    root = ET.Element("AuditMessage")
    when = datetime.fromtimestamp(float(row.ts), timezone.utc).isoformat(timespec="milliseconds")
    event = ET.SubElement(root, "EventIdentification", {"EventActionCode": rule.action_code,
                                                       "EventDateTime": when,
                                                       "EventOutcomeIndicator": str(indicator)})
    _code(event, "EventID", rule.event)
    type_code = rule.type_code
    if row.action == "serve":
        type_code = APPLICATION_STOP if detail.get("event") == "stop" else APPLICATION_START
    elif row.action == "config" and detail.get("event") == "init":
        type_code = SOFTWARE_CONFIGURATION
    if type_code is not None:
        _code(event, "EventTypeCode", type_code)
    _code(event, "EventTypeCode", Code(_text(row.action, 64), _text(f"{row.action}: {row.outcome}", 128),
                                       LOCAL_CODES))
    reason = _detail_reason(detail)
    if indicator and (reason or row.outcome):
        ET.SubElement(event, "EventOutcomeDescription").text = reason or _text(row.outcome)
    for person in _participants(rule, row, detail, source):
        attrs = {"UserID": _text(person.user_id) or "unknown", "UserIsRequestor": str(person.requestor).lower()}
        if person.alternative:
            attrs["AlternativeUserID"] = _text(person.alternative)
        if person.access_point:
            attrs["NetworkAccessPointID"] = _text(person.access_point)
            attrs["NetworkAccessPointTypeCode"] = _access_point_type(person.access_point)
        element = ET.SubElement(root, "ActiveParticipant", attrs)
        if person.role is not None:
            _code(element, "RoleIDCode", person.role)
    audit_source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": _text(source.source_id)})
    _code(audit_source, "AuditSourceTypeCode", Code("4", "Application Server Process", "DCM"))
    for obj in _objects(rule, row, detail):
        element = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": _text(obj.object_id) or "unknown",
            "ParticipantObjectTypeCode": str(obj.type_code),
            "ParticipantObjectTypeCodeRole": str(obj.role)})
        _code(element, "ParticipantObjectIDTypeCode", obj.id_type)
        if obj.query:
            ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(obj.query).decode()
        if obj.description:
            ET.SubElement(element, "ParticipantObjectDescription").text = _text(obj.description)
        if obj.sop_class or obj.instances:
            sop = ET.SubElement(element, "SOPClass", {"NumberOfInstances": str(len(obj.instances))})
            if obj.sop_class:
                sop.set("UID", _text(obj.sop_class, 64))
            for uid in obj.instances:
                ET.SubElement(sop, "Instance", {"UID": _text(uid, 64)})
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)
