"""The GPU throughput benchmark drives the real training stage (smoke mode on CPU), so the first run on a GPU
exercises the product's own launcher, process group, DeepSpeed engine and loop."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from cpt.throughput import parse_table

REPO = Path(__file__).resolve().parent.parent
SMOKE = ["--device", "cpu", "--preset", "tiny", "--seq", "64", "--micro-batch", "4", "--steps", "3", "--warmup", "1"]


def test_gpu_throughput_smoke_runs_the_training_stage() -> None:
    result = subprocess.run(
        [sys.executable, "-P", "bench/gpu_throughput.py", *SMOKE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stage = re.search(r"training stage \(python -m cpt_pipeline train, (\d+) steps\): ([\d,]+) tokens/s", result.stdout)
    assert stage and int(stage.group(1)) == 5, result.stdout  # warmup + steps + the final (exporting) step
    assert int(stage.group(2).replace(",", "")) > 0
    assert re.search(r"training stage / plain PyTorch: \d+\.\d\dx", result.stdout), result.stdout
    # the figure as an entry of the throughput table: on CPU no GPU type matches, so it names the device
    _, entry = result.stdout.split("no GPU type of cpt/throughput.yaml is cpu:\n")
    (figure,) = yaml.safe_load(entry)
    assert figure["kind"] == "bench" and figure["tokensPerSecond"] == int(stage.group(2).replace(",", ""))
    assert (figure["layers"], figure["hidden"], figure["sequenceLength"]) == (2, 64, 64)  # the tiny preset at 64
    table = parse_table({"gpus": [{"name": "cpu", "memoryGB": 1}], "figures": [figure]})  # a valid entry
    assert table.figures_for("cpu")[0].source.startswith("bench/gpu_throughput.py on one cpu")


def test_preprocess_scale_smoke_runs_both_stages_and_reports_memory() -> None:
    result = subprocess.run(
        [sys.executable, "-P", "bench/preprocess_scale.py", "--tokens", "200000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"preprocess \+ dedup / tokenizer only: \d+\.\d\dx", result.stdout), result.stdout
    kept = re.search(r"kept (\d+) documents, removed (\d+) duplicates", result.stdout)
    assert kept and int(kept.group(1)) > 0 and int(kept.group(2)) > 0, result.stdout  # planted copies are found
    peaks = re.findall(r"(?:preprocess worker|dedup partition) \d+ (\d+)", result.stdout)
    assert len(peaks) == 4 and all(int(p) > 0 for p in peaks), result.stdout
