"""The hot loop on CPU with real DeepSpeed: how often it waits for the device, and torch.compile against eager."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline.train import test_train
from tests.pipeline.train.test_train import REPO, metrics, run_dir, train

prepared = test_train.prepared  # the shards fixture, shared with the multi-process tests
ONE_RANK = {"procsPerNode": 1, "microBatchSize": 2, "gradAccumulation": 2}
STAGE_0 = {"zeroStage": 0, "precision": "fp32", "gradientCheckpointing": False}


def test_the_loop_waits_for_the_device_at_most_once_per_optimizer_step(tmp_path: Path, prepared: Path) -> None:
    """Loss sums and non-finite checks stay on the device: the pipeline's code calls Tensor.item, __float__,
    __bool__, tolist or cpu at most once per optimizer step (2 micro-batches each), checkpoints and exports
    included (tests/pipeline/train/sync_counter.py runs the worker and counts)."""
    spec, out = run_dir(tmp_path, prepared, deepspeed=STAGE_0, **ONE_RANK)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rank = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.pipeline.train.sync_counter", str(spec)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, **rank, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().split("\n")[-1])
    assert report["exit"] == 0, result.stderr[-3000:]
    steps = len(metrics(out))
    assert steps == 24
    assert sum(report["calls"].values()) <= steps, report["calls"]


def test_compiled_training_equals_eager(tmp_path: Path, prepared: Path) -> None:
    """spec.training.compile: torch.compile through DeepSpeed's engine gives eager mode's losses (1e-4)."""
    losses = {}
    for compiled in (False, True):
        spec, out = run_dir(tmp_path / str(compiled), prepared, deepspeed=STAGE_0, compile=compiled, **ONE_RANK)
        result = train(spec)
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("engine.is_compiled: True" in result.stderr) is compiled
        losses[compiled] = [r["loss"] for r in metrics(out)]
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)
    assert losses[True][-1] < losses[True][0]


def test_the_peak_memory_is_recorded_only_on_a_gpu_from_the_allocators_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step's row on a GPU carries `peakMemoryBytes` (bench/gpu_throughput.py checks cpt.memory's estimate
    against it); torch.cuda.max_memory_allocated reads the allocator's count without synchronising."""
    import torch

    from cpt_pipeline.train.loop import peak_memory

    assert peak_memory("cpu") == {}
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 12_345)
    assert peak_memory("cuda") == {"peakMemoryBytes": 12_345}
