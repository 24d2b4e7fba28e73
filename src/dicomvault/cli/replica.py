"""`dicomvault replica-token`: the tokens that let other vaults replicate to this one.

Run on the RECEIVING vault. ``add NAME`` creates a random token, appends ``NAME:token`` to
``[replica_store] tokens_file`` (mode 0600, replaced atomically so the running server, which
re-reads the file when it changes, never sees half a line) and prints the token once: the
sending vault's admin puts it in that site's ``token`` option. ``revoke NAME`` removes it;
the sender's copies stay. Every change is audited (promise 7).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from dicomvault.config import load_settings

replica_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                          help="Tokens of the vaults allowed to replicate to this one ([replica_store]).")
out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="dicomvault.toml (default: $DICOMVAULT_CONFIG or ./dicomvault.toml)"),
]


def _fail(message: str) -> typer.Exit:
    err.print(f"dicomvault: error: {message}", markup=False, highlight=False)
    return typer.Exit(1)


def _read(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def _names(lines: list[str]) -> list[str]:
    return [line.split(":", 1)[0].strip() for line in lines
            if line.strip() and not line.lstrip().startswith("#") and ":" in line]


def _write(path: Path, lines: list[str]) -> None:
    """Write-then-rename with mode 0600 from the start: the token never sits in a readable file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + ("\n" if lines else ""))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _audit(config: Optional[Path], event: str, name: str) -> None:
    from dicomvault.audit import AuditEvent, append
    from dicomvault.catalog import Catalog
    from dicomvault.cli.common import actor as _actor

    catalog = Catalog(load_settings(config).catalog_url)
    try:
        with catalog.write() as conn:
            append(conn, AuditEvent(actor=_actor(), action="config", subject="replica-token",
                                    detail={"event": event, "name": name}))
    finally:
        catalog.close()


@replica_app.command("add")
def add_token(
    name: Annotated[str, typer.Argument(help="The sending vault's name (a-z, 0-9, '-', '_'); its copies go to <root>/NAME")],
    config: ConfigOption = None,
) -> None:
    """Create a token for a sending vault and print it (once)."""
    from dicomvault.serve.replica_api import valid_store_name

    settings = load_settings(config)
    if not valid_store_name(name):
        raise _fail(f"token name {name!r}: use 1-64 lower-case letters, digits, '-' and '_'")
    path = settings.replica_store.tokens_file
    lines = _read(path)
    if name in _names(lines):
        raise _fail(f"a token named {name!r} already exists in {path}; revoke it first to replace it")
    token = secrets.token_urlsafe(32)
    _write(path, [*lines, f"{name}:{token}"])
    _audit(config, "add", name)
    note = "" if settings.replica_store.enabled else " ([replica_store] enabled is false: enable it and restart)"
    err.print(f"token {name!r} added to {path}{note}. It is shown only now; on the sending vault use:\n"
              f"  dicomvault sites add NAME vault://THIS-HOST:{settings.http.port} --option token=<token>",
              markup=False, highlight=False)
    print(token)


@replica_app.command("revoke")
def revoke_token(name: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """Remove a sending vault's token (its stored copies are kept)."""
    settings = load_settings(config)
    path = settings.replica_store.tokens_file
    lines = _read(path)
    if name not in _names(lines):
        raise _fail(f"no token named {name!r} in {path}")
    _write(path, [line for line in lines if ":" not in line or line.split(":", 1)[0].strip() != name])
    _audit(config, "revoke", name)
    out.print(f"token {name!r} revoked; its copies under {settings.replica_store.root / name} are kept")


@replica_app.command("list")
def list_tokens(config: ConfigOption = None) -> None:
    """Names of the vaults allowed to replicate here (never the tokens)."""
    settings = load_settings(config)
    for name in _names(_read(settings.replica_store.tokens_file)):
        print(name)
