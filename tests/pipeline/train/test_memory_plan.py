"""The training stage refuses a micro-batch that no ZeRO stage fits, before training, with one line naming
`microBatchSize` and the largest value that fits (exit 4)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from cpt_pipeline.train.exit_codes import EXIT_BAD_INPUT
from tests.pipeline.train.test_train import prepared, resource, train, write

__all__ = ["prepared"]  # the module-scoped shards fixture


def test_a_micro_batch_that_fits_no_stage_exits_4_naming_the_largest_that_fits(tmp_path: Path, prepared: Path) -> None:
    # stories260K at 65536 x 64 tokens without checkpointing: ~100 GB of activations, more than this machine
    out = tmp_path / "out"
    shutil.copytree(prepared, out / "data")
    doc = resource(
        str(out),
        procsPerNode=1,
        microBatchSize=65536,
        deepspeed={"zeroStage": "auto", "precision": "fp32", "gradientCheckpointing": False},
    )
    doc["spec"]["data"].update(tokenBudget=65536 * 64, milestones=[])
    result = train(write(doc, tmp_path / "cpt.yaml"))
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "train failed: " in line]
    assert len(lines) == 1 and "spec.training.microBatchSize 65536 does not fit the device" in lines[0], lines
    best = int(re.search(r"set microBatchSize to (\d+) or less", lines[0]).group(1))
    assert 1 <= best < 65536
    assert "Traceback" not in result.stderr and not (out / "checkpoints").exists()
