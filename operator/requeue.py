"""Passes due after some seconds with no event to bring them: the deadline, the TTL, a retry after an API error,
the periodic resync. One scheduler thread for every run (not a timer thread each), a small pool runs the passes.

Kept in memory: a restarted operator recomputes every due time on its first pass over each run. A sooner request
for a run replaces a later one; a pass that runs frees its slot, so the pass may ask for the next.
"""

from __future__ import annotations

import contextvars
import heapq
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, run)


class Requeue:
    """`requeue(namespace, run, seconds)`: call `run_pass(namespace, run)` then, unless a sooner one is due."""

    def __init__(self, run_pass: Callable[[str, str], None], workers: int = 4) -> None:
        self.run_pass = run_pass
        self.due: dict[Key, float] = {}
        self.heap: list[tuple[float, Key]] = []
        self.wake = threading.Condition()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="requeue")
        self.stopped = False
        # kopf's context (for posting events) travels with each request: the passes run outside kopf's threads
        self.contexts: dict[Key, contextvars.Context] = {}
        threading.Thread(target=self._loop, name="requeue", daemon=True).start()

    def __call__(self, namespace: str, run: str, seconds: float) -> None:
        due = time.monotonic() + max(0.0, seconds)
        key = (namespace, run)
        with self.wake:
            if key in self.due and self.due[key] <= due:
                return
            self.due[key] = due
            self.contexts[key] = contextvars.copy_context()
            heapq.heappush(self.heap, (due, key))
            self.wake.notify()

    def forget(self, namespace: str, run: str) -> None:
        with self.wake:
            self.due.pop((namespace, run), None)
            self.contexts.pop((namespace, run), None)

    def stop(self) -> None:
        with self.wake:
            self.stopped = True
            self.wake.notify()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not self.stopped and (not self.heap or self.heap[0][0] > time.monotonic()):
                    self.wake.wait(self.heap[0][0] - time.monotonic() if self.heap else None)
                if self.stopped:
                    return
                due, key = heapq.heappop(self.heap)
                if self.due.get(key) != due:
                    continue  # replaced by a sooner request, or forgotten
                del self.due[key]
                context = self.contexts.pop(key)
            self.pool.submit(context.run, self._run, *key)

    def _run(self, namespace: str, run: str) -> None:
        try:
            self.run_pass(namespace, run)
        except Exception:  # a pass reports its own errors; this only keeps the scheduler alive
            log.exception("a scheduled pass for %s/%s failed", namespace, run)
