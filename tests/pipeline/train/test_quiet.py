"""The torch collective deprecation flood is silenced in training workers, and nothing else is."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import warnings
from cpt_pipeline.train.quiet import silence_known_floods
silence_known_floods()
for name in ("all_gather_into_tensor", "reduce_scatter_tensor"):
    for _ in range(3):
        warnings.warn(f"`torch.distributed.{name}` is deprecated. Please use ...", FutureWarning)
warnings.warn("`torch.distributed.something_else` is deprecated", FutureWarning)
warnings.warn("a real problem", UserWarning)
"""


def test_only_the_known_flood_is_silenced() -> None:
    result = subprocess.run([sys.executable, "-P", "-c", PROBE], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "all_gather_into_tensor" not in result.stderr and "reduce_scatter_tensor" not in result.stderr
    assert "something_else" in result.stderr and "a real problem" in result.stderr
