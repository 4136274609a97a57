"""A stage that is its container's PID 1 runs in a child process, so that SIGTERM always ends it.

The kernel drops every signal PID 1 has not installed a handler for, and a Python handler runs only when the
main thread returns to Python: a launcher waiting in torch's rendezvous (native code, holding the GIL) never
did, so a pod deleted then held its node for the whole grace period until SIGKILL (found by the chaos run).
As PID 1 the stage forks: the child runs the stage with SIGTERM's default action, the parent forwards SIGTERM,
SIGINT and SIGHUP to it, reaps every orphan re-parented to it (an init's duty) and exits with the child's code.
A child ended by the forwarded SIGTERM exits `terminated_code` (training: 75, a preemption: the agent had not
started its workers, so no step is lost), else 128 + the signal, as a shell would. Once torchrun's agent runs,
it installs its own handler and the child's exit code is its own (a checkpoint saved: 75).
"""

from __future__ import annotations

import os
import signal
from types import FrameType

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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

    def forward(signum: int, _frame: FrameType | None) -> None:
        os.kill(child, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # cannot happen while the child lives; be safe
            return 1
        if pid == child:
            return exit_code(os.waitstatus_to_exitcode(status), terminated_code)


def exit_code(code: int, terminated_code: int | None) -> int:
    """The container's exit code for the child's (negative: the signal that ended it)."""
    if code >= 0:
        return code
    if -code == signal.SIGTERM and terminated_code is not None:
        return terminated_code
    return 128 - code
