"""Ctrl-C (SIGINT), a hang-up (SIGHUP) or `kill`/`timeout` (SIGTERM) during `cpt run`, handled alike whenever
they come.

Each stage process runs in its own process group, so the terminal's SIGINT reaches the runner alone. The
runner's handler records the signal and passes it to every stage process group still running (each stops as it
would on that signal: writes are atomic, so nothing half-written becomes visible). A second signal escalates to
SIGTERM, a third and any later one to SIGKILL, for a stage that does not stop. The runner waits for the stages
to exit and then raises `Interrupted` (a KeyboardInterrupt) whatever their exit codes: a worker interrupted while
importing torch exits 75, 1 or 0, and `cpt run` still says "interrupted" and exits 128 + the first signal's
number (130, 143, 129). Should the runner itself be SIGKILLed, each stage process dies with it (see
`die_with_runner`).

The handler and `started` both run on the main thread (the only one Python runs signal handlers on), so they
share no lock: a signal that lands while a process is being recorded cannot deadlock the runner.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

POLL_SECONDS = 0.1  # waits poll, so the handler runs even when the signal lands on another thread
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
RUNNER_PID_ENV = "CPT_RUNNER_PID"  # set for stage processes: the pid whose death must end them
_PR_SET_PDEATHSIG = 1


class Interrupted(KeyboardInterrupt):
    """The run was stopped by `signum`; `cpt run` exits 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted ({signal.Signals(signum).name})")
        self.signum = signum


class Interrupt:
    """Which signal stopped the run, how often it came, and the stage processes it must reach."""

    def __init__(self) -> None:
        self.signum = 0  # the first signal received; 0 while none
        self.count = 0
        self.processes: list[subprocess.Popen] = []

    @property
    def requested(self) -> bool:
        return self.count > 0

    @contextmanager
    def handling(self) -> Iterator[Interrupt]:
        """Record SIGINT, SIGTERM and SIGHUP (instead of dying mid-wait) while the block runs; the main thread
        only."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in HANDLED}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def forwarded(self) -> int:
        """The signal passed on now: the first one received, then SIGTERM, then SIGKILL."""
        return self.signum if self.count == 1 else signal.SIGTERM if self.count == 2 else signal.SIGKILL

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        self.count += 1
        self._forward(list(self.processes))

    def _forward(self, processes: list[subprocess.Popen]) -> None:
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # it has just exited
                    os.killpg(process.pid, self.forwarded())

    def started(self, process: subprocess.Popen) -> None:
        """A stage process (started with process_group=0) that an interrupt must reach."""
        self.processes.append(process)
        if self.requested:  # received while it was starting
            self._forward([process])

    def wait(self, process: subprocess.Popen) -> int:
        """The process's exit code, polling so that a signal handled meanwhile is passed on at once."""
        while True:
            try:
                return process.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                continue

    def check(self) -> None:
        """Raise Interrupted if a signal stopped the run."""
        if self.requested:
            raise Interrupted(self.signum)


def die_with_runner() -> None:
    """In a stage process started by `cpt run` (CPT_RUNNER_PID set): get SIGTERM when the parent dies, even by
    SIGKILL (Linux PR_SET_PDEATHSIG), and exit at once if it is already gone. The variable then names this
    process, so that processes it starts (torchrun's workers) die with it in turn. Elsewhere: nothing."""
    runner = os.environ.get(RUNNER_PID_ENV)
    if not runner or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(runner):  # the parent died before the request took effect
        raise SystemExit(f"stage stopped: `cpt run` (pid {runner}) is gone")
    os.environ[RUNNER_PID_ENV] = str(os.getpid())
