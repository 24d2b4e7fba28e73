"""A site on another dicomvault (``vault://host:port``): the receiving vault keeps our sealed
objects as-is, over HTTPS with a bearer token (see ``serve/replica_api.py`` for its side).

Why it works the way it does:

* **Ciphertext only.** The receiver stores the sealed bytes it is given under their keyed
  names; it never has, and never needs, this vault's keys (promise 5). The token only says
  which sending vault is talking, so each sender gets its own write-once directory there.
* **The receiver checks what arrived.** Every PUT carries the SHA-256 of the body in
  ``X-Content-SHA256``; the receiver recomputes it before storing anything and refuses a
  mismatch (400), so a corrupted transfer never becomes a "copy". ``checksum_sha256`` asks the
  receiver (HEAD) for the SHA-256 of the bytes it holds, computed from its disk, so the
  replication worker verifies a copy without downloading it.
* **Durable on return.** The receiver answers a PUT only after its fsyncs (the same file-site
  write protocol as our primary), so the crash-recovery journal methods here stay no-ops.
* **Write once.** The PUT is put-if-absent: 201 written now, 200 already there with the same
  bytes, 409 a different object holds the name (never overwritten). DELETE is refused by the
  receiver unless its operator allowed it.
* **Fail fast, clearly.** Short timeouts and one transport retry (a dropped keep-alive
  connection): the outbox does the real retrying with backoff and a circuit breaker. Errors
  start with what to fix: "cannot reach vault https://...: connection refused", "token
  rejected by vault ...", "vault ... is full: ...", "vault ... cannot store objects: the
  storage is read-only".
"""

from __future__ import annotations

import builtins
import hashlib
import ssl
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn
from urllib.parse import urlparse

import httpx

from .base import (KEY_NAME, SNAPSHOT_NAME, Capabilities, DeletionRefused, ObjectExists, Site, SiteError, valid_key_name,
                   valid_snapshot_name)
from .network import connection_reason, seconds_option

OPTIONS = frozenset({"token", "tls", "ca_file", "timeout", "connect_timeout"})

API = "/replica/v1"
CONNECT_TIMEOUT = 5.0
TIMEOUT = 60.0
PAGE = 1000
# The receiver marks a 404 that means "no object of that name" (not "no replica store here").
ABSENT_HEADER = "x-dicomvault-object"
_HEX = frozenset("0123456789abcdef")


def _valid_name(name: str) -> str:
    """Object names are hex MACs; anything else is a caller bug (and must not reach a URL)."""
    if len(name) < 8 or not all(c in _HEX for c in name):
        raise SiteError(f"invalid object name {name!r}")
    return name


def _bool_option(options: Mapping[str, object], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return value.strip().lower() in ("true", "yes", "1", "on")
    raise SiteError(f"vault site option {key} must be true or false, got {value!r}")


def _tls_reason(err: BaseException) -> str | None:
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({err.verify_message}); set the site's ca_file to the receiver's CA"
    if isinstance(err, ssl.SSLError):
        return f"TLS failed ({err.reason or err}); is the receiver serving HTTPS (its [http] tls_cert_file)?"
    return None


def _connection_reason(exc: BaseException) -> str:
    """Why a connection failed, TLS problems named first."""
    return connection_reason(exc, special=_tls_reason, text_reasons=(
        ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted; set the site's ca_file"),))


def _error_text(response: httpx.Response) -> str:
    """The receiver's JSON ``{"error": ...}``, else a short slice of whatever it said."""
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])
    except (ValueError, UnicodeDecodeError):
        pass
    text = response.text.strip()[:200] if response.content else ""
    return text or response.reason_phrase or f"HTTP {response.status_code}"


class VaultSite(Site):
    """Objects kept by another dicomvault's replica store. Thread-safe (one pooled httpx client)."""

    capabilities = Capabilities(snapshots=True, checksums=True, keys=True)

    def __init__(self, host: str, port: int, token: str, *, tls: bool = True, ca_file: str | None = None,
                 timeout: float = TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT, netloc: str | None = None) -> None:
        if not token or any(c.isspace() for c in token):
            raise SiteError("vault site needs option token = \"...\" (from `dicomvault replica-token add NAME` "
                            "on the receiving vault), without spaces")
        netloc = netloc or f"{host}:{port}"
        self.url = f"vault://{netloc}"
        self.endpoint = f"{'https' if tls else 'http'}://{netloc}"
        self.timeout = timeout
        verify: ssl.SSLContext | bool = False
        if tls:
            try:
                verify = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
            except (OSError, ssl.SSLError) as exc:
                raise SiteError(f"vault site option ca_file {ca_file!r} cannot be used as a CA bundle: {exc}") from exc
        elif ca_file:
            raise SiteError("vault site option ca_file only makes sense with tls = true")
        self._client = httpx.Client(
            base_url=self.endpoint + API,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "dicomvault-replica"},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            # One pool shared by the site's worker threads; retries=1 re-dials a connection that
            # dropped while idle (connect errors only: a PUT is never blindly re-sent mid-body).
            transport=httpx.HTTPTransport(verify=verify, retries=1,
                                          limits=httpx.Limits(max_connections=32, max_keepalive_connections=16)),
            follow_redirects=False,
        )

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, object] | None = None) -> "VaultSite":
        """``vault://host:port`` plus the site table's options (token, tls, ca_file, timeout)."""
        parsed = urlparse(url)
        if parsed.scheme != "vault":
            raise SiteError(f"not a vault site URL: {url!r} (expected vault://host:port)")
        if parsed.username or parsed.password or parsed.query or parsed.fragment or parsed.path not in ("", "/"):
            raise SiteError(f"vault site URL {url!r}: use vault://host:port; put the token and settings in the "
                            "site's options, not the URL")
        try:
            host, port = parsed.hostname, parsed.port
        except ValueError:
            raise SiteError(f"vault site URL {url!r} has an invalid port") from None
        if not host or port is None:
            raise SiteError(f"vault site URL {url!r} needs a host and a port (vault://host:port)")
        opts = dict(options or {})
        unknown = sorted(set(opts) - OPTIONS)
        if unknown:
            raise SiteError(f"unknown vault site option(s) {', '.join(unknown)}: supported are {', '.join(sorted(OPTIONS))}")
        token = opts.get("token")
        if not isinstance(token, str):
            raise SiteError("vault site needs option token = \"...\" (from `dicomvault replica-token add NAME` "
                            "on the receiving vault)")
        ca_file = opts.get("ca_file")
        if ca_file is not None and not isinstance(ca_file, str):
            raise SiteError(f"vault site option ca_file must be a path, got {ca_file!r}")
        return cls(host, port, token.strip(), tls=_bool_option(opts, "tls", True), ca_file=ca_file or None,
                   timeout=seconds_option(opts, "timeout", TIMEOUT, "vault"),
                   connect_timeout=seconds_option(opts, "connect_timeout", CONNECT_TIMEOUT, "vault"),
                   netloc=parsed.netloc)

    # -- transport and errors --------------------------------------------------------------------

    def _request(self, method: str, path: str, action: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.ConnectTimeout as exc:
            raise SiteError(f"cannot reach vault {self.endpoint}: connection timed out ({action})") from exc
        except httpx.TimeoutException as exc:
            raise SiteError(f"vault {self.endpoint} did not answer within {self.timeout:g} s ({action})") from exc
        except httpx.ConnectError as exc:
            raise SiteError(f"cannot reach vault {self.endpoint}: {_connection_reason(exc)} ({action})") from exc
        except httpx.TransportError as exc:
            raise SiteError(f"cannot reach vault {self.endpoint}: the connection broke mid-request "
                            f"({_connection_reason(exc)}) ({action})") from exc

    def _fail(self, response: httpx.Response, action: str) -> NoReturn:
        """Turn an unexpected answer into a SiteError whose first words say what to fix."""
        status, error = response.status_code, _error_text(response)
        where = f"({action})"
        if status in (401, 403):
            raise SiteError(f"token rejected by vault {self.endpoint}: {error}; check the site's token option "
                            f"against `dicomvault replica-token list` there {where}")
        if status == 507:
            raise SiteError(f"vault {self.endpoint} is full: {error} {where}")
        if status == 503:
            raise SiteError(f"vault {self.endpoint} cannot store objects: {error} {where}")
        if status == 404 and response.headers.get("content-type", "").startswith("application/json"):
            raise SiteError(f"vault {self.endpoint} does not accept replicas: {error} {where}")
        if status == 404:
            raise SiteError(f"{self.endpoint} is not a dicomvault replica store (HTTP 404 on {API}) {where}")
        raise SiteError(f"vault {self.endpoint} refused the request: HTTP {status}: {error} {where}")

    # -- Site interface --------------------------------------------------------------------------

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """PUT with the body's SHA-256; True if stored now, False if already there (same bytes)."""
        _valid_name(name)
        digest = hashlib.sha256(data).hexdigest()
        response = self._request("PUT", f"/objects/{name}", f"PUT {name}", content=data,
                                 headers={"X-Content-SHA256": digest, "Content-Type": "application/octet-stream"})
        if response.status_code == 201:
            return True
        if response.status_code == 200:
            return False
        if response.status_code == 409:
            raise ObjectExists(f"vault {self.endpoint} already holds a different object named {name}; it is "
                            f"never overwritten: {_error_text(response)} (PUT {name})")
        if response.status_code == 400:
            raise SiteError(f"vault {self.endpoint} refused object {name}: {_error_text(response)} (PUT {name})")
        self._fail(response, f"PUT {name}")

    def get(self, name: str) -> bytes:
        _valid_name(name)
        response = self._request("GET", f"/objects/{name}", f"GET {name}")
        if response.status_code == 404 and response.headers.get(ABSENT_HEADER) == "absent":
            raise KeyError(name)
        if response.status_code != 200:
            self._fail(response, f"GET {name}")
        expected = response.headers.get("content-length")
        if expected is not None and int(expected) != len(response.content):
            raise SiteError(f"cannot read object {name} from {self.url}: got {len(response.content)} of {expected} bytes")
        return response.content

    def _head(self, name: str) -> httpx.Response | None:
        _valid_name(name)
        response = self._request("HEAD", f"/objects/{name}", f"HEAD {name}")
        if response.status_code == 404:
            # HEAD answers have no body: tell "no such object" from "no replica store" by a header.
            if response.headers.get(ABSENT_HEADER) == "absent":
                return None
            self._fail(response, f"HEAD {name}")
        if response.status_code != 200:
            self._fail(response, f"HEAD {name}")
        return response

    def stat(self, name: str) -> int | None:
        head = self._head(name)
        if head is None:
            return None
        return int(head.headers.get("x-object-size") or head.headers["content-length"])

    def checksum_sha256(self, name: str) -> str | None:
        """Hex SHA-256 of the bytes the receiver holds, computed there from its disk.

        Lets the replication worker verify a copy without downloading it. None when absent.
        """
        head = self._head(name)
        if head is None:
            return None
        value = head.headers.get("x-content-sha256", "").strip().lower()
        return value if len(value) == 64 and set(value) <= _HEX else None

    def list(self) -> Iterator[str]:
        """Every object name, in name order, fetched a page at a time."""
        after = ""
        while True:
            params = {"limit": str(PAGE), **({"after": after} if after else {})}
            response = self._request("GET", "/objects", "list objects", params=params)
            if response.status_code != 200:
                self._fail(response, "list objects")
            body = response.json()
            names = body.get("names", [])
            for name in names:
                if isinstance(name, str) and len(name) >= 8 and set(name) <= _HEX:
                    yield name
            after = body.get("next") or ""
            if not after or not names:
                return

    def delete(self, name: str) -> None:
        """Ask the receiver to remove an object; it refuses (405) unless its operator allowed it."""
        _valid_name(name)
        response = self._request("DELETE", f"/objects/{name}", f"DELETE {name}")
        if response.status_code in (200, 204, 404):
            return
        if response.status_code == 405:
            raise DeletionRefused(f"vault {self.endpoint} refuses deletion (write-once): {_error_text(response)}")
        self._fail(response, f"DELETE {name}")

    # -- catalog snapshots: ``/snapshots/<name>`` on the receiver, write-once like objects ------

    def put_snapshot(self, name: str, data: bytes) -> None:
        valid_snapshot_name(name)
        digest = hashlib.sha256(data).hexdigest()
        action = f"PUT snapshot {name}"
        response = self._request("PUT", f"/snapshots/{name}", action, content=data,
                                 headers={"X-Content-SHA256": digest, "Content-Type": "application/octet-stream"})
        if response.status_code not in (200, 201):
            self._fail(response, action)

    def get_snapshot(self, name: str) -> bytes:
        valid_snapshot_name(name)
        response = self._request("GET", f"/snapshots/{name}", f"GET snapshot {name}")
        if response.status_code == 404 and response.headers.get(ABSENT_HEADER) == "absent":
            raise KeyError(name)
        if response.status_code != 200:
            self._fail(response, f"GET snapshot {name}")
        return response.content

    def list_snapshots(self) -> "builtins.list[str]":
        response = self._request("GET", "/snapshots", "list snapshots")
        if response.status_code != 200:
            self._fail(response, "list snapshots")
        return sorted(n for n in response.json().get("names", []) if isinstance(n, str) and SNAPSHOT_NAME.match(n))

    def delete_snapshot(self, name: str) -> None:
        valid_snapshot_name(name)
        response = self._request("DELETE", f"/snapshots/{name}", f"DELETE snapshot {name}")
        if response.status_code in (200, 204, 404):
            return
        if response.status_code == 405:
            raise DeletionRefused(f"vault {self.endpoint} refuses deletion (write-once): {_error_text(response)}")
        self._fail(response, f"DELETE snapshot {name}")

    # -- key records: ``/keys/<key id>`` on the receiver, replaced and deleted on request -----

    def put_key(self, name: str, data: bytes) -> None:
        valid_key_name(name)
        action = f"PUT key record {name}"
        response = self._request("PUT", f"/keys/{name}", action, content=data,
                                 headers={"X-Content-SHA256": hashlib.sha256(data).hexdigest(),
                                          "Content-Type": "application/octet-stream"})
        if response.status_code not in (200, 201, 204):
            self._fail(response, action)

    def get_key(self, name: str) -> bytes:
        valid_key_name(name)
        response = self._request("GET", f"/keys/{name}", f"GET key record {name}")
        if response.status_code == 404 and response.headers.get(ABSENT_HEADER) == "absent":
            raise KeyError(name)
        if response.status_code != 200:
            self._fail(response, f"GET key record {name}")
        return response.content

    def list_keys(self) -> "builtins.list[str]":
        response = self._request("GET", "/keys", "list key records")
        if response.status_code != 200:
            self._fail(response, "list key records")
        return sorted(n for n in response.json().get("names", []) if isinstance(n, str) and KEY_NAME.match(n))

    def delete_key(self, name: str) -> None:
        valid_key_name(name)
        response = self._request("DELETE", f"/keys/{name}", f"DELETE key record {name}")
        if response.status_code not in (200, 204, 404):
            self._fail(response, f"DELETE key record {name}")

    def health(self) -> dict[str, object]:
        """Can the receiver take writes right now? Never raises: the dashboard shows ``error``."""
        info: dict[str, object] = {"url": self.url, "kind": "vault", "endpoint": self.endpoint, "ok": False,
                                   "error": None}
        try:
            response = self._request("GET", "/health", "health")
            if response.status_code != 200:
                self._fail(response, "health")
            body = response.json()
            for key in ("free_bytes", "total_bytes", "store", "allow_delete"):
                if key in body:
                    info[key] = body[key]
            info["ok"] = bool(body.get("ok"))
            if not info["ok"]:
                info["error"] = f"vault {self.endpoint} cannot store objects: {body.get('error') or 'unhealthy'}"
        except SiteError as exc:
            info["error"] = str(exc)
        except ValueError as exc:  # not JSON: something else answers on that port
            info["error"] = f"{self.endpoint} is not a dicomvault replica store: {exc}"
        return info

    def close(self) -> None:
        self._client.close()
