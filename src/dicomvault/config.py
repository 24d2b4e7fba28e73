"""Typed settings read from ``dicomvault.toml``, with ``DICOMVAULT_<SECTION>_<KEY>`` env overrides.

Relative paths in the file are resolved against the file's own directory, so a data
directory can be moved or mounted elsewhere without editing the configuration.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

CONFIG_ENV = "DICOMVAULT_CONFIG"
DEFAULT_CONFIG_NAME = "dicomvault.toml"


class ConfigError(Exception):
    """The configuration file is missing or holds a value we cannot use."""


@dataclass(frozen=True)
class DicomSettings:
    ae_title: str = "DICOMVAULT"
    port: int = 11112
    bind: str = "0.0.0.0"
    allowed_calling_aets: tuple[str, ...] = ()
    # What a caller that is not a [peers.NAME] may do (access.py): C-ECHO always; "store" by
    # default so a PACS can send on day one; never reading unless an administrator adds it.
    anonymous: tuple[str, ...] = ("store",)
    max_associations: int = 16
    network_timeout: float = 60.0
    engine: str = "lean"  # "lean" (net/acceptor.py) or "pynetdicom" (ingest/dimse.py)
    # C-FIND: match person names case-insensitively ("smith*" finds "SMITH^JOHN"), as many
    # viewers expect; the standard's default is case-sensitive.
    case_insensitive_names: bool = False
    # DIMSE over TLS (net/tls.py): a second listener on tls_port (0 = none) with this PEM
    # certificate (chain) and key; with tls_ca_file, client certificates are required and
    # verified against it. ``port = 0`` then means "no plain listener".
    tls_port: int = 0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    # Resource bounds of the lean listener (net/spool.py, net/acceptor.py): an instance whose
    # data set is larger than max_instance_bytes is refused (0xA700); what all associations
    # hold in memory together stays near max_buffered_bytes (past it they stop reading, the
    # senders wait); a data set beyond spool_threshold_bytes waits in a 0600 unnamed file under
    # the data directory's tmp/ instead of memory. A connection must send its association
    # request within artim_timeout seconds; at most max_pending_connections may be waiting
    # to (the oldest is dropped for a new one), and only negotiated associations count
    # against max_associations.
    max_instance_bytes: int = 2 * 1024**3
    max_buffered_bytes: int = 512 * 1024**2
    spool_threshold_bytes: int = 64 * 1024**2
    artim_timeout: float = 10.0
    max_pending_connections: int = 32


@dataclass(frozen=True)
class Hl7Settings:
    """The HL7 v2 ADT listener (MLLP, ingest/hl7.py): patient updates, merges and changes of
    identifier from the hospital's ADT feed. Off while ``port`` is 0; closed by default: a
    message from a sending facility (MSH-4) or "APP@FACILITY" (MSH-3@MSH-4) not in
    ``allowed_facilities`` is refused (AR), and a port with an empty list refuses to start."""

    port: int = 0
    bind: str = "0.0.0.0"
    allowed_facilities: tuple[str, ...] = ()
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    max_message_bytes: int = 1024 * 1024
    idle_timeout: float = 300.0


@dataclass(frozen=True)
class HttpSettings:
    port: int = 8080
    bind: str = "0.0.0.0"
    enabled: bool = True
    # PEM certificate (chain) and key: when both are set the HTTP side speaks only HTTPS. Needed
    # when [replica_store] is enabled beyond loopback: bearer tokens must not travel in clear.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Bearer tokens (``name:token:role,role`` lines, mode 0600) for the operations API under /api
    # and for DICOMweb: job reports name patients' instances, so nobody reads them without one.
    # Roles: read, store, operator, admin (serve/tokens.py). ``init`` writes one with admin.
    api_tokens_file: str = "keys/api-tokens"
    # Lines without roles (files written before roles): these names also act (operator).
    api_operators: tuple[str, ...] = ("admin",)
    # A client that has not sent its request headers within this many seconds, or whose body
    # stalls this long while the server waits for it, is answered 408 and dropped.
    request_timeout: float = 30.0
    # Largest request body for /api (JSON); a larger declared Content-Length is refused at once
    # (413). STOW-RS has [dicomweb] max_request_bytes; the replica store takes sealed objects.
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class StorageSettings:
    compression_level: int = 1
    journal: bool = True  # acknowledge through the primary file site's write-ahead journal


@dataclass(frozen=True)
class ReplicaSiteSettings:
    """A site that receives copies of every object (a NAS mount, S3, another dicomvault).

    Backend options (endpoint_url, region, credentials, object_lock_days...) are passed to
    the backend as they are; throttling and retry settings belong to the replication worker.
    """

    name: str
    url: str
    offsite: bool = True
    rate: str = "unlimited"
    schedule: tuple[str, ...] = ()
    workers: int = 4
    max_attempts: int = 8
    options: tuple[tuple[str, object], ...] = ()

    @property
    def option_map(self) -> dict[str, object]:
        return dict(self.options)

    @property
    def is_pacs(self) -> bool:
        """A ``dicom://`` target: it holds plaintext images and cannot hand sealed objects back
        (no reads, no verification, no commitment)."""
        return self.url.startswith("dicom://")


@dataclass(frozen=True)
class PolicySettings:
    """How many verified copies make an instance safe (storage commitment answers by it)."""

    copies: int = 2
    offsite_copies: int = 1
    # Recovery point objective: a copy owed to a site for longer than this puts the archive
    # "at risk" (archive/readiness.py).
    rpo: str = "15m"

    @property
    def rpo_seconds(self) -> float:
        return parse_duration(self.rpo)


# Before permissions existed a peer could send and ask for commitment: that stays the default.
DEFAULT_PEER_PERMISSIONS = ("store", "commit")
# "reject": IOCM rejection notes (a Key Object Selection with a rejection title) are applied
# only from a peer granted it; never by default, never for anonymous callers (ingest/iocm.py).
PERMISSION_NAMES = ("store", "find", "get", "move", "commit", "reject")


@dataclass(frozen=True)
class PeerSettings:
    """A known DICOM node: one we call (commitment reports, C-MOVE destinations, restores) and
    one we trust with what ``permissions`` lists when it calls us (``access.py``)."""

    name: str
    ae_title: str
    host: str
    port: int
    permissions: frozenset[str] = frozenset(DEFAULT_PEER_PERMISSIONS)
    # Accept this AE title only from ``host``'s addresses or an ``accept_from`` network.
    check_host: bool = True
    accept_from: tuple[str, ...] = ()
    # When set, accept this AE title only over TLS with a client certificate of this subject.
    tls_subject: str = ""
    # DIMSE over TLS to this peer (net/tls.py client_context): our client certificate (default
    # [dicom] tls_cert_file/tls_key_file) and the CA its server certificate must chain to
    # (default [dicom] tls_ca_file, else the system store).
    tls: bool = False
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    # C-MOVE to it, C-GET by it (and restores/exports to it) carry the catalog's current patient
    # demographics (HL7 ADT) instead of the stored ones (archive/coercion.py); default byte-exact.
    coerce_demographics: bool = False

    @property
    def callable(self) -> bool:
        """Whether we can open associations to it: a peer that only calls us (a viewer that
        queries and retrieves) may leave out ``host`` and ``port``."""
        return bool(self.host) and self.port > 0

    def not_callable_reason(self) -> str:
        return (f"[peers.{self.name}] has no {'host' if not self.host else 'port'}: it may call this archive, but "
                "nothing can be sent to it; add host and port to send it images or reports")


def find_peer(peers: Iterable[PeerSettings], name: str, ignore_case: bool = False) -> PeerSettings | None:
    """The ``[peers.NAME]`` entry called ``name`` or with that AE title."""
    wanted = name.strip().lower() if ignore_case else name
    for peer in peers:
        candidates = (peer.name.lower(), peer.ae_title.lower()) if ignore_case else (peer.name, peer.ae_title)
        if wanted in candidates:
            return peer
    return None


def describe_peers(peers: Iterable[PeerSettings]) -> str:
    """``name (AE@host:port), ...`` for error messages that list what is configured."""
    return ", ".join(f"{p.name} ({p.ae_title}@{p.host}:{p.port})" if p.callable
                     else f"{p.name} ({p.ae_title}, calls only)" for p in peers)


@dataclass(frozen=True)
class ReplicaStoreSettings:
    """This vault as a replica target (``vault://``): it keeps other vaults' sealed objects as-is.

    Off by default: accepting replicas is a deliberate choice. Each sending vault is named by a
    bearer token in ``tokens_file`` (``name:token`` lines, mode 0600) and gets its own directory
    ``<root>/<name>/``; it never needs the sender's keys (ciphertext only, promise 5).
    ``allow_delete`` stays false to keep copies write-once against a compromised sender.
    """

    enabled: bool = False
    tokens_file: Path = Path("keys/replica-tokens")
    root: Path = Path("replicas")
    allow_delete: bool = False


@dataclass(frozen=True)
class CommitmentSettings:
    """Storage commitment (push model) SCP: how long to wait for the copy policy, how often
    to retry reports (``check_interval``), and the evaluator's safety-net poll: it is woken
    when a copy is verified or an instance stored, so ``poll_seconds`` only catches changes
    made by another process."""

    timeout_seconds: float = 3600.0
    check_interval: float = 1.0
    poll_seconds: float = 10.0


@dataclass(frozen=True)
class DicomwebSettings:
    """DICOMweb (QIDO-RS, WADO-RS, STOW-RS) under ``/dicomweb`` on the HTTP port.

    Off by default: it serves PHI. Every request carries ``Authorization: Bearer`` with a token
    of ``[http] api_tokens_file`` (role read for QIDO/WADO, store for STOW); an old
    ``tokens_file`` (lines without roles read and store) replaces it when set.
    ``anonymous_roles`` ("read", "store") lets requests without a token in (trusted network).
    """

    enabled: bool = False
    tokens_file: str = ""
    anonymous_roles: tuple[str, ...] = ()
    max_request_bytes: int = 2 * 1024**3  # STOW-RS request body cap
    query_limit: int = 1000  # QIDO-RS results per response when the client asks for more (or none)
    base_url: str = ""  # public URL of /dicomweb for Retrieve URLs and BulkDataURIs (behind a proxy)


@dataclass(frozen=True)
class ReconcileSettings:
    """Scheduled reconciliation with a PACS inside ``dicomvault serve`` (jobs/reconcile/job.py).

    Off while ``peer`` is empty. Every ``every`` (e.g. "24h", "6h", "30m", "2s") the last
    ``window_days`` days of studies are compared with the PACS ``peer`` (a ``[peers.NAME]``
    name or its AE title); with ``backfill`` the PACS is asked to C-MOVE what the vault lacks.
    """

    peer: str = ""
    every: str = "24h"
    window_days: int = 7
    backfill: bool = False

    @property
    def period_seconds(self) -> float:
        return parse_duration(self.every)


@dataclass(frozen=True)
class ScrubSettings:
    """The background scrub inside ``dicomvault serve`` (jobs/verify/scrub.py): every copy on every
    readable site is read back and checked at least once per ``period`` ("30d"), at most at
    ``rate`` ("50MB/s" of original data, or "unlimited"), looking for due copies every
    ``check_every``. Damage is repaired from a healthy copy, audited and alerted."""

    enabled: bool = True
    period: str = "30d"
    rate: str = "50MB/s"
    check_every: str = "10m"


@dataclass(frozen=True)
class DrillSettings:
    """Scheduled restore drills inside ``dicomvault serve`` (jobs/drill/job.py): every ``every``
    ("7d") the newest study and ``random`` random ones are restored from each readable site
    alone into a scratch folder and checked byte for byte; the history shows in ``status``."""

    enabled: bool = True
    every: str = "7d"
    random: int = 3


@dataclass(frozen=True)
class SnapshotSettings:
    """Encrypted catalog snapshots (jobs/rebuild/snapshot.py): inside ``dicomvault serve`` a snapshot
    of the whole catalog goes to every site that can hold one (file, S3) when the newest is
    older than ``every``, and at start when a site has none; each site keeps its newest
    ``keep``. ``dicomvault rebuild-index`` starts from the newest one."""

    enabled: bool = True
    every: str = "6h"
    keep: int = 14


@dataclass(frozen=True)
class AuditSettings:
    """ATNA export of the audit log (audit/forward.py, run by ``dicomvault serve``): every audit
    row also leaves as a DICOM Audit Message (PS3.15 A.5) in an RFC 5424 syslog message to
    ``syslog`` ("tls://host:6514", RFC 5425; "udp://host:514", RFC 5426; "" = off). TLS verifies
    the server against ``syslog_ca_file`` (empty: the system's trust store) and may present a
    client certificate. ``hostname``/``app_name``/``source_id`` name this archive in the
    syslog header and the AuditSourceIdentification (empty: this host's FQDN)."""

    syslog: str = ""
    syslog_ca_file: str = ""
    syslog_cert_file: str = ""
    syslog_key_file: str = ""
    app_name: str = "dicomvault"
    hostname: str = ""
    source_id: str = ""

    @property
    def transport(self) -> tuple[str, str, int]:
        """("tls" | "udp", host, port) of ``syslog`` (validated when the settings were read)."""
        from urllib.parse import urlsplit

        url = urlsplit(self.syslog)
        return url.scheme, url.hostname or "", url.port or (6514 if url.scheme == "tls" else 514)


@dataclass(frozen=True)
class AlertSettings:
    """Alerts that leave the building (jobs/alerts/): inside ``dicomvault serve`` the engine looks
    at the archive's conditions every ``check_every`` ("30s"), sends each new alert once to every
    channel, a reminder every ``remind_every`` ("4h") until it is acknowledged or resolved, and a
    notice when it clears. Channels (each off while empty): ``webhook_url`` (HTTP POST of JSON,
    retried; ``webhook_token`` as a bearer token; ``webhook_ca_file`` / ``webhook_verify`` for
    TLS), e-mail over SMTP (``smtp_host``, ``smtp_port``, ``smtp_starttls``, optional
    ``smtp_user``/``smtp_password``, ``smtp_ca_file``, ``mail_from``, ``mail_to``) and RFC 5424
    ``syslog`` ("udp://host:514", "tcp://host:514" or "tls://host:6514", ``syslog_ca_file``, a
    client certificate ``syslog_cert_file``/``syslog_key_file`` when the server asks for one)."""

    enabled: bool = True
    check_every: str = "30s"
    remind_every: str = "4h"
    webhook_url: str = ""
    webhook_token: str = ""
    webhook_ca_file: str = ""
    webhook_verify: bool = True
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_starttls: bool = True
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_ca_file: str = ""
    mail_from: str = ""
    mail_to: tuple[str, ...] = ()
    syslog: str = ""
    syslog_ca_file: str = ""
    syslog_cert_file: str = ""
    syslog_key_file: str = ""

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels configured: "webhook", "email", "syslog"."""
        return tuple(name for name, on in (("webhook", self.webhook_url), ("email", self.smtp_host),
                                            ("syslog", self.syslog)) if on)


@dataclass(frozen=True)
class RetentionRule:
    """One ``[[retention.rules]]`` entry: match keys (all given ones must match; a key's list
    matches when any study value matches any item) and how long a matching study is kept."""

    name: str
    modality: tuple[str, ...] = ()  # upper case
    sop_class: tuple[str, ...] = ()  # exact UIDs, or prefixes ending in "*"
    calling_ae: tuple[str, ...] = ()  # the AE title that sent any instance (DIMSE)
    age_below: int | None = None  # the patient's age at the Study Date is under this many years
    keep: str = ""  # "10y", "18mo", "30d", "forever", or "" when keep_after_age alone decides
    keep_after_age: tuple[int, str] | None = None  # (age, plus): until that birthday, plus a period

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "modality": list(self.modality), "sop_class": list(self.sop_class),
                "calling_ae": list(self.calling_ae), "age_below": self.age_below, "keep": self.keep,
                "keep_after_age": ({"age": self.keep_after_age[0], "plus": self.keep_after_age[1]}
                                   if self.keep_after_age else None)}


@dataclass(frozen=True)
class RetentionSettings:
    """``[retention]``: how long studies are kept (catalog/retention.py computes each study's
    keep-until date). ``enabled`` and ``schedule`` drive the deletion engine
    (jobs/retention/run.py): nothing is ever deleted unless ``enabled = true``."""

    enabled: bool = False
    schedule: str = "24h"
    default: str = "forever"
    rules: tuple[RetentionRule, ...] = ()

    def fingerprint(self) -> str:
        """A hash of what decides keep-until dates: a change means every study is recomputed."""
        import hashlib
        import json

        canonical = json.dumps({"default": self.default, "rules": [r.describe() for r in self.rules]},
                               sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


_PERIOD_UNITS = {"y": "years", "mo": "months", "d": "days"}


def parse_period(value: object) -> tuple[int, str]:
    """ "10y", "18mo", "30d" -> (10, "years") ...; ValueError saying what is expected."""
    raw = str(value).strip().lower()
    for suffix, unit in _PERIOD_UNITS.items():
        number = raw[: -len(suffix)]
        if raw.endswith(suffix) and number.isdigit():
            if int(number) < 1 or int(number) > 1000:
                break
            return int(number), unit
    raise ValueError(f"{value!r} is not a retention period: use a whole number 1-1000 and y (years), mo (months) "
                     "or d (days), e.g. \"10y\", \"18mo\", \"30d\"")


_RULE_KEYS = {"name", "modality", "sop_class", "calling_ae", "age_below", "keep", "keep_after_age"}
_UID_PREFIX_OK = set("0123456789.")


def _retention_list(where: str, key: str, value: object, check: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i.strip() for i in items):
        raise ConfigError(f"{where} {key} must be a non-empty string or list of strings, got {value!r}")
    result = tuple(i.strip() for i in items)
    for item in result:
        problem = check(item)
        if problem:
            raise ConfigError(f"{where} {key} {item!r}: {problem}")
    return result


def _check_sop_class(item: str) -> str:
    stem = item[:-1] if item.endswith("*") else item
    if not stem or not set(stem) <= _UID_PREFIX_OK or "*" in stem:
        return "use a SOP Class UID (digits and dots), or a prefix ending in \"*\""
    return ""


def _keep_value(where: str, key: str, value: object, allow_forever: bool) -> str:
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text == "forever" and allow_forever:
        return text
    try:
        parse_period(text if text is not None else value)
    except ValueError as exc:
        raise ConfigError(f"{where} {key}: {exc}" + (" or \"forever\"" if allow_forever else "")) from None
    return text or ""


def _retention_rule(index: int, raw: object) -> RetentionRule:
    where = f"[[retention.rules]] #{index + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    name = str(raw.get("name", f"rule-{index + 1}")).strip()
    where = f"[[retention.rules]] #{index + 1} ({name})"
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(sorted(_RULE_KEYS))}")
    if not name or len(name) > 64:
        raise ConfigError(f"{where} name must be 1-64 characters")
    modality = _retention_list(where, "modality", raw["modality"], lambda m: "" if 0 < len(m) <= 16 else
                               "a modality is 1-16 characters, e.g. \"MG\"") if "modality" in raw else ()
    sop_class = _retention_list(where, "sop_class", raw["sop_class"], _check_sop_class) if "sop_class" in raw else ()
    calling_ae = (_retention_list(where, "calling_ae", raw["calling_ae"], lambda a: "" if len(a) <= 16 else
                                  "an AE title is 1-16 characters") if "calling_ae" in raw else ())
    age_below = raw.get("age_below")
    if age_below is not None and (isinstance(age_below, bool) or not isinstance(age_below, int)
                                  or not 1 <= age_below <= 150):
        raise ConfigError(f"{where} age_below must be a whole number of years 1-150, got {age_below!r}")
    if "keep" not in raw and "keep_after_age" not in raw:
        raise ConfigError(f"{where} needs keep = \"10y\" (or \"forever\") and/or keep_after_age = "
                          "{ age = 18, plus = \"7y\" }")
    keep = _keep_value(where, "keep", raw["keep"], True) if "keep" in raw else ""
    after = raw.get("keep_after_age")
    keep_after_age = None
    if after is not None:
        if not isinstance(after, dict) or set(after) != {"age", "plus"}:
            raise ConfigError(f"{where} keep_after_age must be {{ age = 18, plus = \"7y\" }}, got {after!r}")
        age = after["age"]
        if isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= 150:
            raise ConfigError(f"{where} keep_after_age.age must be a whole number of years 0-150, got {age!r}")
        keep_after_age = (age, _keep_value(where, "keep_after_age.plus", after["plus"], False))
    return RetentionRule(name=name, modality=tuple(m.upper() for m in modality), sop_class=sop_class,
                         calling_ae=calling_ae, age_below=age_below, keep=keep, keep_after_age=keep_after_age)


def _retention(data: dict) -> RetentionSettings:
    """``[retention]`` and its ``[[retention.rules]]`` (first match wins, else ``default``)."""
    section = data.get("retention", {})
    if not isinstance(section, dict):
        raise ConfigError("[retention] must be a table")
    raw_rules = section.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError("[retention] rules must be written as [[retention.rules]] tables")
    values = _section({"retention": {k: v for k, v in section.items() if k != "rules"}}, "retention",
                      RetentionSettings())
    _duration("retention", "schedule", values["schedule"])  # (enabled: a bool, checked by _section)
    default = _keep_value("[retention]", "default", values["default"], True)
    rules = tuple(_retention_rule(i, raw) for i, raw in enumerate(raw_rules))
    names = [r.name for r in rules]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"[[retention.rules]] names must be unique; repeated: {', '.join(duplicated)}")
    return RetentionSettings(values["enabled"], str(values["schedule"]), default, rules)


@dataclass(frozen=True)
class IocmSettings:
    """IHE IOCM rejection notes (ingest/iocm.py): instances a peer with ``reject`` rejected are
    hidden at once and become due for deletion ``delete_after`` ("30d") later."""

    delete_after: str = "30d"

    @property
    def delete_after_seconds(self) -> float:
        return parse_duration(self.delete_after)


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str) -> float:
    """ "30s", "30m", "6h", "1d", "1.5h" -> seconds; ValueError saying what is expected."""
    raw = str(value).strip().lower()
    number, unit = raw[:-1].strip(), raw[-1:]
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(f"{value!r} is not a duration: use a number and a unit s, m, h or d, "
                         "e.g. \"30m\", \"6h\", \"24h\"") from None
    if not seconds > 0 or seconds != seconds:
        raise ValueError(f"{value!r}: the duration must be positive")
    return seconds


def _duration(section: str, key: str, value: object) -> float:
    """A duration setting's seconds, or a ConfigError naming where it was written."""
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise ConfigError(f"[{section}] {key}: {exc}") from None


_SITE_KEYS = {"url", "offsite", "rate", "schedule", "workers", "max_attempts"}
_TLS_FILE_OPTIONS = {"tls_cert_file", "tls_key_file", "tls_ca_file"}  # a dicom:// target's, like [peers.NAME]'s
_SITE_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def _replica_sites(base: Path, sites: dict) -> tuple[ReplicaSiteSettings, ...]:
    result = []
    for name, raw in sites.items():
        if name == "primary":
            continue
        if not isinstance(raw, dict):
            raise ConfigError(f"[sites.{name}] must be a table")
        if not name or not set(name) <= _SITE_NAME_OK or len(name) > 64:
            raise ConfigError(f"site name {name!r}: use lower-case letters, digits, '-' and '_' (max 64)")
        url = raw.get("url")
        if not isinstance(url, str) or "://" not in url:
            raise ConfigError(f"[sites.{name}] needs url = \"file:///...\", \"s3://bucket/prefix\" or \"vault://host:port\"")
        env_url = os.environ.get(f"DICOMVAULT_SITES_{name.upper().replace('-', '_')}_URL")
        url = env_url or url
        if url.startswith("file://") and not url.startswith("file:///"):
            url = "file://" + str(_resolve(base, url[len("file://"):]))
        schedule = raw.get("schedule", [])
        if isinstance(schedule, str):
            schedule = [schedule]
        for key, kind in (("workers", int), ("max_attempts", int), ("offsite", bool), ("rate", str)):
            if key in raw and not isinstance(raw[key], kind):
                raise ConfigError(f"[sites.{name}] {key} must be {kind.__name__}, got {raw[key]!r}")
        workers = int(raw.get("workers", 4))
        if not 1 <= workers <= 32:
            raise ConfigError(f"[sites.{name}] workers must be 1-32, got {workers}")
        options = tuple(sorted((k, str(_resolve(base, v)) if k in _TLS_FILE_OPTIONS and isinstance(v, str) and v else v)
                               for k, v in raw.items() if k not in _SITE_KEYS))
        result.append(ReplicaSiteSettings(
            name=name, url=url, offsite=bool(raw.get("offsite", True)), rate=str(raw.get("rate", "unlimited")),
            schedule=tuple(str(w) for w in schedule), workers=workers,
            max_attempts=int(raw.get("max_attempts", 8)), options=options,
        ))
    return tuple(result)


@dataclass(frozen=True)
class Settings:
    base_dir: Path
    catalog_url: str
    primary_site_url: str
    site_key_file: Path
    recovery_public_key_file: Path
    dicom: DicomSettings = field(default_factory=DicomSettings)
    hl7: Hl7Settings = field(default_factory=Hl7Settings)
    http: HttpSettings = field(default_factory=HttpSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    config_file: Path | None = None
    replicas: tuple[ReplicaSiteSettings, ...] = ()
    policy: PolicySettings = field(default_factory=PolicySettings)
    peers: tuple[PeerSettings, ...] = ()
    commitment: CommitmentSettings = field(default_factory=CommitmentSettings)
    replica_store: ReplicaStoreSettings = field(default_factory=ReplicaStoreSettings)
    dicomweb: DicomwebSettings = field(default_factory=DicomwebSettings)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    scrub: ScrubSettings = field(default_factory=ScrubSettings)
    drill: DrillSettings = field(default_factory=DrillSettings)
    snapshots: SnapshotSettings = field(default_factory=SnapshotSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    iocm: IocmSettings = field(default_factory=IocmSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path.cwd() / DEFAULT_CONFIG_NAME


def _env_override(section: str, key: str, value: object) -> object:
    raw = os.environ.get(f"DICOMVAULT_{section.upper()}_{key.upper()}")
    if raw is None:
        return value
    if isinstance(value, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(value, int):
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"DICOMVAULT_{section.upper()}_{key.upper()}={raw!r} is not an integer") from exc
    if isinstance(value, float):
        return float(raw)
    if isinstance(value, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _section(data: dict, name: str, defaults: object) -> dict:
    raw = data.get(name, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f for f in defaults.__dataclass_fields__}  # type: ignore[attr-defined]
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    values = {}
    for key in known:
        default = getattr(defaults, key)
        value = raw.get(key, default)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(str(v) for v in value)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"[{name}] {key} must be true or false, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and not isinstance(value, int):
            raise ConfigError(f"[{name}] {key} must be an integer, got {value!r}")
        values[key] = _env_override(name, key, value)
    return values


def _check_dicom_bounds(dicom: DicomSettings) -> None:
    if dicom.max_instance_bytes < 1024:
        raise ConfigError(f"[dicom] max_instance_bytes must be at least 1024, got {dicom.max_instance_bytes}")
    if dicom.max_buffered_bytes < 1024**2:
        raise ConfigError(f"[dicom] max_buffered_bytes must be at least 1048576, got {dicom.max_buffered_bytes}")
    if dicom.spool_threshold_bytes < 0:
        raise ConfigError(f"[dicom] spool_threshold_bytes must be 0 or more, got {dicom.spool_threshold_bytes}")
    if not 0 < float(dicom.artim_timeout) <= 600:
        raise ConfigError(f"[dicom] artim_timeout must be 0-600 seconds, got {dicom.artim_timeout}")
    if dicom.max_pending_connections < 1:
        raise ConfigError(f"[dicom] max_pending_connections must be at least 1, got {dicom.max_pending_connections}")


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    config_path = resolve_config_path(path)
    if not config_path.is_file():
        raise ConfigError(
            f"no configuration at {config_path}; run `dicomvault init --dir DIR` first "
            f"or pass --config / set {CONFIG_ENV}"
        )
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path} is not valid TOML: {exc}") from exc
    base = config_path.resolve().parent

    storage = data.get("storage", {})
    data_dir = _resolve(base, str(_env_override("storage", "data_dir", storage.get("data_dir", "."))))
    catalog = data.get("catalog", {})
    default_db = f"sqlite:///{data_dir / 'catalog.sqlite3'}"
    catalog_url = str(_env_override("catalog", "url", catalog.get("url", default_db)))
    sites = data.get("sites", {})
    primary = sites.get("primary", {}) if isinstance(sites, dict) else {}
    primary_url = str(primary.get("url", f"file://{data_dir / 'objects'}"))
    if primary_url.startswith("file://") and not primary_url.startswith("file:///"):
        primary_url = "file://" + str(_resolve(base, primary_url[len("file://"):]))
    keys = data.get("keys", {})
    site_key = _resolve(base, str(keys.get("site_key_file", "keys/site.key")))
    recovery_pub = _resolve(base, str(keys.get("recovery_public_key_file", "keys/recovery.pub")))

    dicom = _dicom_tls(DicomSettings(**_section(data, "dicom", DicomSettings())), base)
    _permission_list("[dicom] anonymous", list(dicom.anonymous))
    if dicom.engine not in ("lean", "pynetdicom"):
        raise ConfigError(f"[dicom] engine must be \"lean\" or \"pynetdicom\", got {dicom.engine!r}")
    if not dicom.ae_title or len(dicom.ae_title) > 16:
        raise ConfigError(f"[dicom] ae_title must be 1-16 characters, got {dicom.ae_title!r}")
    _check_dicom_bounds(dicom)
    storage_values = {k: v for k, v in storage.items() if k != "data_dir"}
    storage_settings = StorageSettings(**_section({"storage": storage_values}, "storage", StorageSettings()))
    return Settings(
        base_dir=data_dir,
        catalog_url=catalog_url,
        primary_site_url=primary_url,
        site_key_file=site_key,
        recovery_public_key_file=recovery_pub,
        dicom=dicom,
        hl7=_hl7(data, base),
        http=_http(data, base),
        storage=storage_settings,
        config_file=config_path.resolve(),
        replicas=_replica_sites(base, sites if isinstance(sites, dict) else {}),
        policy=_policy(data),
        peers=tuple(_peer_tls_files(peer, base) for peer in _peers(data)),
        commitment=_commitment(data),
        replica_store=_replica_store(data, base, data_dir),
        dicomweb=_dicomweb(data, base),
        reconcile=_reconcile(data),
        scrub=_scrub(data),
        drill=_drill(data),
        snapshots=_snapshots(data),
        audit=_audit(data, base),
        retention=_retention(data),
        iocm=_iocm(data),
        alerts=_alerts(data, base),
    )


def _hl7(data: dict, base: Path) -> Hl7Settings:
    """``[hl7]``: TLS paths resolve like the keys; whether the files can be used, and that a
    port has an allow-list, is checked when `serve` starts the listener (ingest/hl7.py)."""
    values = _section(data, "hl7", Hl7Settings())
    if not 0 <= values["port"] <= 65535:
        raise ConfigError(f"[hl7] port must be 0-65535 (0 = off), got {values['port']}")
    allowed = values["allowed_facilities"]
    if not isinstance(allowed, tuple) or not all(isinstance(a, str) and a.strip() and a.count("@") <= 1
                                                 and not a.startswith("@") and not a.endswith("@") for a in allowed):
        raise ConfigError(f"[hl7] allowed_facilities must be a list of sending facilities (MSH-4) or "
                          f"\"APPLICATION@FACILITY\" (MSH-3@MSH-4) values, got {allowed!r}")
    values["allowed_facilities"] = tuple(a.strip() for a in allowed)
    files = {key: str(values[key] or "").strip() for key in ("tls_cert_file", "tls_key_file", "tls_ca_file")}
    if bool(files["tls_cert_file"]) != bool(files["tls_key_file"]):
        raise ConfigError("[hl7] needs both tls_cert_file and tls_key_file for MLLP over TLS, or neither")
    if files["tls_ca_file"] and not files["tls_cert_file"]:
        raise ConfigError("[hl7] tls_ca_file (client certificates required) needs tls_cert_file and tls_key_file")
    values.update({key: str(_resolve(base, value)) if value else "" for key, value in files.items()})
    if not 1024 <= values["max_message_bytes"] <= 64 * 1024**2:
        raise ConfigError(f"[hl7] max_message_bytes must be 1024-67108864, got {values['max_message_bytes']}")
    idle = values["idle_timeout"]
    if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not 0.1 <= idle <= 86400:
        raise ConfigError(f"[hl7] idle_timeout must be seconds between 0.1 and 86400, got {idle!r}")
    values["idle_timeout"] = float(idle)
    return Hl7Settings(**values)


def _http(data: dict, base: Path) -> HttpSettings:
    """``[http]``; TLS file paths resolve against the config file's directory, like the keys."""
    values = _section(data, "http", HttpSettings())
    cert, key = str(values["tls_cert_file"] or ""), str(values["tls_key_file"] or "")
    if bool(cert) != bool(key):
        raise ConfigError("[http] needs both tls_cert_file and tls_key_file for HTTPS, or neither for plain HTTP")
    values["tls_cert_file"] = str(_resolve(base, cert)) if cert else ""
    values["tls_key_file"] = str(_resolve(base, key)) if key else ""
    tokens = str(values["api_tokens_file"] or "").strip()
    if not tokens:
        raise ConfigError("[http] api_tokens_file must name a tokens file: the /api endpoints report on patients' "
                          "instances and are never served without a bearer token")
    values["api_tokens_file"] = str(_resolve(base, tokens))
    if not isinstance(values["api_operators"], tuple):
        raise ConfigError(f"[http] api_operators must be a list of token names, got {values['api_operators']!r}")
    timeout = values["request_timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0.1 <= timeout <= 3600:
        raise ConfigError(f"[http] request_timeout must be seconds between 0.1 and 3600, got {timeout!r}")
    values["request_timeout"] = float(timeout)
    if values["max_body_bytes"] < 1024:
        raise ConfigError(f"[http] max_body_bytes must be at least 1024, got {values['max_body_bytes']}")
    return HttpSettings(**values)


def _replica_store(data: dict, base: Path, data_dir: Path) -> ReplicaStoreSettings:
    """``[replica_store]``: tokens_file is relative to the config file, root to data_dir."""
    values = _section(data, "replica_store", ReplicaStoreSettings())
    for key in ("tokens_file", "root"):
        if not str(values[key]).strip():
            raise ConfigError(f"[replica_store] {key} must not be empty")
    return ReplicaStoreSettings(
        enabled=values["enabled"], allow_delete=values["allow_delete"],
        tokens_file=_resolve(base, str(values["tokens_file"])), root=_resolve(data_dir, str(values["root"])),
    )


def _dicomweb(data: dict, base: Path) -> DicomwebSettings:
    """``[dicomweb]``; tokens_file resolves against the config file's directory, like the keys."""
    values = _section(data, "dicomweb", DicomwebSettings())
    if values["max_request_bytes"] < 1024:
        raise ConfigError(f"[dicomweb] max_request_bytes must be at least 1024, got {values['max_request_bytes']}")
    if not 1 <= values["query_limit"] <= 100_000:
        raise ConfigError(f"[dicomweb] query_limit must be 1-100000, got {values['query_limit']}")
    base_url = str(values["base_url"] or "").strip().rstrip("/")
    if base_url and not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"[dicomweb] base_url must start with http:// or https://, got {base_url!r}")
    values["base_url"] = base_url
    tokens = str(values["tokens_file"] or "").strip()
    values["tokens_file"] = str(_resolve(base, tokens)) if tokens else ""
    anonymous = values["anonymous_roles"]
    if not isinstance(anonymous, tuple) or not set(anonymous) <= {"read", "store"}:
        raise ConfigError(f'[dicomweb] anonymous_roles must be a list of "read" and/or "store", got {anonymous!r}')
    return DicomwebSettings(**values)


def _policy(data: dict) -> PolicySettings:
    values = _section(data, "policy", PolicySettings())
    if not isinstance(values["rpo"], str):
        raise ConfigError(f"[policy] rpo must be a duration like \"15m\" or \"1h\", got {values['rpo']!r}")
    _duration("policy", "rpo", values["rpo"])
    policy = PolicySettings(**values)
    if policy.copies < 1 or policy.offsite_copies < 0 or policy.offsite_copies >= policy.copies + 1:
        raise ConfigError(f"[policy] needs copies >= 1 and 0 <= offsite_copies <= copies, got {policy}")
    return policy


_PEER_KEYS = ({"ae_title", "host", "port", "permissions", "check_host", "accept_from", "tls_subject",
               "coerce_demographics"}
              | {"tls", "tls_cert_file", "tls_key_file", "tls_ca_file"})


def _peers(data: dict) -> tuple[PeerSettings, ...]:
    """``[peers.NAME]`` tables: ae_title, host, port of nodes we call (storage commitment reports)."""
    raw_peers = data.get("peers", {})
    if not isinstance(raw_peers, dict):
        raise ConfigError("[peers] must hold tables like [peers.pacs]")
    result: list[PeerSettings] = []
    seen: dict[str, str] = {}
    for name, raw in raw_peers.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"[peers.{name}] must be a table with ae_title, host and port")
        unknown = set(raw) - _PEER_KEYS
        if unknown:
            raise ConfigError(f"unknown key(s) in [peers.{name}]: {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(_PEER_KEYS))}")
        # host and port may be left out by a peer that only calls us (a viewer): we never call it
        ae_title, host, port = raw.get("ae_title"), raw.get("host", ""), raw.get("port", 0)
        if not isinstance(ae_title, str) or not ae_title.strip() or len(ae_title.strip()) > 16:
            raise ConfigError(f"[peers.{name}] ae_title must be 1-16 characters, got {ae_title!r}")
        if not isinstance(host, str) or ("host" in raw and not host.strip()):
            raise ConfigError(f"[peers.{name}] needs host = \"hostname or address\", got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not (1 <= port <= 65535 or "port" not in raw):
            raise ConfigError(f"[peers.{name}] port must be an integer 1-65535, got {port!r}")
        ae_title = ae_title.strip()
        if ae_title in seen:
            raise ConfigError(f"[peers.{name}] and [peers.{seen[ae_title]}] both use AE title {ae_title!r}")
        seen[ae_title] = name
        peer = PeerSettings(name=name, ae_title=ae_title, host=host.strip(), port=port,
                            **_peer_access(name, raw), **_peer_tls(name, raw))
        if "commit" in peer.permissions and not peer.callable:
            raise ConfigError(f"[peers.{name}] may ask for storage commitment, whose report goes back on a new "
                              "association: give it host and port, or leave \"commit\" out of its permissions")
        if not peer.host and peer.check_host and not peer.accept_from and not peer.tls_subject:
            raise ConfigError(f"[peers.{name}] has no host to check callers against: set host, accept_from "
                              "(the addresses it calls from), tls_subject or check_host = false")
        result.append(peer)
    return tuple(result)


def _permission_list(where: str, value: object) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list such as [\"store\", \"find\"], got {value!r}")
    unknown = sorted(set(value) - set(PERMISSION_NAMES))
    if unknown:
        raise ConfigError(f"{where}: unknown permission(s) {', '.join(unknown)}; known: {', '.join(PERMISSION_NAMES)}")
    return frozenset(value)


def _peer_access(name: str, raw: dict) -> dict[str, object]:
    """The access keys of ``[peers.NAME]``: permissions, check_host, accept_from, tls_subject."""
    import ipaddress

    values: dict[str, object] = {}
    if "permissions" in raw:
        values["permissions"] = _permission_list(f"[peers.{name}] permissions", raw["permissions"])
    for key in ("check_host", "coerce_demographics"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise ConfigError(f"[peers.{name}] {key} must be true or false, got {raw[key]!r}")
            values[key] = raw[key]
    networks = raw.get("accept_from", [])
    if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
        raise ConfigError(f"[peers.{name}] accept_from must be a list of addresses or networks, got {networks!r}")
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"[peers.{name}] accept_from: {network!r} is not an address or network "
                              "such as \"10.0.0.5\" or \"10.0.0.0/24\"") from None
    values["accept_from"] = tuple(networks)
    subject = raw.get("tls_subject", "")
    if not isinstance(subject, str) or (subject and "=" not in subject):
        raise ConfigError(f"[peers.{name}] tls_subject must be a certificate subject such as "
                          f"\"CN=pacs.example.org,O=Hospital\", got {subject!r}")
    values["tls_subject"] = subject.strip()
    return values


def _peer_tls(name: str, raw: dict) -> dict:
    """The TLS keys of one ``[peers.NAME]`` table, checked (paths resolved later)."""
    tls = raw.get("tls", False)
    if not isinstance(tls, bool):
        raise ConfigError(f"[peers.{name}] tls must be true or false, got {tls!r}")
    files = {key: raw.get(key, "") for key in ("tls_cert_file", "tls_key_file", "tls_ca_file")}
    for key, value in files.items():
        if not isinstance(value, str):
            raise ConfigError(f"[peers.{name}] {key} must be a file path, got {value!r}")
    if bool(files["tls_cert_file"]) != bool(files["tls_key_file"]):
        raise ConfigError(f"[peers.{name}] needs both tls_cert_file and tls_key_file (our client certificate), "
                          "or neither")
    if not tls and any(files.values()):
        raise ConfigError(f"[peers.{name}] sets TLS files but not tls = true")
    return {"tls": tls, **files}


def _peer_tls_files(peer: PeerSettings, base: Path) -> PeerSettings:
    """A peer's TLS file paths resolved against the config file's directory."""
    files = {key: str(_resolve(base, value)) for key in ("tls_cert_file", "tls_key_file", "tls_ca_file")
             if (value := getattr(peer, key))}
    return replace(peer, **files) if files else peer


def _dicom_tls(dicom: DicomSettings, base: Path) -> DicomSettings:
    """``[dicom] tls_*``: paths resolved like the keys; a TLS port needs a certificate and key.
    Whether the files can be read and match is checked when the listener starts (net/tls.py)."""
    if not 0 <= dicom.tls_port <= 65535 or not 0 <= dicom.port <= 65535:
        raise ConfigError(f"[dicom] port and tls_port must be 0-65535, got {dicom.port} and {dicom.tls_port}")
    files = {key: str(_resolve(base, value)) for key in ("tls_cert_file", "tls_key_file", "tls_ca_file")
             if (value := str(getattr(dicom, key) or "").strip())}
    dicom = replace(dicom, **files)
    if bool(dicom.tls_cert_file) != bool(dicom.tls_key_file):
        raise ConfigError("[dicom] needs both tls_cert_file and tls_key_file, or neither")
    if dicom.tls_port:
        if not dicom.tls_cert_file:
            raise ConfigError(f"[dicom] tls_port = {dicom.tls_port} needs tls_cert_file and tls_key_file (the "
                              "listener's PEM certificate and private key)")
        if dicom.tls_port == dicom.port:
            raise ConfigError(f"[dicom] tls_port and port are both {dicom.port}: use two ports, or port = 0 for "
                              "TLS only")
        if dicom.engine != "lean":
            raise ConfigError("[dicom] tls_port needs engine = \"lean\" (the pynetdicom engine has no TLS listener)")
    elif not dicom.port:
        raise ConfigError("[dicom] port = 0 (no plain listener) needs a tls_port")
    return dicom


def _scrub(data: dict) -> ScrubSettings:
    """``[scrub]``: how often every copy is proven (jobs/verify/scrub.py)."""
    from dicomvault.rates import ThrottleConfigError, parse_rate

    values = _section(data, "scrub", ScrubSettings())
    for key in ("period", "check_every"):
        _duration("scrub", key, values[key])
    try:
        parse_rate(values["rate"])
    except ThrottleConfigError as exc:
        raise ConfigError(f"[scrub] rate: {exc}") from None
    return ScrubSettings(values["enabled"], str(values["period"]), str(values["rate"]), str(values["check_every"]))


def _drill(data: dict) -> DrillSettings:
    """``[drill]``: how often `serve` runs a restore drill from every site (jobs/drill/job.py)."""
    values = _section(data, "drill", DrillSettings())
    _duration("drill", "every", values["every"])
    if isinstance(values["random"], bool) or not 0 <= values["random"] <= 1000:
        raise ConfigError(f"[drill] random must be a whole number 0-1000, got {values['random']!r}")
    return DrillSettings(values["enabled"], str(values["every"]), values["random"])


def _snapshots(data: dict) -> SnapshotSettings:
    """``[snapshots]``: how often the encrypted catalog snapshot goes to every site."""
    values = _section(data, "snapshots", SnapshotSettings())
    _duration("snapshots", "every", values["every"])
    keep = values["keep"]
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"[snapshots] keep must be a whole number of at least 1, got {keep!r}")
    return SnapshotSettings(values["enabled"], str(values["every"]), keep)


def _reconcile(data: dict) -> ReconcileSettings:
    """``[reconcile]``: the scheduled PACS comparison (jobs/reconcile/job.py); off while peer is empty."""
    values = _section(data, "reconcile", ReconcileSettings())
    for key, kind, what in (("peer", str, "a [peers.NAME] name or AE title (\"\" = off)"),
                            ("every", str, "a duration like \"24h\", \"6h\" or \"30m\""),
                            ("backfill", bool, "true or false")):
        if not isinstance(values[key], kind):
            raise ConfigError(f"[reconcile] {key} must be {what}, got {values[key]!r}")
    period = _duration("reconcile", "every", values["every"])
    if not 1 <= period <= 366 * 86400:
        raise ConfigError(f"[reconcile] every must be between 1s and 366d, got {values['every']!r}")
    if not 1 <= values["window_days"] <= 3660:
        raise ConfigError(f"[reconcile] window_days must be 1-3660, got {values['window_days']}")
    peer = values["peer"].strip()
    if peer:
        peers = _peers(data)
        if find_peer(peers, peer) is None:
            known = ", ".join(f"{p.name} ({p.ae_title})" for p in peers) or "none"
            raise ConfigError(f"[reconcile] peer {peer!r} is not a configured [peers.NAME] name or AE title; "
                              f"configured: {known}")
    return ReconcileSettings(peer=peer, every=values["every"].strip(), window_days=values["window_days"],
                             backfill=values["backfill"])


def _iocm(data: dict) -> IocmSettings:
    """``[iocm]``: how long a rejected instance stays before it is due for deletion."""
    values = _section(data, "iocm", IocmSettings())
    _duration("iocm", "delete_after", values["delete_after"])
    return IocmSettings(str(values["delete_after"]))


def _audit(data: dict, base: Path) -> AuditSettings:
    """``[audit]``: the syslog URL checked here (a typo must not silently mean "no export");
    certificate paths resolve against the config file's directory, like the keys."""
    values = _section(data, "audit", AuditSettings())
    url = str(values["syslog"] or "").strip()
    values["syslog"] = url
    if url:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"[audit] syslog {url!r}: {exc}") from exc
        if parts.scheme not in ("tls", "udp") or not parts.hostname or parts.path not in ("", "/") or port == 0:
            raise ConfigError(f"[audit] syslog must be \"tls://host:6514\" or \"udp://host:514\" (or \"\" for "
                              f"off), got {url!r}")
    for key in ("syslog_ca_file", "syslog_cert_file", "syslog_key_file"):
        path = str(values[key] or "").strip()
        values[key] = str(_resolve(base, path)) if path else ""
    if bool(values["syslog_cert_file"]) != bool(values["syslog_key_file"]):
        raise ConfigError("[audit] needs both syslog_cert_file and syslog_key_file for a client certificate, "
                          "or neither")
    app_name = str(values["app_name"])
    if not 1 <= len(app_name) <= 48 or not all(33 <= ord(c) <= 126 for c in app_name):
        raise ConfigError(f"[audit] app_name must be 1-48 printable ASCII characters without spaces, got {app_name!r}")
    hostname = str(values["hostname"])
    if len(hostname) > 255 or not all(33 <= ord(c) <= 126 for c in hostname):
        raise ConfigError(f"[audit] hostname must be at most 255 printable ASCII characters without spaces, "
                          f"got {hostname!r}")
    return AuditSettings(**values)


def _alerts(data: dict, base: Path) -> AlertSettings:
    """``[alerts]``: every channel checked here, so that a typo is refused at start rather than
    found out when nobody was told."""
    from urllib.parse import urlsplit

    values = _section(data, "alerts", AlertSettings())
    for key in ("check_every", "remind_every"):
        _duration("alerts", key, values[key])
        values[key] = str(values[key])
    for key in ("webhook_url", "webhook_token", "smtp_host", "smtp_user", "smtp_password", "mail_from", "syslog"):
        if not isinstance(values[key], str):
            raise ConfigError(f"[alerts] {key} must be a string, got {values[key]!r}")
        values[key] = values[key].strip()
    for key in ("webhook_ca_file", "smtp_ca_file", "syslog_ca_file", "syslog_cert_file", "syslog_key_file"):
        path = str(values[key] or "").strip()
        values[key] = str(_resolve(base, path)) if path else ""
        if path and not Path(values[key]).is_file():
            raise ConfigError(f"[alerts] {key}: no such file {values[key]}")
    if bool(values["syslog_cert_file"]) != bool(values["syslog_key_file"]):
        raise ConfigError("[alerts] needs both syslog_cert_file and syslog_key_file for a client certificate, "
                          "or neither")
    url = values["webhook_url"]
    if url:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ConfigError(f"[alerts] webhook_url {url!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"[alerts] webhook_url must be an http:// or https:// URL (or \"\" for off), got {url!r}")
    mail_to = values["mail_to"]
    if isinstance(mail_to, str):
        mail_to = (mail_to,) if mail_to.strip() else ()
    if not isinstance(mail_to, tuple) or not all(isinstance(m, str) for m in mail_to):
        raise ConfigError(f"[alerts] mail_to must be a list of e-mail addresses, got {values['mail_to']!r}")
    values["mail_to"] = tuple(m.strip() for m in mail_to if m.strip())
    for address in (values["mail_from"], *values["mail_to"]):
        if address and ("@" not in address or any(c.isspace() for c in address)):
            raise ConfigError(f"[alerts] {address!r} is not an e-mail address (name@host)")
    if values["smtp_host"]:
        if not values["mail_from"] or not values["mail_to"]:
            raise ConfigError("[alerts] smtp_host is set: mail_from and mail_to (a list of addresses) are needed too")
    elif values["mail_to"]:
        raise ConfigError("[alerts] mail_to is set but smtp_host is empty: name the SMTP server that sends the mail")
    if not 1 <= values["smtp_port"] <= 65535:
        raise ConfigError(f"[alerts] smtp_port must be 1-65535, got {values['smtp_port']}")
    if bool(values["smtp_user"]) != bool(values["smtp_password"]):
        raise ConfigError("[alerts] needs both smtp_user and smtp_password to log in, or neither")
    syslog = values["syslog"]
    if syslog:
        try:
            parts = urlsplit(syslog)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"[alerts] syslog {syslog!r}: {exc}") from None
        if parts.scheme not in ("udp", "tcp", "tls") or not parts.hostname or parts.path not in ("", "/") or port == 0:
            raise ConfigError(f"[alerts] syslog must be \"udp://host:514\", \"tcp://host:514\" or "
                              f"\"tls://host:6514\" (or \"\" for off), got {syslog!r}")
    return AlertSettings(**values)


def _commitment(data: dict) -> CommitmentSettings:
    values = _section(data, "commitment", CommitmentSettings())
    try:
        timeout, interval = float(values["timeout_seconds"]), float(values["check_interval"])
        poll = float(values["poll_seconds"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[commitment] timeout_seconds, check_interval and poll_seconds must be numbers: "
                          f"{exc}") from exc
    if timeout <= 0 or not 0.01 <= interval <= 3600 or not 0.01 <= poll <= 86400:
        raise ConfigError(f"[commitment] needs timeout_seconds > 0, 0.01 <= check_interval <= 3600 and "
                          f"0.01 <= poll_seconds <= 86400, got {timeout}, {interval}, {poll}")
    return CommitmentSettings(timeout_seconds=timeout, check_interval=interval, poll_seconds=poll)


DEFAULT_CONFIG_TEMPLATE = """\
# dicomvault configuration. Relative paths are relative to this file's directory.
# Any key can be overridden with an environment variable DICOMVAULT_<SECTION>_<KEY>,
# for example DICOMVAULT_DICOM_PORT=104.

[storage]
# Where the archive keeps its catalog and (by default) its primary object site.
data_dir = "."
# zstd level for lossless compression of stored objects (1 = fastest, 19 = smallest).
# Level 1 is ~3x faster than 3 on CT pixel data and only ~6% larger: ingest is CPU-bound.
compression_level = 1
# Acknowledge each instance once it is in the primary file site's write-ahead journal
# (preallocated segments under <site>/journal, at most 256 MiB): one device flush per
# acknowledgement instead of a new file's journal commit, ~2 ms less per instance on ext4.
# false: every object is made durable as its own file before the acknowledgement.
journal = true

[catalog]
# SQLAlchemy URL of the catalog (the index; never the only copy of anything).
# Default: SQLite in WAL mode inside data_dir. For scale-out use PostgreSQL:
# url = "postgresql+psycopg://dicomvault@localhost/dicomvault"
# (create that database with a UTF-8 character locale, e.g. `createdb --encoding UTF8
# --lc-ctype C.UTF-8 --lc-collate C dicomvault`: case-insensitive name matching needs it)

[sites.primary]
# The on-site copy. Objects are compressed, encrypted and content-addressed.
url = "file://objects"

[keys]
# The site key encrypts (wraps) the per-study data keys. Keep it on this machine, mode 0600.
site_key_file = "keys/site.key"
# The recovery PUBLIC key: every data key is also wrapped for it, so the matching
# private key (created by `dicomvault init` in recovery-key.pem) can open any copy
# at a disaster-recovery site. That private key belongs OFFLINE, not on this machine.
recovery_public_key_file = "keys/recovery.pub"

[dicom]
ae_title = "DICOMVAULT"
port = 11112
# 0.0.0.0 listens on every interface; use 127.0.0.1 to accept local senders only.
bind = "0.0.0.0"
# Calling AE titles allowed to associate; empty means any sender is accepted.
allowed_calling_aets = []
# What callers that are not a [peers.NAME] below may do. C-ECHO is always answered. The
# default lets any modality or PACS send (C-STORE) on day one; C-FIND, C-GET, C-MOVE and
# storage commitment need a [peers.NAME] with that permission. [] refuses storing too.
anonymous = ["store"]
max_associations = 16
network_timeout = 60.0
# Resource bounds. An instance whose data set exceeds max_instance_bytes is refused (status
# 0xA700, the association goes on). All associations together hold about max_buffered_bytes
# of received data in memory; past it they stop reading and the senders wait (TCP
# backpressure), nothing fails. A data set beyond spool_threshold_bytes is received into an
# unnamed 0600 file under the data directory's tmp/ (plaintext, like the journal).
max_instance_bytes = 2147483648
max_buffered_bytes = 536870912
spool_threshold_bytes = 67108864
# A connection has artim_timeout seconds to send its association request; at most
# max_pending_connections may be waiting to (the oldest is dropped for a new one). Only
# negotiated associations count against max_associations, so idle connections lock no one out.
artim_timeout = 10.0
max_pending_connections = 32
# "lean": dicomvault's own asyncio listener (C-ECHO, C-STORE, Storage Commitment, C-FIND,
# C-GET, C-MOVE; about twice as fast as pynetdicom's server on one association);
# "pynetdicom": the library's (storage and commitment only).
engine = "lean"
# C-FIND: match person names case-insensitively ("smith*" finds "SMITH^JOHN").
case_insensitive_names = false
# C-MOVE destinations are the [peers.NAME] tables below (ae_title, host, port).
# DIMSE over TLS (BCP 195: TLS 1.2/1.3, AES-GCM suites) on a second port; 0 = off. port = 0
# then means TLS only. PEM certificate (chain) and key; with tls_ca_file, every client must
# show a certificate from that CA (its subject is logged with the association).
tls_port = 0
tls_cert_file = ""
tls_key_file = ""
tls_ca_file = ""

[hl7]
# HL7 v2 ADT from the hospital's interface engine over MLLP: A08 updates a patient's name, birth
# date and sex, A40 merges two patients (the prior one's studies move to the survivor), A47
# changes an identifier; other events are acknowledged and ignored. 0 = off. Closed by default:
# only these sending facilities (MSH-4, e.g. "HOSP") or "APPLICATION@FACILITY" (MSH-3@MSH-4)
# may send; with a port and an empty list `serve` refuses to start. Stored images never change
# (see --coerce-demographics and [peers.NAME] coerce_demographics).
port = 0
bind = "0.0.0.0"
allowed_facilities = []
# MLLP over TLS (BCP 195, as [dicom]); with tls_ca_file the sender must show a certificate from it.
tls_cert_file = ""
tls_key_file = ""
tls_ca_file = ""
# A larger message is refused (AR) and its connection closed; an idle connection is closed.
max_message_bytes = 1048576
idle_timeout = 300

[policy]
# An instance is safe (and storage commitment reports success) once this many verified
# copies exist, at least offsite_copies of them on sites marked offsite.
copies = 2
offsite_copies = 1
# Recovery point objective: a copy owed to a site for longer than this makes `dicomvault
# status` say AT RISK (exit 1). No way to meet the policy (too few sites, none off-site)
# says UNPROTECTED (exit 2); PROTECTED exits 0. /readyz answers 200 only when protected.
rpo = "15m"

# Replica sites receive every object as ciphertext, through a transactional outbox.
# Add them with `dicomvault sites add NAME URL` or by hand, for example:
#
# [sites.nas]
# url = "file:///mnt/nas/dicomvault"
# offsite = false
#
# [sites.mirror]                 # a PACS that gets every image DECRYPTED over C-STORE
# url = "dicom://MIRROR@10.0.0.30:2762"
# tls = true                     # + tls_ca_file, tls_cert_file, tls_key_file as for [peers.NAME]
#
# [sites.offsite]
# url = "s3://hospital-dr/dicomvault"
# endpoint_url = "https://s3.eu-central-1.amazonaws.com"
# region = "eu-central-1"
# object_lock_days = 3650        # when the bucket has Object Lock
# rate = "unlimited"             # outside the windows below
# schedule = ["Mon-Fri 07:00-19:00 20MB/s"]
# workers = 4
# max_attempts = 8               # then the copy is dead-lettered and alerted

[commitment]
# DICOM Storage Commitment (push model): an instance is reported committed once the [policy]
# above holds for it. Instances still short of the policy after timeout_seconds are reported
# as failed (with a reason). Pending requests are re-evaluated as soon as a copy is verified
# or an instance stored, and every poll_seconds besides (for changes made by another process,
# such as an `import`); check_interval is how often undelivered reports are retried.
timeout_seconds = 3600
check_interval = 1.0
poll_seconds = 10.0

# Known DICOM nodes. dicomvault calls them (storage commitment reports, C-MOVE destinations,
# restores) and trusts them, when they call, with what `permissions` lists: "store", "find",
# "get", "move" (as requester), "commit", "reject" (IOCM rejection notes, see [iocm]) (default
# ["store", "commit"]). A peer's AE title is
# accepted only from the addresses `host` resolves to or an `accept_from` network
# (check_host = false turns that off), and, when tls_subject is set, only over TLS with a
# client certificate of that subject. Anything else is treated as an unknown caller. For example:
#
# [peers.pacs]
# ae_title = "PACS"
# host = "10.0.0.12"
# port = 104
# permissions = ["store", "commit", "find", "move"]
# accept_from = ["10.0.0.0/28"]        # the PACS's other addresses, if it calls from them
# tls_subject = "CN=pacs.hospital.example,O=Hospital"
#
# A viewer that only queries and retrieves (C-FIND, C-GET) may leave out host and port when
# accept_from or tls_subject says where it calls from; nothing is ever sent to it:
#
# [peers.viewer]
# ae_title = "VIEWER1"
# permissions = ["find", "get"]
# accept_from = ["10.0.0.21"]
# tls = false              # true: every association to it over TLS (restore, export, C-MOVE,
#                          # reports, reconcile); its certificate must name host and chain to
# tls_ca_file = ""         # this CA (default [dicom] tls_ca_file, else the system store);
# tls_cert_file = ""       # our client certificate and key (default [dicom]'s)
# tls_key_file = ""
# coerce_demographics = false  # true: C-MOVE to it, C-GET by it, restores and exports to it
#                              # carry the current demographics (HL7 ADT), not the stored ones

[reconcile]
# Scheduled reconciliation inside `dicomvault serve`: every `every` ("24h", "6h", "30m") the
# last window_days days of studies are compared with the PACS `peer` (a [peers.NAME] name or
# its AE title; "" = off) and the result shows in `dicomvault status` (an alert when the vault
# lacks something). backfill = true also asks the PACS to C-MOVE what is missing to this
# vault's AE title (the PACS must know this vault as a DICOM node). By hand:
# `dicomvault reconcile --pacs NAME --since YYYYMMDD [--backfill]`.
peer = ""
every = "24h"
window_days = 7
backfill = false

[scrub]
# Backups fail silently: `dicomvault serve` reads back every copy on every site (primary and
# replicas, not a dicom:// PACS) at least once per `period`, at most at `rate` (original data),
# checking authentication and the SHA-256 of the original; a missing or damaged copy is
# rewritten from a healthy one, audited and alerted. On demand: `dicomvault verify`.
enabled = true
period = "30d"
rate = "50MB/s"
check_every = "10m"

[drill]
# Restore drills, the test DR guides ask for ("recover a study from a certain date"):
# `dicomvault serve` restores, every `every`, the newest study and `random` random ones from
# each site on its own (primary and replicas, not a dicom:// PACS) into a scratch folder and
# checks them byte for byte; `status` shows the last successful drill per site and alerts
# when one failed. By hand, also for a date or into a test PACS: `dicomvault drill`.
enabled = true
every = "7d"
random = 3

[snapshots]
# The catalog is an index, never the only copy: `dicomvault serve` writes an encrypted
# snapshot of it to every site that can hold one (file and S3 sites) every `every`, and
# keeps the newest `keep` per site. With any one site and the offline recovery key,
# `dicomvault rebuild-index --from SITE --recovery-key FILE` rebuilds the whole catalog from
# the newest snapshot plus the objects written after it. By hand: `dicomvault snapshot`.
enabled = true
every = "6h"
keep = 14

[retention]
# How long studies are kept. Each study gets a keep-until date (`dicomvault retention plan`
# shows what expires when; it deletes nothing): the first [[retention.rules]] entry whose
# every match key fits decides, else `default`. Periods: "10y", "18mo", "30d", or "forever".
# `keep` counts from the Study Date (from arrival when there is none); keep_after_age keeps
# until that birthday plus `plus`; with both, the later date wins. No (valid) birth date: an
# age_below rule does not match, and keep_after_age keeps forever. Legal holds (`dicomvault
# hold add`) override every rule. `dicomvault retention run` (and `serve`, every `schedule`)
# deletes what expired, and IOCM-rejected instances past [iocm] delete_after, ONLY with
# enabled = true: nothing is deleted unless configured. Each deletion leaves a record
# (`dicomvault deletions`); a held study is never deleted.
enabled = false
schedule = "24h"
default = "forever"
#
# [[retention.rules]]              # a minor's study: until the 18th birthday + 7 years
# name = "minors"                  # (or 10 years from the study, if later)
# age_below = 18                   # age at the Study Date, in whole years
# keep = "10y"
# keep_after_age = { age = 18, plus = "7y" }
#
# [[retention.rules]]
# name = "mammography"             # match keys: modality, sop_class ("*" ends a prefix),
# sop_class = ["1.2.840.10008.5.1.4.1.1.1.2*"]   # calling_ae (the AE title that sent it), age_below
# keep = "10y"

[audit]
# Every audit event also goes to the hospital's audit record repository (ATNA) as a DICOM
# Audit Message (PS3.15 A.5) in RFC 5424 syslog: "tls://host:6514" (RFC 5425, TLS 1.2+, the
# server's certificate checked against syslog_ca_file, or the system's CAs when empty) or
# "udp://host:514" (RFC 5426: lossy, for a collector on the same network). "" = off.
# `dicomvault serve` sends them in order and keeps its place in the catalog: while the
# repository is down nothing is lost, and it catches up (backlog in `dicomvault status`).
syslog = ""
syslog_ca_file = ""
# A client certificate and key (PEM) when the repository asks for one (mutual TLS).
syslog_cert_file = ""
syslog_key_file = ""
# How this archive names itself: syslog APP-NAME and HOSTNAME, and the AuditSourceID
# (empty hostname/source_id: this host's fully qualified name).
app_name = "dicomvault"
hostname = ""
source_id = ""

[alerts]
# `dicomvault serve` looks at the archive every check_every (what `dicomvault status` lists, and
# the protection reasons) and tells people: each alert once when raised, a reminder every
# remind_every until someone acknowledges it (`dicomvault alerts ack ID`, or the API), and a
# notice when it clears. `dicomvault alerts test` sends a test alert to every channel below;
# `dicomvault alerts list` shows the open ones. A failing channel is retried and shows in status.
enabled = true
check_every = "30s"
remind_every = "4h"
# Webhook: each notice as JSON in an HTTP POST (retried), e.g. to a chat or paging gateway.
webhook_url = ""
webhook_token = ""         # sent as "Authorization: Bearer <token>" (or DICOMVAULT_ALERTS_WEBHOOK_TOKEN)
webhook_ca_file = ""       # https: the CA that signed the receiver (empty: the system's)
webhook_verify = true
# E-mail over SMTP with STARTTLS (smtp_starttls = false only for a relay on this host).
smtp_host = ""
smtp_port = 587
smtp_starttls = true
smtp_user = ""             # with smtp_password: log in after STARTTLS
smtp_password = ""
smtp_ca_file = ""          # the CA that signed the SMTP server (empty: the system's)
mail_from = ""
mail_to = []               # ["pacs-admin@hospital.example", "it-oncall@hospital.example"]
# Syslog (RFC 5424): "udp://host:514", "tcp://host:514" or "tls://host:6514".
syslog = ""
syslog_ca_file = ""
syslog_cert_file = ""      # a client certificate and key (PEM), when the server asks for one
syslog_key_file = ""

[iocm]
# IHE IOCM rejection notes: a Key Object Selection titled "Rejected for Quality Reasons" (DCM
# 113001), "... Patient Safety Reasons" (113037), "Incorrect Modality Worklist Entry" (113038)
# or "Data Retention Policy Expired" (113039), sent by a [peers.NAME] with "reject" in its
# permissions, hides the instances it references at once (queries, retrieval, restore,
# export, reconcile); they become due for deletion `delete_after` later, and are deleted by
# `retention run` / serve's retention schedule when [retention] enabled = true. The note
# itself is archived as evidence. From anyone else such a note is refused (0124H).
delete_after = "30d"

[http]
# Health (/healthz), Prometheus metrics (/metrics) and the API.
port = 8080
bind = "0.0.0.0"
enabled = true
# HTTPS: PEM certificate (chain) and private key; both empty = plain HTTP. Set them before
# enabling [replica_store] on anything but loopback: replica tokens are bearer secrets.
tls_cert_file = ""
tls_key_file = ""
# Who may call the operations API (/api/status, /api/restores, /api/drills, /api/holds) and DICOMweb:
# "name:token:role,role" lines, mode 0600, sent as "Authorization: Bearer <token>". Roles:
#   read      status, job reports, drills, QIDO-RS search, WADO-RS retrieve
#   store     STOW-RS (a modality or PACS sending images; it cannot read)
#   operator  start/stop restores, drills, holds (implies read)
#   admin     keys, sites, deletion (implies every role)
# init writes one token, "admin", with role admin. /healthz and /metrics need no token.
api_tokens_file = "keys/api-tokens"
# Lines without roles (written before roles existed) read; these names also act (operator).
api_operators = ["admin"]
# Seconds a client may take to send its request headers, or stall inside its body, before
# it is answered 408 and dropped (a slow client cannot hold the server).
request_timeout = 30
# Largest /api request body; a larger declared Content-Length is refused at once (413).
max_body_bytes = 1048576

[dicomweb]
# DICOMweb for viewers (QIDO-RS search, WADO-RS retrieve, STOW-RS store) under /dicomweb on the
# [http] port. It serves patient data: enable it behind HTTPS ([http] tls_cert_file). Every
# request needs a bearer token from [http] api_tokens_file (role read for QIDO/WADO, store
# for STOW); the token's name is recorded in the audit log with every read and query.
enabled = false
# An older DICOMweb-only tokens file: when set it is used instead of [http] api_tokens_file,
# and its "name:token" lines without roles read and store. Empty = the API tokens file.
tokens_file = ""
# Roles granted to requests without a token, e.g. ["read"] for a viewer on a trusted
# network that cannot send one. Empty = every request needs a token.
anonymous_roles = []
# STOW-RS: largest request body accepted (bytes); parts are stored one at a time.
max_request_bytes = 2147483648
# QIDO-RS: most results per response; more are announced in a Warning header (use offset).
query_limit = 1000
# Public URL of this service, used in Retrieve URLs and BulkDataURIs; set it behind a reverse
# proxy (e.g. "https://pacs-dr.example.org/dicomweb"). Empty = from each request's Host header.
base_url = ""

# This vault as another vault's off-site copy (its sites.NAME url = "vault://this-host:8080").
# It stores their sealed objects as-is (ciphertext: it never has their keys), each sending
# vault under <data_dir>/<root>/<token name>/, write-once. Create a token for each sender
# with `dicomvault replica-token add NAME` (printed once; give it to the sender's admin).
#
# [replica_store]
# enabled = true
# tokens_file = "keys/replica-tokens"   # name:token lines, mode 0600
# root = "replicas"
# allow_delete = false                  # true lets senders delete (retention); keep false
"""
