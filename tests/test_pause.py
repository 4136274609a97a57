"""The test hook pipeline/pause.py: a stray CPT_FAULT_PAUSE_AT (say, in a pod template) must not hang a stage
forever."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_pause_nobody_ends_gives_up(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CPT_FAULT_PAUSE_AT": "train:startup",
        "CPT_FAULT_PAUSE_FILE": str(tmp_path / "paused"),
        "CPT_FAULT_PAUSE_SECONDS": "1",
    }
    code = "from cpt_pipeline.pause import pause_point; pause_point('train:startup')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CPT_FAULT_PAUSE_AT" in lines[0] and "test hook" in lines[0], result.stderr
    assert (tmp_path / "paused").exists()
