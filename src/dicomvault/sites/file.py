"""A site on a local or mounted filesystem (the primary disk, or a NAS mount).

Write protocol: the bytes go to ``tmp/<name>`` (fsync), are hard-linked to
``objects/ab/cd/<name>`` (``link`` fails if the name exists: an atomic put-if-absent), and
the object directory is fsynced. The temp file stays behind as a crash-recovery intent until
the catalog has indexed the object (``release_intent``); after a crash ``recover`` reports
those names so they can be re-indexed from their self-describing contents or discarded.
Objects are made read-only (0444) as a guard against accidental in-place modification.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from .base import Site, SiteError


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
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
        self.tmp = root / "tmp"
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SiteError(f"cannot create site directories under {root}: {exc.strerror}") from exc
        self._known_dirs: set[Path] = set()
        self._intents: dict[str, Path] = {}
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
            created = not directory.exists()
            directory.mkdir(parents=True, exist_ok=True)
            if created:
                _fsync_dir(directory.parent)
                _fsync_dir(directory.parent.parent)
            self._known_dirs.add(directory)
        return directory

    def put_if_absent(self, name: str, data: bytes) -> bool:
        final = self.path_of(name)
        if final.exists():
            return False
        tmp = self.tmp / f"{name}.{secrets.token_hex(4)}"
        try:
            directory = self._object_dir(name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, final)
            except FileExistsError:
                os.unlink(tmp)
                return False
            _fsync_dir(directory)
            with self._lock:
                self._intents[name] = tmp
            return True
        except OSError as exc:
            try:
                if tmp.exists() and not final.exists():
                    tmp.unlink()
            except OSError:
                pass
            reason = {
                errno.EROFS: "the storage is read-only",
                errno.ENOSPC: "the storage is full",
                errno.EDQUOT: "the storage quota is exhausted",
                errno.EACCES: "permission denied",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise SiteError(f"cannot write object to {self.url}: {reason}") from exc

    def release_intent(self, name: str) -> None:
        with self._lock:
            tmp = self._intents.pop(name, None)
        if tmp is None:
            return
        try:
            os.unlink(tmp)
        except OSError:
            pass  # already gone, or the disk refuses: recover() handles it next start

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
        _fsync_dir(path.parent)

    def recover(self) -> list[str]:
        """Drop temp files of writes that never completed; return names that did complete."""
        completed = []
        for entry in self.tmp.iterdir():
            name = entry.name.split(".")[0]
            try:
                final = self.path_of(name)
            except SiteError:
                entry.unlink(missing_ok=True)
                continue
            if final.exists() and os.path.samefile(entry, final):
                completed.append(name)
                with self._lock:
                    self._intents[name] = entry
            else:
                entry.unlink(missing_ok=True)
        return completed

    def health(self) -> dict[str, object]:
        info: dict[str, object] = {"url": self.url, "kind": "file"}
        try:
            usage = shutil.disk_usage(self.root)
            info.update(free_bytes=usage.free, total_bytes=usage.total)
            probe = self.tmp / ".health-probe"
            probe.write_bytes(b"ok")
            probe.unlink()
            info["ok"] = True
        except OSError as exc:
            info.update(ok=False, error=f"{exc.strerror or exc}")
        return info
