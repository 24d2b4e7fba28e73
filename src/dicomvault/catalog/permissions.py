"""The catalog's files are private to the archive's user.

A SQLite catalog holds patient names and IDs in clear: created under a 022 umask it was
world-readable (0644) in a world-listable data directory. The database and the files SQLite
keeps beside it (``-wal``, ``-shm``, ``-journal``) are made 0600; the database is created
0600 before SQLite first opens it, so its side files (which SQLite creates with the
database's mode) are born private too. Files left readable by an older version are fixed
at open, with a log line saying so.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def restrict(path: Path, mode: int, what: str) -> None:
    """Take away every permission ``mode`` does not grant (never adds any); log what changed."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current & ~mode:
        try:
            os.chmod(path, current & mode)
        except OSError as exc:  # not ours (another user runs this command): say so, do not fail the command
            log.warning("%s %s is mode %o (readable by other users) and cannot be changed here: %s; run "
                        "chmod %o on it as its owner", what, path, current, exc.strerror, current & mode)
            return
        log.warning("%s %s was mode %o (readable by other users); now %o", what, path, current, current & mode)


def protect_sqlite_catalog(database: Path) -> None:
    """Create ``database`` 0600 when missing; make it and its side files 0600 when not."""
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError:  # a read-only or missing directory: SQLite's own open says what is wrong
        return
    for suffix in SQLITE_SIDE_FILES:
        restrict(database.with_name(database.name + suffix), 0o600, "catalog file")
