"""What every ``dicomvault`` subcommand module shares: the config option, opening the
archive, the audit actor, the one-line failure and the progress bar.

Kept apart from ``cli/app.py`` so command modules (``cli_restore``, ``cli_reconcile``,
``cli_export``...) can import it without a circular import.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console

from dicomvault.config import Settings, load_settings

if TYPE_CHECKING:
    from rich.progress import Progress

console = Console(stderr=True)  # progress and warnings
out = Console()  # results

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="dicomvault.toml (default: $DICOMVAULT_CONFIG, else ./dicomvault.toml)"),
]


class CliFailure(Exception):
    """A failure to report as one line and a non-zero exit."""


def actor() -> str:
    """Who ran the command, for the audit log."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


def open_archive(config: Optional[Path]) -> Any:
    from dicomvault.archive.core import Archive

    return Archive.open(load_settings(config))


def settings(config: Optional[Path]) -> Settings:
    return load_settings(config)


@contextmanager
def progress_callback(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar named ``what``, as the ``progress(done, total)`` callback jobs take."""
    with progress_bar() as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def progress_bar() -> Progress:
    """A bar on a terminal; silent when output is piped (the report says it all)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console, transient=False, disable=not console.is_terminal,
    )
