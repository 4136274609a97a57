"""How a training worker leaves once its work is saved: atexit handlers (trackers finishing their runs), logs and
streams flushed, then `os._exit`. The interpreter's own teardown is skipped: there, native threads of the
communication libraries that outlive `destroy_process_group` are destroyed still joinable and abort the process
("terminate called without an active exception", exit -6), which fails a gang whose every step was saved."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from typing import NoReturn


def leave(code: int) -> NoReturn:
    """Exit with `code` after the Python-level cleanup, without the native teardown."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
