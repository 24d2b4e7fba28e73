"""Who may do what over DICOM: the access policy of the front door.

A DICOM association names its caller only by an AE title, which anyone can type. So the
archive reads patient data (C-FIND, C-GET, C-MOVE) only for callers declared as
``[peers.NAME]`` with that permission, and, unless told otherwise, only when they connect
from the address their ``host`` resolves to (or an ``accept_from`` network), and, when
``tls_subject`` is set, only over TLS with a client certificate of that subject. Everyone
else gets ``[dicom] anonymous`` permissions: by default ``store`` (a PACS must be able to
send on day one) and C-ECHO, which is always answered.

The decision is made here, once, for both listener engines; the listener answers a refusal
with the operation's status (``NOT_AUTHORIZED``) and an Error Comment, and audits it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from dicomvault.config import PERMISSION_NAMES as PERMISSIONS, PeerSettings

__all__ = ["PERMISSIONS", "NOT_AUTHORIZED", "AccessPolicy", "Decision"]
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5: Refused: Not Authorized
_RESOLVE_TTL = 60.0  # seconds a host name's addresses are trusted before resolving again

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Decision:
    allowed: bool
    peer: PeerSettings | None  # the peer the caller was identified as, if any
    reason: str  # why refused (empty when allowed), in words an administrator can act on


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        found = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped  # ::ffff:10.0.0.1 on a dual-stack socket is 10.0.0.1
    return found


def _normalise_subject(subject: str) -> str:
    """RFC 4514 subjects compared without case and spaces around separators."""
    parts = [part.strip() for part in subject.replace(";", ",").split(",") if part.strip()]
    return ",".join(sorted(p.split("=", 1)[0].strip().upper() + "=" + p.split("=", 1)[-1].strip().lower()
                           for p in parts))


class AccessPolicy:
    """Decides each DICOM request from the calling AE, its address and its TLS subject."""

    def __init__(self, peers: Iterable[PeerSettings], anonymous: Iterable[str]) -> None:
        self._peers = {peer.ae_title: peer for peer in peers}
        self.anonymous = frozenset(anonymous)
        self._resolved: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def _host_addresses(self, host: str) -> frozenset[str]:
        """The addresses ``host`` resolves to now (cached a minute: DNS may change)."""
        now = time.monotonic()
        with self._lock:
            cached = self._resolved.get(host)
        if cached and now - cached[0] < _RESOLVE_TTL:
            return cached[1]
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            found = frozenset(str(_address(str(info[4][0]))) for info in infos)
        except OSError:
            found = frozenset()
        with self._lock:
            self._resolved[host] = (now, found)
        return found

    def _address_mismatch(self, peer: PeerSettings, address: str) -> str:
        """Why ``address`` is not where ``peer`` may connect from ("" when it is)."""
        if not peer.check_host or not (peer.host or peer.accept_from):
            return ""  # nothing to check against: a peer without either is known by its certificate
        where = _address(address)
        if where is None:
            return f"its address {address!r} cannot be checked"
        for network in peer.accept_from:
            if where in ipaddress.ip_network(network, strict=False):
                return ""
        if peer.host and str(where) in self._host_addresses(peer.host):
            return ""
        allowed = ", ".join(([peer.host] if peer.host else []) + list(peer.accept_from)) or "nowhere"
        return f"it connected from {where}, not from {allowed}"

    def identify(self, calling_ae: str, address: str, tls_subject: str = "") -> tuple[PeerSettings | None, str]:
        """The peer this caller is, or (None, why not) when its AE title is a peer's but the
        address or certificate does not match (then it is treated as anonymous)."""
        peer = self._peers.get(calling_ae.strip())
        if peer is None:
            return None, ""
        mismatch = self._address_mismatch(peer, address)
        if not mismatch and peer.tls_subject:
            if not tls_subject:
                mismatch = "it did not present a TLS client certificate"
            elif _normalise_subject(tls_subject) != _normalise_subject(peer.tls_subject):
                mismatch = f"its TLS certificate subject is {tls_subject!r}"
        if mismatch:
            return None, f"AE {calling_ae.strip()} is [peers.{peer.name}] but {mismatch}"
        return peer, ""

    def check(self, permission: str, calling_ae: str, address: str, tls_subject: str = "") -> Decision:
        """May this caller do ``permission`` (one of ``PERMISSIONS``)?"""
        peer, mismatch = self.identify(calling_ae, address, tls_subject)
        granted = peer.permissions if peer is not None else self.anonymous
        if permission in granted:
            return Decision(True, peer, "")
        # The first 64 characters travel as the Error Comment (LO): the crux comes first.
        if peer is not None:
            reason = (f"{permission} refused: [peers.{peer.name}] lacks {permission!r}; add it to its permissions "
                      f"(it has: {', '.join(sorted(peer.permissions)) or 'none'})")
        elif mismatch:
            reason = f"{permission} refused: {mismatch}"
        else:
            reason = (f"{permission} refused: AE {calling_ae.strip()} is not a [peers] entry with {permission!r}; "
                      f"declare it as [peers.NAME] with permissions = [\"{permission}\"]")
        return Decision(False, None, reason)


def exposure(peers: Iterable[PeerSettings], anonymous: Iterable[str]) -> list[str]:
    """What in this access configuration a security officer should know about, in words:
    reading open to unknown callers, and readers believed by AE title from anywhere."""
    found = []
    open_reads = sorted(set(anonymous) & {"find", "get", "move"})
    if open_reads:
        found.append(f"[dicom] anonymous allows {', '.join(open_reads)}: any AE title can read patient data")
    for peer in peers:
        reads = sorted(peer.permissions & {"find", "get", "move"})
        if reads and not peer.check_host and not peer.tls_subject:
            found.append(f"[peers.{peer.name}] may {', '.join(reads)} and is believed by AE title from any "
                         "address (check_host = false, no tls_subject)")
    return found
