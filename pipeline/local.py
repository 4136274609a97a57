"""Run pipeline stages on this machine, as the operator runs them in pods: same argv, same environment contract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cpt.stages import Stage, stage_argv
from cpt_pipeline.__main__ import INDEX_ENV

PARALLEL_STAGES = {Stage.PREPROCESS}  # one process per worker rank; the others run once
WORLD_STAGES = {Stage.PREPROCESS, Stage.DEDUP}  # take --world-size (the number of preprocessing workers)


def run_stage(
    stage: Stage,
    spec_path: Path,
    *,
    world_size: int = 1,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run one stage: `world_size` processes (JOB_COMPLETION_INDEX 0..N-1) for parallel stages, else one."""
    argv = stage_argv(
        stage, str(spec_path), python=sys.executable, extra=[*(extra or []), "--world-size", str(world_size)]
    )
    processes = world_size if stage in PARALLEL_STAGES else 1
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    running = []
    for rank in range(processes):
        child_env = {
            **os.environ,
            **(env or {}),
            INDEX_ENV: str(rank),
            "RAYON_NUM_THREADS": threads,
            "OMP_NUM_THREADS": threads,
        }
        running.append(subprocess.Popen(argv, env=child_env, cwd=cwd))
    failed = [(rank, code) for rank, code in ((r, p.wait()) for r, p in enumerate(running)) if code != 0]
    if failed:
        raise RuntimeError(f"stage {stage}: " + ", ".join(f"rank {r} exited with {c}" for r, c in failed))


def run_preprocessing(
    spec_path: Path,
    world_size: int,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    shard_rows: int | None = None,
) -> None:
    """The preprocess workers in parallel, then the dedup/pack reduce."""
    run_stage(Stage.PREPROCESS, spec_path, world_size=world_size, env=env, cwd=cwd)
    extra = ["--shard-rows", str(shard_rows)] if shard_rows else None
    run_stage(Stage.DEDUP, spec_path, world_size=world_size, extra=extra, env=env, cwd=cwd)


def run_pipeline(
    spec_path: Path, stages: list[Stage] | None = None, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> None:
    """Every stage of a run on this machine, in order (the operator runs the same commands as Jobs)."""
    from cpt_pipeline.__main__ import load_spec

    spec = load_spec(str(spec_path))
    if spec.training.nodes != 1:
        raise ValueError(f"{spec_path}: a local run uses one node, but spec.training.nodes is {spec.training.nodes}")
    env = dict(env or {})
    try:
        import torch

        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:
        pass
    workers = spec.data.preprocessing.workers
    for stage in stages or list(Stage):
        world = workers if stage in (Stage.PREPROCESS, Stage.DEDUP) else 1
        print(f"== {stage}", flush=True)
        run_stage(stage, spec_path, world_size=world, env=env, cwd=cwd)
    from cpt_pipeline.report.summary import run_summary
    from cpt_pipeline.storage import Storage

    summary = run_summary(Storage.from_spec(spec.storage))
    if summary:
        print(f"== summary\n{summary}", flush=True)
