"""Bounded ``IN (...)`` lists: every query over a caller's list of keys goes through here, so
no statement binds more parameters than SQLite or PostgreSQL allow."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

KEYS_PER_QUERY = 500  # well under every database's bound-parameter limit

T = TypeVar("T")


def in_chunks(values: Sequence[T], size: int = KEYS_PER_QUERY) -> Iterator[Sequence[T]]:
    """``values`` in slices of at most ``size``, in order."""
    for start in range(0, len(values), size):
        yield values[start:start + size]
