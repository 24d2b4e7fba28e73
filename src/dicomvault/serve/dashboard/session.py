"""Dashboard sessions: a signed cookie naming a server-side session opened with an API token.

The cookie holds only a random session id and its HMAC-SHA256 under a key kept in the keys
folder (``dashboard-session.key``, mode 0600, made on first use); it is HttpOnly, SameSite=Strict,
Secure when served over TLS, and ends after ``SESSION_SECONDS`` or at logout (the session is
forgotten server-side, so a copied cookie dies with it; a restart of ``serve`` ends every session).
A session keeps the SHA-256 of the token it was opened with and asks the tokens file on every
request, so removing or demoting the token's line takes effect at once. Each session has a CSRF
token that every POST form must carry; the login form carries one bound to a pre-login cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

COOKIE = "dicomvault_session"
LOGIN_COOKIE = "dicomvault_login"
SESSION_SECONDS = 8 * 3600
MAX_SESSIONS = 10_000


@dataclass
class Session:
    sid: str
    token_digest: bytes
    csrf: str
    expires_at: float


def load_key(path: Path) -> bytes:
    """The signing key at ``path``, created (32 random bytes, mode 0600) when missing."""
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return key


class Sessions:
    def __init__(self, key: bytes, lifetime: float = SESSION_SECONDS) -> None:
        self.key = key
        self.lifetime = lifetime
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def _sign(self, value: str) -> str:
        return hmac.new(self.key, value.encode(), hashlib.sha256).hexdigest()

    def open(self, token_digest: bytes) -> tuple[Session, str]:
        """A new session for the token with this digest, and the cookie value naming it."""
        now = time.time()
        session = Session(secrets.token_urlsafe(24), token_digest, secrets.token_urlsafe(24), now + self.lifetime)
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions = {sid: s for sid, s in self._sessions.items() if s.expires_at > now}
            self._sessions[session.sid] = session
        return session, f"{session.sid}.{self._sign(session.sid)}"

    def find(self, cookie: str) -> Session | None:
        """The live session a cookie names (signature checked first), or None."""
        sid, _, signature = cookie.partition(".")
        if not sid or not hmac.compare_digest(signature.encode(), self._sign(sid).encode()):
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None and session.expires_at <= time.time():
                del self._sessions[sid]
                session = None
        return session

    def close(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def login_nonce(self) -> tuple[str, str]:
        """(cookie value, form token) binding a login form to the browser that fetched it."""
        nonce = secrets.token_urlsafe(18)
        return nonce, self._sign("login:" + nonce)

    def login_form_ok(self, nonce: str, form_token: str) -> bool:
        return bool(nonce) and hmac.compare_digest(form_token.encode(), self._sign("login:" + nonce).encode())
