"""Run pipeline stages on this machine, as the operator runs them in pods: same argv, same environment contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from cpt.api import ContinuedPretrainSpec
from cpt.stages import Stage, parallelism, stage_argv
from cpt_pipeline.__main__ import INDEX_ENV
from cpt_pipeline.console import Console
from cpt_pipeline.interrupt import RUNNER_PID_ENV, Interrupt
from cpt_pipeline.storage import Storage

WORLD_STAGES = {Stage.PREPROCESS, Stage.DEDUP}  # take --world-size (the number of preprocessing workers)
# Progress bars of third-party libraries (lm-eval, transformers, the Hub) would fill the logs with carriage returns:
# turned off at their source. The live display shows progress instead.
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}


class StageLog:
    """`logs/<stage>.log` in the run's storage: written in place on a local filesystem, else uploaded when the
    stage ends (whether or not it succeeded). A rerun appends to it, after a line saying when it started."""

    def __init__(self, storage: Storage, stage: Stage) -> None:
        self.storage = storage
        self.name = f"{stage}.log"
        if storage.is_local:
            path = Path(storage.path("logs", self.name))
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            path = Path(tempfile.mkdtemp(prefix="kubecpt-log-")) / self.name
            if storage.exists("logs", self.name):
                path.write_bytes(storage.read_bytes("logs", self.name))
        self.path = path
        self.handle = path.open("a", encoding="utf-8")
        self.lock = threading.Lock()
        self.write(f"==== cpt run: {stage}, started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")

    @property
    def location(self) -> str:
        return self.storage.url("logs", self.name)

    def write(self, text: str) -> None:
        with self.lock:
            self.handle.write(text if text.endswith("\n") else text + "\n")
            self.handle.flush()

    def close(self) -> None:
        self.handle.close()
        if not self.storage.is_local:
            self.storage.put_file(str(self.path), "logs", self.name)
            shutil.rmtree(self.path.parent, ignore_errors=True)


def _follow(stream: IO[str], prefix: str, log: StageLog, console: Console) -> None:
    for text in stream:
        log.write(prefix + text)
        console.line(text)


def run_stage(
    stage: Stage,
    spec_path: Path,
    *,
    world_size: int = 1,
    processes: int = 1,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    console: Console | None = None,
    log: StageLog | None = None,
    interrupt: Interrupt | None = None,
) -> None:
    """Run one stage as `processes` processes (JOB_COMPLETION_INDEX 0..N-1, as cpt.stages.parallelism says). With
    a console and a log, the processes' output goes to the log and the console shows their progress. With an
    `interrupt`, the processes run in their own process groups, read no terminal (stdin is /dev/null: a
    background group reading it would be stopped by SIGTTIN), die with this process (CPT_RUNNER_PID), and a
    Ctrl-C, SIGTERM or SIGHUP ends the stage with `Interrupted` once they have exited, whatever their exit
    codes."""
    group: dict = {}
    if interrupt is not None:
        group = {"process_group": 0, "stdin": subprocess.DEVNULL}
        env = {**(env or {}), RUNNER_PID_ENV: str(os.getpid())}
    argv = stage_argv(
        stage, str(spec_path), python=sys.executable, extra=[*(extra or []), "--world-size", str(world_size)]
    )
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    running: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    for rank in range(processes):
        child_env = {
            **os.environ,
            **(env or {}),
            INDEX_ENV: str(rank),
            "RAYON_NUM_THREADS": threads,
            "OMP_NUM_THREADS": threads,
        }
        if console is None or log is None:
            running.append(subprocess.Popen(argv, env=child_env, cwd=cwd, **group))
            if interrupt is not None:
                interrupt.started(running[-1])
            continue
        child = subprocess.Popen(
            argv,
            env={**child_env, **QUIET_ENV},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            **group,
        )
        if interrupt is not None:
            interrupt.started(child)
        prefix = f"[{'worker' if stage is Stage.PREPROCESS else 'partition'} {rank}] " if processes > 1 else ""
        reader = threading.Thread(target=_follow, args=(child.stdout, prefix, log, console), daemon=True)
        reader.start()
        readers.append(reader)
        running.append(child)
    wait = interrupt.wait if interrupt is not None else subprocess.Popen.wait
    failed = [(rank, code) for rank, code in ((r, wait(p)) for r, p in enumerate(running)) if code != 0]
    for reader in readers:
        reader.join()
    if interrupt is not None:
        interrupt.check()
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
    """The preprocess workers in parallel, then the dedup partitions in parallel (the last one packs)."""
    from cpt_pipeline.__main__ import load_spec

    partitions = parallelism(load_spec(str(spec_path)), Stage.DEDUP)
    run_stage(Stage.PREPROCESS, spec_path, world_size=world_size, processes=world_size, env=env, cwd=cwd)
    extra = ["--shard-rows", str(shard_rows)] if shard_rows else None
    run_stage(Stage.DEDUP, spec_path, world_size=world_size, processes=partitions, extra=extra, env=env, cwd=cwd)


def missing_secret_env(spec: ContinuedPretrainSpec, env: Mapping[str, str]) -> list[str]:
    """training.secretEnv names the environment lacks. A local run reads no Secret: each variable comes from the
    caller's environment under the same name (`WANDB_API_KEY=... cpt run FILE`), as every variable does."""
    return [name for name in sorted(spec.training.secret_env) if name not in env]


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
    missing = missing_secret_env(spec, {**os.environ, **env})
    if missing and Stage.TRAIN in (stages or list(Stage)):
        print(
            f"note: training.secretEnv {', '.join(missing)} not set here; a local run takes them from its "
            "environment, not from the Secret",
            flush=True,
        )
    workers = spec.data.preprocessing.workers
    storage = Storage.from_spec(spec.storage)
    console = Console()
    with Interrupt().handling() as interrupt:
        for stage in stages or list(Stage):
            interrupt.check()
            world = workers if stage in (Stage.PREPROCESS, Stage.DEDUP) else 1
            log = StageLog(storage, stage)
            console.start(stage)
            try:
                processes = parallelism(spec, stage)
                run_stage(
                    stage,
                    spec_path,
                    world_size=world,
                    processes=processes,
                    env=env,
                    cwd=cwd,
                    console=console,
                    log=log,
                    interrupt=interrupt,
                )
            except (RuntimeError, KeyboardInterrupt) as error:  # the live display must end, or the cursor stays hidden
                console.finish(False, log.location, str(error) or "interrupted")
                if isinstance(error, KeyboardInterrupt):
                    raise
                raise RuntimeError(f"{error} (log: {log.location})") from None
            finally:
                log.close()
            console.finish(True, log.location)
    from cpt_pipeline.report.summary import run_summary

    summary = run_summary(storage)
    if summary:
        print(f"== summary\n{summary}", flush=True)
