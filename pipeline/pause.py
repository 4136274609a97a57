"""A test hook: named points where a stage process stops and waits for a signal, so that a test interrupts it
exactly there (start-up before the heavy imports, mid-run, during a checkpoint write, after the work) instead of
at a lucky moment. Set only by tests; with CPT_FAULT_PAUSE_AT unset, `pause_point` does nothing. A stray setting
(say, in a pod template) does not hang the stage: after CPT_FAULT_PAUSE_SECONDS (600) without a signal it exits
1 with one line naming the variable."""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_AT = "CPT_FAULT_PAUSE_AT"  # the point to stop at, e.g. "train-worker:startup"
PAUSE_FILE = "CPT_FAULT_PAUSE_FILE"  # created (holding the pid) once the point is reached
PAUSE_SECONDS = "CPT_FAULT_PAUSE_SECONDS"  # how long to wait for the signal before giving up
DEFAULT_PAUSE_SECONDS = 600.0


_reached: dict[str, int] = {}


def pause_point(name: str) -> None:
    """At the point named in CPT_FAULT_PAUSE_AT ("name", or "name#N" for the N-th time it is reached): say so
    in CPT_FAULT_PAUSE_FILE, then wait until a signal ends the process (its handler runs here:
    KeyboardInterrupt for SIGINT), at most CPT_FAULT_PAUSE_SECONDS."""
    wanted, _, count = os.environ.get(PAUSE_AT, "").partition("#")
    if wanted != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] != int(count or 1):
        return
    marker = Path(os.environ[PAUSE_FILE])
    temp = marker.with_name(marker.name + ".tmp")
    temp.write_text(f"{os.getpid()}\n")
    temp.replace(marker)
    seconds = float(os.environ.get(PAUSE_SECONDS) or DEFAULT_PAUSE_SECONDS)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
    raise SystemExit(
        f"{name}: the test hook {PAUSE_AT}={os.environ[PAUSE_AT]} waited {seconds:g} s for a signal that never came;"
        f" unset {PAUSE_AT} (it is for tests only)"
    )
