"""Ctrl-C during `cpt run`, handled the same way whenever it comes.

Each stage process runs in its own process group, so the terminal's SIGINT reaches the runner alone. The
runner's handler records the interrupt and passes one SIGINT to every stage process still running (each
stops as it would on Ctrl-C: writes are atomic, so nothing half-written becomes visible). The runner waits
for them to exit and then raises KeyboardInterrupt, whatever their exit codes: a worker interrupted while
importing torch exits 75, 1 or 0, and `cpt run` still says "interrupted" and exits 130.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

POLL_SECONDS = 0.1  # waits poll, so the handler runs even when the signal lands on another thread


class Interrupt:
    """Whether Ctrl-C was pressed, and the stage processes it must reach."""

    def __init__(self) -> None:
        self.requested = False
        self.processes: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    @contextmanager
    def handling(self) -> Iterator[Interrupt]:
        """Record SIGINT (instead of raising it mid-wait) while the block runs; the main thread only."""
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True
        with self._lock:
            running = [p for p in self.processes if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):  # it has just exited
                os.killpg(process.pid, signal.SIGINT)

    def started(self, process: subprocess.Popen) -> None:
        """A stage process (started with process_group=0) that an interrupt must reach."""
        with self._lock:
            self.processes.append(process)
        if self.requested:  # pressed while it was starting
            self._on_sigint(signal.SIGINT, None)

    def wait(self, process: subprocess.Popen) -> int:
        """The process's exit code, polling so that a SIGINT handled meanwhile is passed on at once."""
        while True:
            try:
                return process.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                continue

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed."""
        if self.requested:
            raise KeyboardInterrupt
