"""One pass at a time per run, and bursts coalesced: a pass asked for while one runs for the same run does not
wait (it would hold one of kopf's worker threads per event, and a slow API call would starve every run); it marks
the run dirty, and the running pass runs once more when it ends, with every child state the events brought."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, run)
Seen = dict[str, dict[str, Any]]  # child key -> the child as its event showed it


class Serializer:
    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.locks: dict[Key, threading.Lock] = {}
        self.dirty: dict[Key, Seen] = {}

    def run(self, key: Key, seen: Seen, work: Callable[[Seen], None]) -> bool:
        """Run `work(seen)` now, or leave it to the pass running for `key`; False when left."""
        with self.guard:
            lock = self.locks.setdefault(key, threading.Lock())
            if not lock.acquire(blocking=False):  # (tried under the guard: see _next)
                self.dirty.setdefault(key, {}).update(seen)
                return False
        while True:
            try:
                work(seen)
            except Exception:  # `work` reports its own errors; the run must never stay locked
                log.exception("a pass for %s/%s raised", *key)
            seen = self._next(key, lock)
            if seen is None:
                return True

    def _next(self, key: Key, lock: threading.Lock) -> Seen | None:
        """What the events during the pass asked for, or None: the lock is released under the guard, so a caller
        either finds it held (and marks the run dirty, seen here) or takes it."""
        with self.guard:
            if key in self.dirty:
                return self.dirty.pop(key)
            lock.release()
            return None

    def forget(self, key: Key) -> None:
        with self.guard:
            self.dirty.pop(key, None)
            lock = self.locks.get(key)
            if lock is not None and not lock.locked():
                del self.locks[key]
