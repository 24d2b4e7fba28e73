"""Decrypt-ahead for senders: load a few objects ahead of the network so opening (read,
authenticate, decompress, SHA-256) overlaps with sending, in the order the items come."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Generic, TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


class Prefetcher(Generic[Item, Loaded]):
    """Yields ``(item, future)`` in input order with at most ``window`` loads in flight.

    Thread-safe: several sender threads may call ``next_item`` and each gets the next item
    in order (a restore over four associations still sends in urgency order). Stopping
    early leaves at most ``window`` loads running; their results are dropped.
    """

    def __init__(self, items: Iterable[Item], load: Callable[[Item], Loaded], pool: Executor, window: int) -> None:
        self._pending = iter(items)
        self._load = load
        self._pool = pool
        self._window: deque[tuple[Item, Future[Loaded]]] = deque()
        self._size = max(1, window)
        self._lock = threading.Lock()
        self._fill()

    def _fill(self) -> None:
        while len(self._window) < self._size:
            following = next(self._pending, None)
            if following is None:
                return
            self._window.append((following, self._pool.submit(self._load, following)))

    def next_item(self) -> tuple[Item, Future[Loaded]] | None:
        with self._lock:
            if not self._window:
                return None
            current = self._window.popleft()
            self._fill()
            return current

    def __iter__(self) -> Iterator[tuple[Item, Future[Loaded]]]:
        while (current := self.next_item()) is not None:
            yield current
