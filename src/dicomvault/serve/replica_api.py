"""This vault as another vault's replica site: the receiving end of ``vault://``.

A sending vault PUTs its sealed objects here over HTTP(S) with a bearer token; we keep them
exactly as sent. Why it is built this way:

* **Ciphertext only, no keys.** The objects are the sender's sealed envelopes under keyed
  names; this vault never has the sender's keys, and nothing here opens or indexes them
  (promise 5). Their only trace in our catalog is the audit chain.
* **One token, one sender, one directory.** ``[replica_store] tokens_file`` holds
  ``name:token`` lines (mode 0600). The token is compared in constant time against every
  entry; its name is the audit actor and picks ``<root>/<name>/``, a :class:`FileSite`, so the
  write protocol, fsyncs and write-once guarantees are the same as for our own primary disk.
  A wrong or missing token gets the same 401 either way: nothing says which tokens exist.
* **Acknowledged means durable.** A PUT is answered 201 only after the object's intent was
  fdatasync'ed, linked and its directories fsynced (``flush``) and the PUT audited. There is
  no catalog row to wait for, so the crash-recovery intent is released right away; intents
  left by a crash are swept when the store is first opened (a linked one is complete, an
  unlinked one was never acknowledged).
* **Check before storing.** The body's SHA-256 must match ``X-Content-SHA256`` or nothing is
  written (400). HEAD reports the SHA-256 of the stored file, computed from our disk, so the
  sender verifies its copy without downloading it.
* **Write once.** PUT is put-if-absent: 201 created, 200 already here with the same bytes,
  409 a different object holds that name. DELETE is refused (405) unless the operator set
  ``allow_delete = true`` (so a compromised sender cannot wipe its off-site copies).
* **Clear errors.** JSON ``{"error": "..."}`` bodies; a full disk is 507, a read-only or
  failing disk 503, both with the reason, so the sender's dashboard says what to fix.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import Catalog
from dicomvault.config import ReplicaStoreSettings
from dicomvault.sites.base import SiteError, valid_key_name, valid_snapshot_name
from dicomvault.sites.file import FileSite, fsync_dir

from dicomvault.serve.tokens import TokenFile

log = logging.getLogger(__name__)

PREFIX = "/replica/v1"
ABSENT_HEADER = "X-Dicomvault-Object"  # "absent" on a 404 that means "no such object"
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
MAX_KEY_RECORD = 64 * 1024  # a key record is a few hundred bytes
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX = frozenset("0123456789abcdef")
_DENIAL_AUDIT_INTERVAL = 60.0  # at most one audit row per client address per minute for bad tokens

_STORAGE_ERRORS: dict[int, tuple[int, str]] = {
    errno.ENOSPC: (507, "the receiving vault's storage is full"),
    errno.EDQUOT: (507, "the receiving vault's storage quota is exhausted"),
    errno.EROFS: (503, "the receiving vault's storage is read-only"),
    errno.EIO: (503, "the receiving vault's storage reports an I/O error"),
    errno.EACCES: (503, "the receiving vault has no permission to write its replica storage"),
}


def valid_store_name(name: str) -> bool:
    """Token names become directory names: keep them to a safe, lower-case alphabet."""
    return 0 < len(name) <= 64 and set(name) <= NAME_CHARS


def _valid_object_name(name: str) -> bool:
    """Same rule as the file site (hex MAC names), with a bound so a name cannot be abused."""
    return 8 <= len(name) <= 128 and set(name) <= _HEX


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _storage_failure(exc: BaseException) -> tuple[int, str]:
    """HTTP status and a reason the sender can show, from a FileSite/OS failure (no local paths)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__
    if isinstance(cause, OSError) and cause.errno in _STORAGE_ERRORS:
        return _STORAGE_ERRORS[cause.errno]
    detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else type(exc).__name__
    return 500, f"the receiving vault cannot store the object: {detail}"


def _side_failure(exc: BaseException, bad_name: str) -> JSONResponse:
    """A snapshot or key-record request the store could not serve: 400 for a bad name (the
    site's SiteError starts with ``bad_name``), else what the storage failure means."""
    if isinstance(exc, SiteError) and bad_name in str(exc):
        return _error(400, str(exc))
    status, reason = _storage_failure(exc)
    return _error(status, reason)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Store:
    """One sender's directory and the lock that orders its directory fsyncs."""

    name: str
    site: FileSite
    flush_lock: threading.Lock


class ReplicaStore:
    """The senders' stores under ``root`` plus token checking and auditing."""

    def __init__(self, settings: ReplicaStoreSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.tokens = TokenFile(
            settings.tokens_file, label="replica store", valid_name=valid_store_name,
            missing_hint="create one with `dicomvault replica-token add NAME`",
            name_rule="a name of a-z, 0-9, '-', '_'")
        self.root = settings.root
        self._stores: dict[str, _Store] = {}
        self._lock = threading.Lock()
        self._denials: dict[str, float] = {}

    def store(self, name: str) -> _Store:
        """The sender's FileSite, created (and swept of crash leftovers) on first use."""
        with self._lock:
            store = self._stores.get(name)
            if store is None:
                site = FileSite(self.root / name)
                self._sweep_intents(site)
                store = _Store(name, site, threading.Lock())
                self._stores[name] = store
            return store

    @staticmethod
    def _sweep_intents(site: FileSite) -> None:
        """Drop intents a crash left behind, before this process writes to the store.

        An intent whose object name is linked to it was complete (the link is made only after
        its fdatasync), and an intent never linked was never acknowledged: either way the intent
        file itself can go. There is no catalog to re-index, so FileSite.recover is not used.
        """
        try:
            entries = list(site.intents.iterdir())
        except OSError:
            return
        for entry in entries:
            try:
                entry.unlink()
            except OSError as exc:
                log.warning("replica store %s: cannot remove leftover intent %s: %s", site.root, entry.name, exc)

    def audit(self, actor: str, action: str, subject: str, outcome: str, detail: dict[str, Any]) -> None:
        with self.catalog.write() as conn:
            append(conn, AuditEvent(actor=actor, action=action, subject=subject, outcome=outcome, detail=detail))

    def audit_denial(self, client: str, path: str) -> None:
        """A rejected token is security-relevant, but a flood of them must not flood the chain."""
        now = time.monotonic()
        with self._lock:
            last = self._denials.get(client)
            if last is not None and now - last < _DENIAL_AUDIT_INTERVAL:
                return
            self._denials[client] = now
            if len(self._denials) > 10_000:
                self._denials.clear()
        try:
            self.audit("replica:unauthenticated", "replica-auth", client, "denied", {"path": path})
        except Exception as exc:  # noqa: BLE001 - never turn a refusal into a crash
            log.warning("cannot audit a rejected replica token from %s: %s", client, exc)

    # -- blocking work (run in the thread pool) ----------------------------------------------

    def put(self, sender: str, name: str, body: bytes, digest: str) -> tuple[int, dict[str, Any]]:
        """Store, make durable, audit; returns the HTTP status and JSON body."""
        actor = f"replica:{sender}"
        detail: dict[str, Any] = {"size": len(body), "sha256": digest}
        created = False
        try:
            store = self.store(sender)
            created = store.site.put_if_absent(name, body)
            if created:
                with store.flush_lock:
                    store.site.flush()
                status, outcome, answer = 201, "stored", {"status": "created"}
            else:
                held = _sha256_file(store.site.path_of(name))
                if held != digest:
                    status, outcome = 409, "conflict"
                    answer = {"error": f"a different object is already stored as {name} and is never overwritten "
                                       "(write-once)"}
                else:
                    self._harden(store, name)
                    status, outcome, answer = 200, "duplicate", {"status": "present"}
        except (SiteError, OSError) as exc:
            status, reason = _storage_failure(exc)
            log.error("replica store %s: cannot store %s: %s (%s)", sender, name, reason, exc)
            status, outcome, answer = status, "error", {"error": reason}
            detail["error"] = reason
        try:
            self.audit(actor, "replica-put", name, outcome, detail)
        except Exception as exc:  # noqa: BLE001 - unaudited means not acknowledged
            log.error("replica store %s: cannot audit the PUT of %s: %s", sender, name, exc)
            return 503, {"error": "the receiving vault cannot write its audit log; retry later"}
        if created:
            self.store(sender).site.release_intents([name])
        return status, answer

    @staticmethod
    def _harden(store: _Store, name: str) -> None:
        """Before saying "already present": its directory entries may still await a flush by the
        PUT that created them (a racing duplicate), so fsync them here, object dir upwards."""
        directory = store.site.path_of(name).parent
        with store.flush_lock:
            for path in (directory, directory.parent, directory.parent.parent):
                fsync_dir(path)

    def head(self, sender: str, name: str, digest: bool) -> tuple[Path, os.stat_result, str | None] | None:
        """Path, stat and (for HEAD, where the sender verifies by it) the SHA-256 read from disk now."""
        path = self.store(sender).site.path_of(name)
        try:
            st = path.stat()
            return path, st, _sha256_file(path) if digest else None
        except FileNotFoundError:
            return None

    def names_after(self, sender: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` names greater than ``after``, in order, reading only the needed dirs.

        Names are stored under ``ab/cd/abcd...``, so walking the two directory levels in order
        yields names in order, and whole directories before ``after`` can be skipped unread.
        """
        objects = self.store(sender).site.objects
        result: list[str] = []
        lo1, lo2 = after[:2], after[:4]
        for first in sorted(os.listdir(objects)):
            if len(first) != 2 or first < lo1 or not (objects / first).is_dir():
                continue
            for second in sorted(os.listdir(objects / first)):
                if first + second < lo2:
                    continue
                try:
                    entries = sorted(os.listdir(objects / first / second))
                except NotADirectoryError:
                    continue
                for entry in entries:
                    if entry > after and _valid_object_name(entry):
                        result.append(entry)
                        if len(result) >= limit:
                            return result
        return result

    def health(self, sender: str) -> tuple[int, dict[str, Any]]:
        """Can this sender's store take a write now (a real probe file, not just a stat)?"""
        info: dict[str, Any] = {"store": sender, "allow_delete": self.settings.allow_delete, "ok": False}
        try:
            store = self.store(sender)
            usage = shutil.disk_usage(store.site.root)
            info.update(free_bytes=usage.free, total_bytes=usage.total)
            probe = store.site.root / ".health-probe"
            probe.write_bytes(b"ok")
            probe.unlink()
        except (SiteError, OSError) as exc:
            status, reason = _storage_failure(exc)
            info["error"] = reason
            return (status if status != 500 else 503), info
        info["ok"] = True
        return 200, info

    def delete(self, sender: str, name: str) -> None:
        self.store(sender).site.delete(name)

    def put_snapshot(self, sender: str, name: str, body: bytes, digest: str) -> tuple[int, dict[str, Any]]:
        """A sender's catalog snapshot (sealed, like its objects): write-once, audited."""
        site = self.store(sender).site
        try:
            site.get_snapshot(name)
            held = True
        except KeyError:
            held = False
        try:
            if held:
                same = hashlib.sha256(site.get_snapshot(name)).hexdigest() == digest
                status, outcome = (200, "duplicate") if same else (409, "conflict")
                answer = {"status": "present"} if same else {"error": f"a different snapshot {name} is stored"}
            else:
                site.put_snapshot(name, body)
                status, outcome, answer = 201, "stored", {"status": "created"}
        except (SiteError, OSError) as exc:
            status, reason = _storage_failure(exc)
            status, outcome, answer = status, "error", {"error": reason}
        try:
            self.audit(f"replica:{sender}", "replica-snapshot", name, outcome, {"size": len(body), "sha256": digest})
        except Exception as exc:  # noqa: BLE001 - unaudited means not acknowledged
            log.error("replica store %s: cannot audit the snapshot %s: %s", sender, name, exc)
            return 503, {"error": "the receiving vault cannot write its audit log; retry later"}
        return status, answer


def replica_routes(settings: ReplicaStoreSettings, catalog: Catalog) -> list[Route]:
    """The ``/replica/v1`` routes, mounted by the HTTP server whether or not the store is enabled
    (disabled, they answer a JSON 404 saying so, which the sender shows as the reason)."""
    store = ReplicaStore(settings, catalog) if settings.enabled else None

    def disabled() -> JSONResponse:
        return _error(404, "this vault does not accept replicas ([replica_store] enabled = false)")

    async def authenticate(request: Request) -> str | Response:
        assert store is not None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        sender = await run_in_threadpool(store.tokens.identify, token.strip()) if scheme.lower() == "bearer" else None
        if sender is not None:
            return sender
        if store.tokens.problem:
            return _error(503, "the replica store of this vault is not configured correctly; see its log")
        client = request.client.host if request.client else "unknown"
        log.warning("replica request from %s refused: missing or unknown token", client)
        await run_in_threadpool(store.audit_denial, client, request.url.path)
        return _error(401, "missing or invalid bearer token", {"WWW-Authenticate": 'Bearer realm="dicomvault-replica"'})

    async def obj(request: Request) -> Response:
        if store is None:
            return disabled()
        sender = await authenticate(request)
        if isinstance(sender, Response):
            return sender
        name = request.path_params["name"]
        if not _valid_object_name(name):
            return _error(400, f"invalid object name {name[:80]!r}: expected 8-128 lower-case hex characters")
        if request.method == "PUT":
            return await put(request, sender, name)
        if request.method == "DELETE":
            return await delete(sender, name)
        is_head = request.method == "HEAD"
        try:
            found = await run_in_threadpool(store.head, sender, name, is_head)
        except (SiteError, OSError) as exc:
            status, reason = _storage_failure(exc)
            return _error(status, reason)
        if found is None:
            return _error(404, f"no object {name} in this store", {ABSENT_HEADER: "absent"})
        path, st, digest = found
        if is_head:
            size = str(st.st_size)
            headers = {"Content-Length": size, "X-Object-Size": size, "X-Content-SHA256": digest or ""}
            return Response(b"", headers=headers, media_type="application/octet-stream")
        return FileResponse(path, stat_result=st, media_type="application/octet-stream")

    async def put(request: Request, sender: str, name: str) -> Response:
        assert store is not None
        claimed = request.headers.get("x-content-sha256", "").strip().lower()
        if len(claimed) != 64 or not set(claimed) <= _HEX:
            return _error(400, "header X-Content-SHA256 (64 hex characters, the SHA-256 of the body) is required")
        body = await request.body()
        actual = hashlib.sha256(body).hexdigest()
        if actual != claimed:
            reason = (f"body SHA-256 {actual[:16]}... does not match X-Content-SHA256 {claimed[:16]}...: "
                      "the object was corrupted in transit; nothing was stored")
            try:
                await run_in_threadpool(store.audit, f"replica:{sender}", "replica-put", name, "rejected",
                                        {"size": len(body), "sha256": claimed, "error": "checksum mismatch"})
            except Exception as exc:  # noqa: BLE001 - the refusal stands either way
                log.warning("cannot audit a refused replica PUT: %s", exc)
            return _error(400, reason)
        status, answer = await run_in_threadpool(store.put, sender, name, body, actual)
        return JSONResponse(answer, status_code=status)

    async def delete(sender: str, name: str) -> Response:
        assert store is not None
        actor = f"replica:{sender}"
        if not store.settings.allow_delete:
            await run_in_threadpool(store.audit, actor, "replica-delete", name, "refused", {})
            return _error(405, "this vault keeps replicas write-once: deletion is disabled "
                               "([replica_store] allow_delete = false)", {"Allow": "GET, HEAD, PUT"})
        try:
            await run_in_threadpool(store.delete, sender, name)
        except (SiteError, OSError) as exc:
            status, reason = _storage_failure(exc)
            return _error(status, reason)
        await run_in_threadpool(store.audit, actor, "replica-delete", name, "success", {})
        return Response(status_code=204)

    async def snapshot(request: Request) -> Response:
        if store is None:
            return disabled()
        sender = await authenticate(request)
        if isinstance(sender, Response):
            return sender
        name = request.path_params.get("name")
        site = store.store(sender).site
        try:
            if name is None:  # the listing
                return JSONResponse({"names": await run_in_threadpool(site.list_snapshots)})
            valid_snapshot_name(name)
            if request.method == "PUT":
                claimed = request.headers.get("x-content-sha256", "").strip().lower()
                body = await request.body()
                if hashlib.sha256(body).hexdigest() != claimed:
                    return _error(400, "body does not match X-Content-SHA256: nothing was stored")
                status, answer = await run_in_threadpool(store.put_snapshot, sender, name, body, claimed)
                return JSONResponse(answer, status_code=status)
            if request.method == "DELETE":
                if not store.settings.allow_delete:
                    return _error(405, "this vault keeps replicas write-once: deletion is disabled "
                                       "([replica_store] allow_delete = false)", {"Allow": "GET, PUT"})
                await run_in_threadpool(site.delete_snapshot, name)
                await run_in_threadpool(store.audit, f"replica:{sender}", "replica-delete", name, "success", {})
                return Response(status_code=204)
            return Response(await run_in_threadpool(site.get_snapshot, name), media_type="application/octet-stream")
        except KeyError:
            return _error(404, f"no snapshot {name} in this store", {ABSENT_HEADER: "absent"})
        except (SiteError, OSError) as exc:
            return _side_failure(exc, "invalid catalog snapshot name")

    async def key_record(request: Request) -> Response:
        """A sender's key records: replaced on PUT (``keys rotate`` re-wraps them) and deleted on
        request even when ``allow_delete`` is false. Deleting a study's key record is how the
        sender shreds the copies this vault keeps write-once; the vault's operator keeps the
        ciphertext, never the means to read it."""
        if store is None:
            return disabled()
        sender = await authenticate(request)
        if isinstance(sender, Response):
            return sender
        name = request.path_params.get("name")
        site = store.store(sender).site
        actor = f"replica:{sender}"
        try:
            if name is None:
                return JSONResponse({"names": await run_in_threadpool(site.list_keys)})
            valid_key_name(name)
            if request.method == "PUT":
                body = await request.body()
                if len(body) > MAX_KEY_RECORD:
                    return _error(413, f"a key record is at most {MAX_KEY_RECORD} bytes")
                if hashlib.sha256(body).hexdigest() != request.headers.get("x-content-sha256", "").strip().lower():
                    return _error(400, "body does not match X-Content-SHA256: nothing was stored")
                await run_in_threadpool(site.put_key, name, body)
                await run_in_threadpool(store.audit, actor, "replica-key", name, "success", {"size": len(body)})
                return Response(status_code=204)
            if request.method == "DELETE":
                await run_in_threadpool(site.delete_key, name)
                await run_in_threadpool(store.audit, actor, "replica-key-delete", name, "success", {})
                return Response(status_code=204)
            return Response(await run_in_threadpool(site.get_key, name), media_type="application/octet-stream")
        except KeyError:
            return _error(404, f"no key record {name} in this store", {ABSENT_HEADER: "absent"})
        except (SiteError, OSError) as exc:
            return _side_failure(exc, "invalid key record name")

    async def listing(request: Request) -> Response:
        if store is None:
            return disabled()
        sender = await authenticate(request)
        if isinstance(sender, Response):
            return sender
        after = request.query_params.get("after", "")
        if after and not set(after) <= _HEX:
            return _error(400, "after must be an object name (lower-case hex)")
        try:
            limit = int(request.query_params.get("limit", DEFAULT_PAGE))
        except ValueError:
            return _error(400, "limit must be a whole number")
        if not 1 <= limit <= MAX_PAGE:
            return _error(400, f"limit must be 1-{MAX_PAGE}")
        try:
            names = await run_in_threadpool(store.names_after, sender, after, limit)
        except (SiteError, OSError) as exc:
            status, reason = _storage_failure(exc)
            return _error(status, reason)
        return JSONResponse({"names": names, "next": names[-1] if len(names) == limit else None})

    async def health(request: Request) -> Response:
        if store is None:
            return disabled()
        sender = await authenticate(request)
        if isinstance(sender, Response):
            return sender
        status, info = await run_in_threadpool(store.health, sender)
        return JSONResponse(info, status_code=status)

    return [
        Route(f"{PREFIX}/objects/{{name}}", obj, methods=["GET", "HEAD", "PUT", "DELETE"]),
        Route(f"{PREFIX}/objects", listing, methods=["GET"]),
        Route(f"{PREFIX}/health", health, methods=["GET"]),
        Route(f"{PREFIX}/snapshots/{{name}}", snapshot, methods=["GET", "PUT", "DELETE"]),
        Route(f"{PREFIX}/snapshots", snapshot, methods=["GET"]),
        Route(f"{PREFIX}/keys/{{name}}", key_record, methods=["GET", "PUT", "DELETE"]),
        Route(f"{PREFIX}/keys", key_record, methods=["GET"]),
    ]
