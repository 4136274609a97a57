"""The runner's signal handling on its own (pipeline/interrupt.py), with real child processes: a signal that
lands while a stage process is being recorded, and the escalation of repeated signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cpt_pipeline.interrupt import Interrupt

# Records the SIGINTs and SIGTERMs it gets instead of stopping: a stage that does not stop.
STUBBORN = """
import signal, sys, time
from pathlib import Path
log = Path(sys.argv[1])
def record(signum, _frame):
    with log.open("a") as handle:
        handle.write(f"{signum}\\n")
signal.signal(signal.SIGINT, record)
signal.signal(signal.SIGTERM, record)
Path(sys.argv[2]).write_text("ready")
while True:
    time.sleep(0.1)
"""


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 60  # a bound for a broken test only
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_signal_while_a_stage_process_is_recorded(tmp_path: Path) -> None:
    """SIGINT landing inside `started` runs the handler on the same thread: it must not wait for `started`."""
    script = textwrap.dedent("""
        import os, signal, subprocess, sys
        from cpt_pipeline.interrupt import Interrupt

        class Landing(list):
            def append(self, item):
                os.kill(os.getpid(), signal.SIGINT)  # handled here, inside `started`
                super().append(item)

        interrupt = Interrupt()
        interrupt.processes = Landing()
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], process_group=0)
        with interrupt.handling():
            interrupt.started(child)
            print("stage exited", interrupt.wait(child), flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("stage exited"), result.stdout


def test_repeated_signals_escalate(tmp_path: Path) -> None:
    """The first signal is passed on as it came, the second as SIGTERM, the third as SIGKILL."""
    log, ready = tmp_path / "signals", tmp_path / "ready"
    interrupt = Interrupt()
    with interrupt.handling():
        child = subprocess.Popen([sys.executable, "-c", STUBBORN, str(log), str(ready)], process_group=0)
        interrupt.started(child)
        try:
            wait_for(ready.exists, "the stage never started")
            for presses in (1, 2):
                os.kill(os.getpid(), signal.SIGINT)
                wait_for(lambda n=presses: log.exists() and len(log.read_text().split()) == n, "signal not passed on")
            assert log.read_text().split() == [str(int(signal.SIGINT)), str(int(signal.SIGTERM))]
            os.kill(os.getpid(), signal.SIGINT)
            assert interrupt.wait(child) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
    assert interrupt.signum == signal.SIGINT
