"""A stage that is its container's PID 1 runs in a child process, so that SIGTERM always ends it.

The kernel drops every signal PID 1 has not installed a handler for, and a Python handler runs only when the
main thread returns to Python: a launcher waiting in torch's rendezvous (native code, holding the GIL) never
did, so a pod deleted then held its node for the whole grace period until SIGKILL (found by the chaos run).
As PID 1 the stage forks: the child runs the stage with SIGTERM's default action, the parent forwards SIGTERM,
SIGINT and SIGHUP to it, reaps every orphan re-parented to it (an init's duty) and exits with the child's code.
A child ended by a SIGTERM the parent forwarded exits `terminated_code` (training: 75, a preemption: the agent
had not started its workers, so no step is lost), else 128 + the signal, as a shell would, with one line saying
so. Once torchrun's agent runs, it installs its own handler and the child's exit code is its own (a checkpoint
saved: 75). The signals are blocked as the package is imported (`block_if_pid_1`, from `__init__`), before the
stage's imports, so that none sent during start-up is dropped. An image that wraps the stage in an init (tini,
`shareProcessNamespace`) makes it no longer PID 1: a launcher SIGTERMed in its rendezvous then exits 143.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
from types import FrameType

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def block_if_pid_1() -> None:
    """As PID 1 started as `python -m cpt_pipeline` (a stage container): block the forwarded signals until
    supervise_if_pid_1 handles them, so that none is dropped meanwhile. Any other program importing the package
    (`cpt run` as a container's PID 1) keeps its signals."""
    argv = sys.orig_argv
    stage = any(a == "-m" and b == "cpt_pipeline" for a, b in itertools.pairwise(argv))
    if os.getpid() == 1 and stage:
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)


def supervise_if_pid_1(terminated_code: int | None = None) -> int | None:
    """As PID 1: fork, and in the parent return the child's exit code once it ended; None in the child (and when
    this is not PID 1): the caller runs the stage."""
    if os.getpid() != 1:
        return None
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # none is lost before the parent forwards them
    child = os.fork()
    if child == 0:
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        return None
    return _wait_for(child, terminated_code)


def _wait_for(child: int, terminated_code: int | None) -> int:
    """Forward signals to `child` and reap every process until it ends; its exit code."""

    forwarded: set[int] = set()

    def forward(signum: int, _frame: FrameType | None) -> None:
        forwarded.add(signum)
        with contextlib.suppress(ProcessLookupError):  # the child has just ended
            os.kill(child, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # cannot happen while the child lives; be safe
            pid, status = child, 1 << 8
        if pid == child:
            break
    for signum in FORWARDED:
        signal.signal(signum, signal.SIG_IGN)
    code = exit_code(os.waitstatus_to_exitcode(status), terminated_code, forwarded)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        print(f"stage stopped by {name} before it handled the signal: exit {code}", flush=True)
    return code


def exit_code(code: int, terminated_code: int | None, forwarded: set[int]) -> int:
    """The container's exit code for the child's (negative: the signal that ended it); `forwarded`: the signals
    the parent passed on."""
    if code >= 0:
        return code
    if -code == signal.SIGTERM and signal.SIGTERM in forwarded and terminated_code is not None:
        return terminated_code
    return 128 - code
