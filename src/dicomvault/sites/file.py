"""A site on a local or mounted filesystem (the primary disk, or a NAS mount).

Two ways to make an object durable before ``put_if_absent`` returns:

- through the write-ahead journal (``journal.py``), when the ingesting process enabled it
  (the primary site of ``serve`` / ``import``): the sealed bytes are appended to a
  preallocated segment and fdatasync'ed (group commit); the object's own file is
  written afterwards by a background thread (readers are served from memory until then),
  hardened by ``flush()`` and only then is the record released (``release_intents``);
- through an intent file, everywhere else (replica sites, a second process, objects
  larger than a segment, a full journal): the bytes go to ``intents/<name>.<rand>``,
  fdatasync'ed, the ``intents/`` directory fsynced (a new file costs a filesystem-journal
  commit), then hard-linked to ``objects/ab/cd/<name>`` (``link`` fails if
  the name exists: an atomic put-if-absent); the directory entry is hardened in bulk by
  ``flush()`` and the intent unlinked by ``release_intents`` once the caller has indexed
  the object.

After a crash, ``recover`` re-links every intent whose final name is missing, rewrites
every live journal record's object file that is missing or differs, and hands the names
back, so the caller can authenticate them (an intent or record caught mid-write fails that
check and is discarded: it was never acknowledged) and re-index them. Objects are mode 0444
as a guard against in-place modification; a site never needs a key.
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import logging
import os
import queue
import secrets
import shutil
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

from .base import KEY_NAME, Capabilities, Site, SiteError, valid_key_name, valid_snapshot_name
from .journal import Journal, JournalUnavailable, Ticket

log = logging.getLogger(__name__)

_REASONS = {
    errno.EROFS: "the storage is read-only",
    errno.ENOSPC: "the storage is full",
    errno.EDQUOT: "the storage quota is exhausted",
    errno.EIO: "the storage reports an I/O error",
    errno.EACCES: "permission denied",
}


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs() if sys.platform.startswith("linux") else None


def sync_filesystem(path: Path) -> bool:
    """Make everything written to ``path``'s filesystem durable with one ``syncfs(2)``: for
    hundreds of new object files, one journal commit and device flush instead of one each.
    False where syncfs is not available (the caller syncs file by file)."""
    if _syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)
    return True


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is out: a write may take only part of a large buffer."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_synced(path: Path, data: bytes, mode: int = 0o444, *, exclusive: bool = True,
                 sync: Callable[[int], None] = os.fsync) -> None:
    """Write a whole file and sync it before returning (``exclusive``: it must not exist yet)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC), mode)
    try:
        write_all(fd, data)
        sync(fd)
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    """What the sender and the operator are told about a failed disk operation."""
    return _REASONS.get(exc.errno or 0, exc.strerror or str(exc))


def _valid_name(name: str) -> str:
    if len(name) < 8 or not all(c in "0123456789abcdef" for c in name):
        raise SiteError(f"invalid object name {name!r}")
    return name


class FileSite(Site):
    capabilities = Capabilities(snapshots=True, journal=True, keys=True)

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"
        self.objects = root / "objects"
        self.intents = root / "intents"
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
            self.intents.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SiteError(f"cannot create site directories under {root}: {exc.strerror}") from exc
        self._known_dirs: set[Path] = set()
        self._dirty_dirs: set[Path] = set()
        self._pending: dict[str, builtins.list[Path | Ticket]] = {}  # intents / journal records to release
        self._lock = threading.Lock()
        # The write-ahead journal (sites/journal.py), when the ingesting process enabled it:
        self.journal: Journal | None = None
        self._inflight: dict[str, bytes] = {}  # journaled, object file not written yet: served from here
        self._claims: dict[str, threading.Event] = {}  # names being journaled right now
        self._unsynced: builtins.list[Path] = []  # object files written after their journal record, not synced
        self._write_queue: "queue.Queue[str]" = queue.Queue()
        self._write_failures: builtins.list[str] = []

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, object] | None = None) -> "FileSite":
        if options:
            raise SiteError(f"file site {url}: unknown option(s) {', '.join(sorted(options))}")
        parsed = urlparse(url)
        path = unquote(parsed.netloc + parsed.path)
        if not path:
            raise SiteError(f"file site URL {url!r} has no path")
        return cls(Path(path))

    def path_of(self, name: str) -> Path:
        _valid_name(name)
        return self.objects / name[:2] / name[2:4] / name

    def _object_dir(self, name: str) -> Path:
        directory = self.objects / name[:2] / name[2:4]
        if directory not in self._known_dirs:
            if not directory.exists():
                directory.mkdir(parents=True, exist_ok=True)
                with self._lock:
                    self._dirty_dirs.update((directory.parent, directory.parent.parent))
            self._known_dirs.add(directory)
        return directory

    def enable_journal(self) -> bool:
        """Acknowledge through the write-ahead journal from now on (the ingesting process calls
        this; one process per site). False, and the intent path stays, when it cannot be had."""
        if self.journal is not None:
            return True
        try:
            self.journal = Journal(self.root / "journal")
        except JournalUnavailable as exc:
            log.info("ingest journal not used (%s); objects are made durable one file at a time", exc)
            return False
        threading.Thread(target=self._write_objects, name="object-writer", daemon=True).start()
        return True

    def put_if_absent(self, name: str, data: bytes) -> bool:
        final = self.path_of(name)
        if self.journal is not None:
            stored = self._put_journaled(name, final, data)
            if stored is not None:
                return stored
        if final.exists():
            return False
        intent = self.intents / f"{name}.{secrets.token_hex(4)}"
        try:
            directory = self._object_dir(name)
            write_synced(intent, data, sync=os.fdatasync)
            fsync_dir(self.intents)
            try:
                os.link(intent, final)
            except FileExistsError:
                os.unlink(intent)
                return False
        except OSError as exc:
            try:
                intent.unlink(missing_ok=True)
            except OSError:
                pass
            raise self._write_refused(_reason(exc)) from exc
        with self._lock:
            self._pending.setdefault(name, []).append(intent)
            self._dirty_dirs.add(directory)
        return True

    def close_journal(self) -> None:
        """Give the journal up (its lock too) once the queued object files are written;
        records not yet released stay on disk for the next owner's ``recover``."""
        journal, self.journal = self.journal, None
        if journal is not None:
            self._write_queue.join()
            journal.close()

    def close(self) -> None:
        self.close_journal()

    def _put_journaled(self, name: str, final: Path, data: bytes) -> bool | None:
        """Durable once the journal's flush returns; the object file follows (``_write_objects``).
        None: the record does not fit in the journal, take the intent path."""
        assert self.journal is not None
        while True:
            with self._lock:
                if name in self._inflight:
                    return False
                claim = self._claims.get(name)
                if claim is None:
                    self._claims[name] = threading.Event()
                    break
            claim.wait()  # the same object is being journaled: its outcome is ours
        try:
            if final.exists():
                return False
            self._check_room(len(data))
            try:
                ticket = self.journal.append(name, data)
            except OSError as exc:
                raise self._write_refused(_reason(exc)) from exc
            if ticket is None:
                return None
            with self._lock:
                self._inflight[name] = data
                self._pending.setdefault(name, []).append(ticket)
            self._write_queue.put(name)
            return True
        finally:
            with self._lock:
                self._claims.pop(name).set()

    def _check_room(self, size: int) -> None:
        """The journal's space is preallocated, so it would take an object the disk has no
        room for; refuse it as the intent path would (the sender retries later) instead of
        acknowledging what cannot get its own file."""
        try:
            fs = os.statvfs(self.root)
        except OSError as exc:
            raise self._write_refused(_reason(exc)) from exc
        if fs.f_flag & os.ST_RDONLY:
            raise self._write_refused(_REASONS[errno.EROFS])
        if fs.f_bavail * fs.f_frsize < size + 1024 * 1024:
            raise self._write_refused(_REASONS[errno.ENOSPC])
        with self._lock:
            failing = bool(self._write_failures)
        if failing:
            try:
                self.flush()  # earlier object files could not be written: retry them first, or refuse
            except OSError as exc:
                raise self._write_refused(_reason(exc)) from exc

    def _write_refused(self, reason: str) -> SiteError:
        return SiteError(f"{reason}: cannot write object to {self.url}")

    def _write_objects(self) -> None:
        """Background: give journaled objects their own files (not synced: ``flush`` hardens
        them before their records are released)."""
        while True:
            name = self._write_queue.get()
            try:
                self._write_inflight(name)
            except OSError as exc:
                log.warning("cannot write object file %s yet (%s); it stays in the journal", name, exc)
                with self._lock:
                    self._write_failures.append(name)
            finally:
                self._write_queue.task_done()

    def _write_inflight(self, name: str) -> None:
        """Give one journaled object its file; from then on it is read from there."""
        with self._lock:
            data = self._inflight.get(name)
        if data is not None:
            self._write_object_file(name, data)
            with self._lock:
                self._inflight.pop(name, None)

    def _write_object_file(self, name: str, data: bytes, *, replace: bool = False) -> None:
        """Written in place (one file creation, no temp + link): until ``flush`` hardens it,
        the journal record is the durable copy and readers are served from memory; a file cut
        short by a crash is rewritten from the record by ``recover``."""
        final = self.path_of(name)
        directory = self._object_dir(name)
        if replace:
            temp = directory / f".{name}.{secrets.token_hex(4)}"
            try:
                write_synced(temp, data)
                os.replace(temp, final)
            finally:
                temp.unlink(missing_ok=True)
        else:
            try:
                write_synced(final, data, sync=lambda fd: None)
            except FileExistsError:
                return  # written by a concurrent intent-path put: the same content-addressed bytes
        with self._lock:
            self._unsynced.append(final)
            self._dirty_dirs.add(directory)

    def flush(self) -> None:
        """Make every object written so far durable: files written after their journal
        record, then directory entries."""
        if self.journal is not None:
            self._write_queue.join()
            with self._lock:
                retry, self._write_failures = self._write_failures, []
            for name in retry:  # an earlier write failed (disk full...): once more, or raise
                try:
                    self._write_inflight(name)
                except OSError:
                    with self._lock:
                        self._write_failures.append(name)
                    raise
            with self._lock:
                files, self._unsynced = self._unsynced, []
                covered, self._dirty_dirs = self._dirty_dirs, set()  # a syncfs hardens these too
            try:
                if not files or not sync_filesystem(self.root):
                    with self._lock:
                        self._dirty_dirs |= covered  # fsynced one by one below
                    for path in files:
                        fd = os.open(path, os.O_RDONLY)
                        try:
                            os.fdatasync(fd)
                        finally:
                            os.close(fd)
            except OSError:
                with self._lock:
                    self._unsynced[:0] = files
                    self._dirty_dirs |= covered
                raise
        with self._lock:
            dirty, self._dirty_dirs = self._dirty_dirs, set()
        try:
            for directory in sorted(dirty, key=lambda p: len(p.parts), reverse=True):
                fsync_dir(directory)
        except OSError:
            with self._lock:
                self._dirty_dirs |= dirty
            raise

    def release_intents(self, names: Iterable[str]) -> None:
        for name in names:
            with self._lock:
                held = self._pending.pop(name, [])
            for intent in held:
                if isinstance(intent, Ticket):
                    if self.journal is not None:
                        self.journal.release(intent)
                    continue
                try:
                    os.unlink(intent)
                except OSError:
                    pass  # read-only or gone: recover() sees it again next start, harmlessly

    def get(self, name: str) -> bytes:
        with self._lock:
            inflight = self._inflight.get(name)
        if inflight is not None:
            return inflight
        try:
            return self.path_of(name).read_bytes()
        except FileNotFoundError:
            raise KeyError(name) from None
        except OSError as exc:
            raise SiteError(f"cannot read object {name} from {self.url}: {exc.strerror}") from exc

    def stat(self, name: str) -> int | None:
        with self._lock:
            inflight = self._inflight.get(name)
        if inflight is not None:
            return len(inflight)
        path = self.path_of(name)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SiteError(f"cannot stat object {name} on {self.url}: {_reason(exc)}") from exc

    def list(self) -> Iterator[str]:
        with self._lock:
            inflight = sorted(self._inflight)
        yield from inflight  # journaled, file being written (listed once: their files are skipped)
        skip = set(inflight)
        try:
            for first in sorted(self.objects.iterdir()):
                if not first.is_dir():
                    continue
                for second in sorted(first.iterdir()):
                    for entry in sorted(second.iterdir()):
                        if entry.name not in skip and not entry.name.startswith("."):
                            yield entry.name
        except OSError as exc:
            raise SiteError(f"cannot list objects on {self.url}: {_reason(exc)}") from exc

    def delete(self, name: str) -> None:
        path = self.path_of(name)
        try:
            path.unlink()
            fsync_dir(path.parent)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SiteError(f"cannot delete object {name} on {self.url}: {_reason(exc)}") from exc

    def recover(self) -> "builtins.list[str]":
        """Re-link intents whose object name was lost; return every intent's object name."""
        names = []
        for entry in sorted(self.intents.iterdir()):
            name = entry.name.split(".")[0]
            try:
                final = self.path_of(name)
            except SiteError:
                entry.unlink(missing_ok=True)
                continue
            if not final.exists():
                self._object_dir(name)
                os.link(entry, final)
                self._dirty_dirs.add(final.parent)
            elif not os.path.samefile(entry, final):
                entry.unlink()  # a concurrent duplicate write lost the race: nothing to keep
                continue
            with self._lock:
                self._pending.setdefault(name, []).append(entry)
            names.append(name)
        if self.journal is not None:
            for record in self.journal.recovered():
                self._restore_from_journal(record.name, record.data)
                with self._lock:
                    self._pending.setdefault(record.name, []).append(record.ticket)
                if record.name not in names:
                    names.append(record.name)
        return names

    def _restore_from_journal(self, name: str, data: bytes) -> None:
        """After a crash: the object's file may be missing or cut short; the journal has it."""
        try:
            final = self.path_of(name)
        except SiteError:
            return
        try:
            intact = final.stat().st_size == len(data) and final.read_bytes() == data
        except FileNotFoundError:
            intact = False
        if not intact:
            self._write_object_file(name, data, replace=final.exists())

    def discard(self, name: str) -> None:
        """Drop an intent or journal record (and its object) that failed authentication: it
        was never acknowledged."""
        with self._lock:
            held = self._pending.pop(name, [])
            self._inflight.pop(name, None)
        final = self.path_of(name)
        for intent in held:
            if isinstance(intent, Ticket):
                final.unlink(missing_ok=True)  # written from the torn record itself
                if self.journal is not None:
                    self.journal.release(intent)
                continue
            if final.exists() and os.path.samefile(intent, final):
                final.unlink()
            intent.unlink(missing_ok=True)

    # -- side namespaces: catalog snapshots (``snapshots/``) and key records (``keys/``) -------
    # Both are small files beside the objects, written through a temp file, fsync and rename;
    # ``what`` names them in errors.

    def _side_write(self, final: Path, data: bytes, what: str, *, mode: int, replace: bool) -> None:
        folder = final.parent
        temporary = folder / f".{final.name}.{secrets.token_hex(4)}"
        try:
            folder.mkdir(exist_ok=True)
            write_synced(temporary, data, mode)
            if replace:
                os.replace(temporary, final)
            else:
                if final.exists():
                    raise FileExistsError(errno.EEXIST, f"a {what} of that name exists")
                os.rename(temporary, final)
            fsync_dir(folder)
        except OSError as exc:
            try:
                temporary.unlink(missing_ok=True)
            except OSError:
                pass  # the storage is gone: nothing was written there either
            raise SiteError(f"{_reason(exc)}: cannot write {what} to {self.url}") from exc

    def _side_read(self, path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyError(path.name) from None
        except OSError as exc:
            raise SiteError(f"cannot read {what} {path.name} from {self.url}: {exc.strerror}") from exc

    def _side_names(self, folder: Path, what: str) -> "builtins.list[str]":
        try:
            return sorted(entry.name for entry in folder.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SiteError(f"cannot list {what}s on {self.url}: {exc.strerror}") from exc

    def _side_delete(self, path: Path, what: str) -> None:
        try:
            path.unlink()
            fsync_dir(path.parent)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SiteError(f"cannot delete {what} {path.name} on {self.url}: {exc.strerror}") from exc

    def put_snapshot(self, name: str, data: bytes) -> None:
        self._side_write(self.root / "snapshots" / valid_snapshot_name(name), data, "catalog snapshot",
                         mode=0o444, replace=False)

    def get_snapshot(self, name: str) -> bytes:
        return self._side_read(self.root / "snapshots" / valid_snapshot_name(name), "catalog snapshot")

    def list_snapshots(self) -> "builtins.list[str]":
        return [n for n in self._side_names(self.root / "snapshots", "catalog snapshot") if not n.startswith(".")]

    def delete_snapshot(self, name: str) -> None:
        self._side_delete(self.root / "snapshots" / valid_snapshot_name(name), "catalog snapshot")

    def put_key(self, name: str, data: bytes) -> None:
        """Replaced in place (rotation re-wraps it)."""
        self._side_write(self.root / "keys" / valid_key_name(name), data, "key record", mode=0o600, replace=True)

    def get_key(self, name: str) -> bytes:
        return self._side_read(self.root / "keys" / valid_key_name(name), "key record")

    def list_keys(self) -> "builtins.list[str]":
        return [n for n in self._side_names(self.root / "keys", "key record") if KEY_NAME.match(n)]

    def delete_key(self, name: str) -> None:
        self._side_delete(self.root / "keys" / valid_key_name(name), "key record")

    def health(self) -> dict[str, object]:
        info: dict[str, object] = {"url": self.url, "kind": "file"}
        try:
            usage = shutil.disk_usage(self.root)
            info.update(free_bytes=usage.free, total_bytes=usage.total)
            probe = self.root / ".health-probe"
            probe.write_bytes(b"ok")
            probe.unlink()
            info["ok"] = True
        except OSError as exc:
            info.update(ok=False, error=_reason(exc))
        if self.journal is not None:
            # Acknowledged objects whose own file and catalog row are not hardened yet.
            info["journal_pending"] = self.journal.pending()
            with self._lock:
                failing = len(self._write_failures)
            if failing:
                info.update(ok=False, error=f"{failing} acknowledged object(s) kept in the journal: their files "
                                            "cannot be written yet (see the log); free space or fix the disk")
        return info
