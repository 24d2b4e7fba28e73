"""Bearer tokens from a ``name:token`` file: who may use the replica store and DICOMweb.

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
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class TokenFile:
    """``name:token`` lines, re-read whenever the file changes (adding a sender needs no restart).

    Only SHA-256 digests of the tokens are kept in memory and compared, each with
    ``hmac.compare_digest`` and without stopping at a match, so timing reveals neither a token
    nor which names exist.
    """

    def __init__(self, path: Path, label: str, valid_name: Callable[[str], bool] = bool,
                 missing_hint: str = "", name_rule: str = "a name") -> None:
        self.path = path
        self.label = label  # who refuses requests when the file is wrong ("replica store", "DICOMweb")
        self.valid_name = valid_name
        self.missing_hint = missing_hint
        self.name_rule = name_rule
        self._stamp: tuple[int, int, int] | None = None
        self._entries: list[tuple[str, bytes]] = []
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
        entries: list[tuple[str, bytes]] = []
        seen: set[str] = set()
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, token = line.partition(":")
            name, token = name.strip(), token.strip()
            if not sep or not self.valid_name(name) or len(token) < 16 or name in seen:
                log.error("%s tokens file %s line %d ignored: expected a unique name:token with %s and a token "
                          "of 16+ characters", self.label, self.path, number, self.name_rule)
                continue
            seen.add(name)
            entries.append((name, hashlib.sha256(token.encode()).digest()))
        self._set(entries, None, stamp)
        log.info("%s: %d token(s) loaded from %s", self.label, len(entries), self.path)

    def _set(self, entries: list[tuple[str, bytes]], problem: str | None, stamp: tuple[int, int, int] | None) -> None:
        if problem and problem != self.problem:
            log.error("%s refuses every request: %s", self.label, problem)
        self._entries, self.problem, self._stamp = entries, problem, stamp

    def identify(self, token: str) -> str | None:
        """The name ``token`` belongs to, or None."""
        with self._lock:
            self._refresh()
            entries = self._entries
        given = hashlib.sha256(token.encode()).digest()
        found = None
        for name, digest in entries:
            if hmac.compare_digest(given, digest):
                found = name
        return found


class AuditThrottle:
    """At most one audit row per key per interval.

    A client retrying with a bad token, or a dashboard polling the API every few seconds,
    must not turn the hash-chained audit log into a flood; who did what from where still
    shows, at one-minute resolution."""

    def __init__(self, interval: float = 60.0, capacity: int = 10_000) -> None:
        self.interval = interval
        self.capacity = capacity
        self._last: dict[object, float] = {}
        self._lock = threading.Lock()

    def due(self, key: object) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, now - self.interval) < self.interval:
                return False
            if len(self._last) >= self.capacity:
                self._last.clear()
            self._last[key] = now
            return True


def write_new_tokens_file(path: Path, name: str) -> str | None:
    """Create ``path`` (mode 0600 from the start) holding one fresh ``name:token`` line and
    return the token; None when the file exists already (tokens are never overwritten)."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"# name:token lines for dicomvault's operations API (/api); keep this file mode 0600\n"
                     f"{name}:{token}\n")
        handle.flush()
        os.fsync(handle.fileno())
    return token
