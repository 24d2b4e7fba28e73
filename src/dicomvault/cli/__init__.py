"""The ``dicomvault`` command: one module per group of subcommands, ``app`` joins them."""

from __future__ import annotations


def main() -> None:
    from dicomvault.cli.app import main as run

    run()
