"""Bearer tokens and their roles: who may use the operations API, DICOMweb and the replica store.

A tokens file holds ``name:token`` or ``name:token:role,role`` lines. The roles are

- ``read``: status, job reports, drills, QIDO-RS and WADO-RS;
- ``store``: STOW-RS (a modality or a PACS sending, nothing more);
- ``operator``: what acts on the archive's jobs (start or stop restores, drills, holds); it
  implies ``read``, since an operator follows the jobs it starts;
- ``admin``: keys, sites and deletion; it implies every other role.

A line without roles means what it meant before roles existed, which the caller decides
(``TokenFile(default_roles=...)``): in ``[http] api_tokens_file`` read, plus operator for a
name in ``[http] api_operators``; in a ``[dicomweb] tokens_file`` read and store. The replica
store's file has no roles at all (one token, one sending vault).

The file is re-read whenever it changes (adding a sender or a viewer needs no restart) and
refused as a whole while other users can read it. Only SHA-256 digests are kept and every
entry is compared with ``hmac.compare_digest``, so timing reveals neither a token nor
which names exist.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

READ, STORE, OPERATOR, ADMIN = "read", "store", "operator", "admin"
ROLES = (READ, STORE, OPERATOR, ADMIN)
_IMPLIES = {READ: {READ}, STORE: {STORE}, OPERATOR: {OPERATOR, READ}, ADMIN: set(ROLES)}
_ROLE_LIST = re.compile(r"\s*[a-z]+(\s*,\s*[a-z]+)*\s*")


def expand_roles(roles: Iterable[str]) -> frozenset[str]:
    """Every role ``roles`` grant (admin grants all, operator grants read)."""
    granted: set[str] = set()
    for role in roles:
        granted |= _IMPLIES[role]
    return frozenset(granted)


def parse_roles(text: str) -> tuple[str, ...]:
    """``"read, store"`` -> ("read", "store"); ValueError naming an unknown role."""
    roles = tuple(part.strip() for part in text.split(","))
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise ValueError(f"unknown role(s) {', '.join(unknown)} (roles: {', '.join(ROLES)})")
    return roles


def split_line(line: str, with_roles: bool) -> tuple[str, str, tuple[str, ...] | None]:
    """(name, token, roles or None) of one tokens file line; ValueError says what is wrong.

    The role list is the last ``:`` field when it reads as one (lower-case words separated by
    commas), so an old ``name:token`` line, whose token may itself hold a ``:``, keeps parsing.
    """
    name, sep, rest = line.partition(":")
    if not sep:
        raise ValueError("no ':' between name and token")
    token, roles = rest, None
    if with_roles and ":" in rest:
        head, _, tail = rest.rpartition(":")
        if not tail.strip():
            raise ValueError("an empty role list after the last ':'")
        if _ROLE_LIST.fullmatch(tail):
            token, roles = head, parse_roles(tail)
    return name.strip(), token.strip(), roles


@dataclass(frozen=True)
class Identity:
    """Who showed a token: its name and every role it grants (implied ones included)."""

    name: str
    roles: frozenset[str]

    def may(self, role: str) -> bool:
        return role in self.roles

    def describe(self) -> str:
        return ", ".join(role for role in ROLES if role in self.roles) or "none"


class TokenFile:
    """Token lines, re-read whenever the file changes (adding a sender needs no restart).

    ``default_roles`` turns on the role field and gives the roles of a line without one (from
    its name); None reads plain ``name:token`` lines (the replica store). Only SHA-256 digests
    of the tokens are kept in memory and compared, each with ``hmac.compare_digest`` and
    without stopping at a match, so timing reveals neither a token nor which names exist.
    """

    def __init__(self, path: Path, label: str, valid_name: Callable[[str], bool] = bool,
                 missing_hint: str = "", name_rule: str = "a name",
                 default_roles: Callable[[str], Iterable[str]] | None = None) -> None:
        self.path = path
        self.label = label  # who refuses requests when the file is wrong ("replica store", "DICOMweb")
        self.valid_name = valid_name
        self.missing_hint = missing_hint
        self.name_rule = name_rule
        self.default_roles = default_roles
        self._stamp: tuple[int, int, int] | None = None
        self._entries: list[tuple[Identity, bytes]] = []
        self.problem: str | None = None
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._set([], f"tokens file {self.path} does not exist" + (f"; {self.missing_hint}" if self.missing_hint else ""),
                      None)
            return
        except OSError as exc:
            self._set([], f"cannot read tokens file {self.path}: {exc.strerror}", None)
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        if st.st_mode & 0o077:
            self._set([], f"tokens file {self.path} is readable by other users (mode {st.st_mode & 0o777:o}); "
                          "run chmod 600 on it", stamp)
            return
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            self._set([], f"cannot read tokens file {self.path}: {exc}", None)
            return
        entries: list[tuple[Identity, bytes]] = []
        seen: set[str] = set()
        shape = "name:token[:role,role]" if self.default_roles is not None else "name:token"
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                name, token, roles = split_line(line, self.default_roles is not None)
            except ValueError as exc:
                log.error("%s tokens file %s line %d ignored: %s", self.label, self.path, number, exc)
                continue
            if not self.valid_name(name) or len(token) < 16 or name in seen:
                log.error("%s tokens file %s line %d ignored: expected a unique %s with %s and a token "
                          "of 16+ characters", self.label, self.path, number, shape, self.name_rule)
                continue
            seen.add(name)
            if roles is None and self.default_roles is not None:
                roles = tuple(self.default_roles(name))
            entries.append((Identity(name, expand_roles(roles or ())), hashlib.sha256(token.encode()).digest()))
        self._set(entries, None, stamp)
        log.info("%s: %d token(s) loaded from %s", self.label, len(entries), self.path)

    def _set(self, entries: list[tuple[Identity, bytes]], problem: str | None, stamp: tuple[int, int, int] | None) -> None:
        if problem and problem != self.problem:
            log.error("%s refuses every request: %s", self.label, problem)
        self._entries, self.problem, self._stamp = entries, problem, stamp

    def lookup(self, token: str) -> Identity | None:
        """Who ``token`` belongs to (name and roles), or None."""
        return self.by_digest(token_digest(token))

    def by_digest(self, given: bytes) -> Identity | None:
        """Who the token with SHA-256 ``given`` belongs to now (a dashboard session re-checks its
        token on every request, so removing the line ends the session), or None."""
        with self._lock:
            self._refresh()
            entries = self._entries
        found = None
        for identity, digest in entries:
            if hmac.compare_digest(given, digest):
                found = identity
        return found

    def identify(self, token: str) -> str | None:
        """The name ``token`` belongs to, or None."""
        identity = self.lookup(token)
        return identity.name if identity is not None else None

    def bearer(self, authorization: str) -> Identity | None:
        """Who an ``Authorization: Bearer <token>`` header value names, or None."""
        scheme, _, token = authorization.partition(" ")
        return self.lookup(token.strip()) if scheme.lower() == "bearer" and token.strip() else None


def write_new_tokens_file(path: Path, name: str, roles: tuple[str, ...] = (ADMIN,)) -> str | None:
    """Create ``path`` (mode 0600 from the start) holding one fresh ``name:token:roles`` line and
    return the token; None when the file exists already (tokens are never overwritten)."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"# name:token:roles lines for dicomvault's operations API (/api) and DICOMweb; keep this file "
                     f"mode 0600\n# roles: read, store (STOW-RS), operator (restores, drills, holds), admin (all)\n"
                     f"{name}:{token}:{','.join(roles)}\n")
        handle.flush()
        os.fsync(handle.fileno())
    return token


def token_with_role(path: Path, role: str, default_roles: Callable[[str], Iterable[str]]) -> str | None:
    """The token of the file's first line that grants ``role`` (for the CLI on the archive's host)."""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            name, token, roles = split_line(line, with_roles=True)
        except ValueError:
            continue
        if role in expand_roles(roles if roles is not None else default_roles(name)):
            return token
    return None


def token_digest(token: str) -> bytes:
    """What a session keeps of the token it was opened with (never the token itself)."""
    return hashlib.sha256(token.encode()).digest()
