"""Extending a run (docs/training.md): `cpt run`, then the YAML's budget raised and `cpt run` again continues it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cpt.api.training import Schedule
from cpt_pipeline.train.schedule import lr_multiplier
from tests.tiny_cpu import tiny_cpu_run

SCHEDULE = {"type": "wsd", "warmupFraction": "0.2", "decayFraction": "0.34", "minLrRatio": "0.1"}


def tiny_run(tmp_path: Path, budget_steps: int, milestone_steps: list[int]) -> Path:
    return tiny_cpu_run(tmp_path, budget_steps, milestone_steps, schedule=SCHEDULE)


def cpt_run(path: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cpt"), "run", str(path)],
        capture_output=True,
        text=True,
        cwd=path.parent,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CPT_LOG_SAMPLE_IDS": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]


def documents_read(run: Path, folder: str) -> set[tuple[int, int]]:
    """(unit, position) of every document the workers of a segment tokenized."""
    read = set()
    for rank in sorted((run / "work" / "preprocess" / folder).glob("rank-*")):
        with np.load(io.BytesIO((rank / "docs.npz").read_bytes())) as arrays:
            read |= set(zip(arrays["units"].tolist(), arrays["positions"].tolist(), strict=True))
    return read


@pytest.mark.parametrize("schedule", ["wsd"])
def test_a_raised_budget_continues_the_run_from_its_checkpoint(tmp_path: Path, schedule: str) -> None:
    """6 steps (milestone at 3), then the budget raised to 10 steps with a milestone at 8: training continues the
    stable phase from the checkpoint at the old decay's start (step 4), the steps taken keep their samples, the new
    steps read a new segment of documents, every step's rate follows the rule, and the new milestones are
    evaluated and in Table 1."""
    path = tiny_run(tmp_path, 6, [3])
    cpt_run(path)
    run = tmp_path / "run"
    first = metrics(run)
    peak = 1e-3
    cfg = Schedule.model_validate(SCHEDULE)
    assert [r["lr"] for r in first] == pytest.approx([peak * lr_multiplier(cfg, 6)(s) for s in range(6)])
    assert (run / "checkpoints" / "step-00000004-stable").is_dir()  # kept: 6 - round(0.34 x 6) steps

    path = tiny_run(tmp_path, 10, [3, 8])
    result = cpt_run(path)
    grown = metrics(run)
    assert [r["step"] for r in grown] == list(range(1, 11))  # no step repeated in the history
    assert [r["sampleIds"] for r in grown[:6]] == [r["sampleIds"] for r in first]  # steps taken keep their samples
    new_ids = [i for r in grown[6:] for i in r["sampleIds"]]
    assert all(i.startswith(("domain-segment-01/", "replay-segment-01/")) for i in new_ids), new_ids[:4]
    multiplier = lr_multiplier(cfg, [6, 10])
    assert [r["lr"] for r in grown] == pytest.approx([peak * multiplier(s) for s in range(10)])
    assert [r["lr"] for r in grown[4:6]] == [peak, peak]  # the stable phase went on where the first run decayed
    assert documents_read(run, "domain-segment-01").isdisjoint(documents_read(run, "domain"))  # no document twice
    assert documents_read(run, "domain-segment-01")
    exports = ["tokens-0000000006144", "tokens-0000000012288", "tokens-0000000016384", "tokens-0000000020480"]
    assert sorted(os.listdir(run / "exports")) == exports
    evaluation = json.loads((run / "eval" / "status.json").read_text())
    assert [m["tokens"] for m in evaluation["milestones"]] == [0, 6144, 12288, 16384, 20480]
    rows = (run / "report" / "table.md").read_text().splitlines()[2:]
    assert len(rows) == 5, rows
    assert "train: step 10/10 (100%)" in result.stdout
