"""A training worker whose work is saved exits with its code even when the interpreter's teardown would abort
(CI saw a finished gang fail: a worker's native communication thread, destroyed still joinable at exit, aborted
it with -6 after the last checkpoint and export were written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

# Stands for the native thread: an object whose destruction, in the interpreter's teardown, aborts the process.
# Its atexit handler stands for the Python-level cleanup (a tracker finishing its run), which must still run.
SITECUSTOMIZE = """
import atexit, os, pathlib
class _AbortsInTeardown:
    def __del__(self, abort=os.abort):
        abort()
_held = _AbortsInTeardown()
atexit.register(lambda: pathlib.Path(os.environ["ATEXIT_MARK"]).write_text("ran"))
"""


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    resource = {
        "apiVersion": "cpt.kubecpt.dev/v1alpha1",
        "kind": "ContinuedPretrain",
        "metadata": {"name": "exit"},
        "spec": {
            "model": {"uri": "org/model"},
            "data": {"sources": [{"name": "d", "uri": "/data"}], "sequenceLength": 64, "tokenBudget": 10**6},
            "storage": {"uri": str(tmp_path / "store")},
        },
    }
    (tmp_path / "spec.json").write_text(json.dumps(resource))
    clean = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-P", "-m", "cpt_pipeline", "report", "--spec", str(tmp_path / "spec.json")],
        cwd=REPO,
        env={**clean, "PYTHONPATH": str(tmp_path / "site"), "ATEXIT_MARK": str(tmp_path / "atexit"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_torchrun_worker_exits_with_its_code_and_skips_the_teardown_that_aborts(tmp_path: Path) -> None:
    result = _run(tmp_path, LOCAL_RANK="0")
    assert result.returncode == 4, result.stderr[-2000:]  # the stage's own code: no evaluation results
    assert "no evaluation results" in result.stderr
    assert (tmp_path / "atexit").read_text() == "ran"


def test_the_simulated_teardown_does_abort_a_process_that_is_not_a_worker(tmp_path: Path) -> None:
    """The control: the same stage outside torchrun keeps the normal exit, and the stand-in really aborts it."""
    result = _run(tmp_path)
    assert result.returncode == -6, result.stderr[-2000:]
