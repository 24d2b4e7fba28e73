"""A site on a local or mounted filesystem (the primary disk, or a NAS mount).

Write protocol (two fsyncs per object, whatever else happens):

1. the sealed bytes go to ``intents/<name>.<rand>``; the file is fdatasync'ed and then the
   ``intents/`` directory is fsynced. From here on the object survives power loss: the
   intent file IS the durable copy, and its name says which object it is;
2. it is hard-linked to ``objects/ab/cd/<name>`` (``link`` fails if the name exists, an
   atomic put-if-absent). That directory entry is made durable later, in bulk, by
   ``flush()``;
3. once the caller has indexed the object and made that durable too, ``release_intents``
   unlinks the intent files.

After a crash, ``recover`` re-links every intent whose final name is missing and hands the
names back, so the caller can authenticate them (an intent caught mid-write fails that
check and is discarded: it was never acknowledged) and re-index them. Objects are mode
0444 as a guard against in-place modification; a site never needs a key.
"""

from __future__ import annotations

import builtins
import errno
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from .base import Site, SiteError, valid_snapshot_name

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


def _valid_name(name: str) -> str:
    if len(name) < 8 or not all(c in "0123456789abcdef" for c in name):
        raise SiteError(f"invalid object name {name!r}")
    return name


class FileSite(Site):
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
        self._pending: dict[str, Path] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> "FileSite":
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

    def put_if_absent(self, name: str, data: bytes) -> bool:
        final = self.path_of(name)
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
            reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
            raise SiteError(f"{reason}: cannot write object to {self.url}") from exc
        with self._lock:
            self._pending[name] = intent
            self._dirty_dirs.add(directory)
        return True

    def flush(self) -> None:
        """Make every object directory entry written so far durable."""
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
                intent = self._pending.pop(name, None)
            if intent is not None:
                try:
                    os.unlink(intent)
                except OSError:
                    pass  # read-only or gone: recover() sees it again next start, harmlessly

    def get(self, name: str) -> bytes:
        try:
            return self.path_of(name).read_bytes()
        except FileNotFoundError:
            raise KeyError(name) from None
        except OSError as exc:
            raise SiteError(f"cannot read object {name} from {self.url}: {exc.strerror}") from exc

    def stat(self, name: str) -> int | None:
        try:
            return self.path_of(name).stat().st_size
        except FileNotFoundError:
            return None

    def list(self) -> Iterator[str]:
        for first in sorted(self.objects.iterdir()):
            if not first.is_dir():
                continue
            for second in sorted(first.iterdir()):
                for entry in sorted(second.iterdir()):
                    yield entry.name

    def delete(self, name: str) -> None:
        path = self.path_of(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

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
                self._pending[name] = entry
            names.append(name)
        return names

    def discard(self, name: str) -> None:
        """Drop an intent (and its object) that failed authentication: it was never acknowledged."""
        with self._lock:
            intent = self._pending.pop(name, None)
        final = self.path_of(name)
        if intent is not None and final.exists() and os.path.samefile(intent, final):
            final.unlink()
        if intent is not None:
            intent.unlink(missing_ok=True)

    # -- catalog snapshots: ``snapshots/<name>``, written like an object (temp, fsync, rename) --

    supports_snapshots = True

    def put_snapshot(self, name: str, data: bytes) -> None:
        folder = self.root / "snapshots"
        final = folder / valid_snapshot_name(name)
        temporary = folder / f".{name}.{secrets.token_hex(4)}"
        try:
            folder.mkdir(exist_ok=True)
            write_synced(temporary, data)
            if final.exists():
                raise FileExistsError(errno.EEXIST, "a snapshot of that name exists")
            os.rename(temporary, final)
            fsync_dir(folder)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
            raise SiteError(f"{reason}: cannot write catalog snapshot to {self.url}") from exc

    def get_snapshot(self, name: str) -> bytes:
        try:
            return (self.root / "snapshots" / valid_snapshot_name(name)).read_bytes()
        except FileNotFoundError:
            raise KeyError(name) from None
        except OSError as exc:
            raise SiteError(f"cannot read catalog snapshot {name} from {self.url}: {exc.strerror}") from exc

    def list_snapshots(self) -> "builtins.list[str]":
        folder = self.root / "snapshots"
        try:
            names = [entry.name for entry in folder.iterdir()]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SiteError(f"cannot list catalog snapshots on {self.url}: {exc.strerror}") from exc
        return sorted(name for name in names if not name.startswith("."))

    def delete_snapshot(self, name: str) -> None:
        path = self.root / "snapshots" / valid_snapshot_name(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SiteError(f"cannot delete catalog snapshot {name} on {self.url}: {exc.strerror}") from exc
        fsync_dir(path.parent)

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
            info.update(ok=False, error=f"{_REASONS.get(exc.errno or 0, exc.strerror or str(exc))}")
        return info
