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
from typing import IO, Any

from cpt.api import ContinuedPretrainSpec
from cpt.exit_codes import EXIT_FORGETTING
from cpt.stages import Stage, parallelism, stage_argv, verdict_path
from cpt_pipeline.__main__ import INDEX_ENV
from cpt_pipeline.console import Console
from cpt_pipeline.interrupt import POLL_SECONDS, RUNNER_PID_ENV, Interrupt
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
    stop: threading.Event | None = None,
) -> None:
    """Run one stage as `processes` processes (JOB_COMPLETION_INDEX 0..N-1, as cpt.stages.parallelism says). With
    a console and a log, the processes' output goes to the log and the console shows their progress. With an
    `interrupt`, the processes run in their own process groups, read no terminal (stdin is /dev/null: a
    background group reading it would be stopped by SIGTTIN), die with this process (CPT_RUNNER_PID), and a
    Ctrl-C, SIGTERM or SIGHUP ends the stage with `Interrupted` once they have exited, whatever their exit
    codes. Setting `stop` terminates them (SIGTERM: training saves a checkpoint); a failure raises StageFailed
    with the exit codes."""
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
    failed = [(rank, code) for rank, code in ((r, _exit_code(p, stop)) for r, p in enumerate(running)) if code != 0]
    for reader in readers:
        reader.join()
    if interrupt is not None:
        interrupt.check()
    if failed:
        message = f"stage {stage}: " + ", ".join(f"rank {r} exited with {c}" for r, c in failed)
        raise StageFailed(message, [c for _, c in failed])


class StageFailed(RuntimeError):
    """A stage's process exited with an error; `codes` are their exit codes (`cpt/exit_codes.py`)."""

    def __init__(self, message: str, codes: list[int]) -> None:
        super().__init__(message)
        self.codes = codes


def _exit_code(process: subprocess.Popen, stop: threading.Event | None) -> int:
    """The process's exit code, polling (a SIGINT handled meanwhile is passed on at once, as Interrupt.wait does);
    once `stop` is set, the process is terminated."""
    while True:
        if stop is not None and stop.is_set() and process.poll() is None:
            process.terminate()
            stop = None
        try:
            return process.wait(timeout=POLL_SECONDS)
        except subprocess.TimeoutExpired:
            continue


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
    storage = Storage.from_spec(spec.storage)
    console = Console()
    chosen = stages or list(Stage)
    guarded = spec.evaluation.guardrail is not None and Stage.TRAIN in chosen
    stopped = None
    with Interrupt().handling() as interrupt:
        for stage in chosen:
            interrupt.check()
            world = spec.data.preprocessing.workers if stage in (Stage.PREPROCESS, Stage.DEDUP) else 1
            common = {"spec_path": spec_path, "storage": storage, "console": console, "env": env, "cwd": cwd}
            if guarded and stage == Stage.TRAIN:
                stopped = train_with_milestone_evaluations(**common, interrupt=interrupt)
            else:
                processes = parallelism(spec, stage)
                displayed_stage(stage, world_size=world, processes=processes, interrupt=interrupt, **common)
    from cpt_pipeline.report.summary import run_summary

    summary = run_summary(storage)
    if summary:
        print(f"== summary\n{summary}", flush=True)
    if stopped:
        raise RuntimeError(f"ForgettingBudgetExceeded: {stopped}")
    breach = breach_message(storage) if guarded else None
    if breach:  # action warn: the run went on
        print(f"warning: ForgettingBudgetExceeded: {breach}", flush=True)


def displayed_stage(
    stage: Stage,
    *,
    spec_path: Path,
    storage: Storage,
    console: Console,
    label: str | None = None,
    stop: threading.Event | None = None,
    guardrail_stops: bool = False,
    **run_args: Any,
) -> bool:
    """One stage with its log and the live display. False when training stopped on the forgetting guardrail
    (`guardrail_stops`); any other failure raises RuntimeError naming the log."""
    log = StageLog(storage, stage)
    console.start(label or stage)
    try:
        run_stage(stage, spec_path, console=console, log=log, stop=stop, **run_args)
    except StageFailed as error:
        if guardrail_stops and EXIT_FORGETTING in error.codes:
            console.finish(False, log.location, "stopped: the forgetting budget is exceeded (evaluation.guardrail)")
            return False
        console.finish(False, log.location, str(error))
        raise RuntimeError(f"{error} (log: {log.location})") from None
    except (RuntimeError, KeyboardInterrupt) as error:  # the live display must end, or the cursor stays hidden
        console.finish(False, log.location, str(error) or "interrupted")
        if isinstance(error, KeyboardInterrupt):
            raise
        raise RuntimeError(f"{error} (log: {log.location})") from None
    finally:
        log.close()
    console.finish(True, log.location)
    return True


def train_with_milestone_evaluations(
    *, spec_path: Path, storage: Storage, console: Console, **run_args: Any
) -> str | None:
    """Training under evaluation.guardrail, as the operator runs it: the base model is evaluated first, and each
    milestone export as soon as training writes it, while training goes on (under action stop, training waits
    for each verdict). The breach message when the guardrail stopped training, else None."""
    common = {"spec_path": spec_path, "storage": storage, "console": console, **run_args}
    displayed_stage(Stage.EVALUATE, label="evaluate (baseline)", extra=["--target", "baseline"], **common)
    watcher = MilestoneEvaluations(storage, {"spec_path": spec_path, "console": console, **run_args})
    watcher.start()
    try:
        trained = displayed_stage(Stage.TRAIN, stop=watcher.failed, guardrail_stops=True, **common)
    except RuntimeError:
        if watcher.error is not None:  # training was stopped because a milestone's evaluation failed
            raise watcher.error from None
        raise
    finally:
        watcher.training_done.set()
        watcher.join()
    if watcher.error is not None:
        raise watcher.error
    return None if trained else breach_message(storage) or "the forgetting budget is exceeded (evaluation.guardrail)"


class MilestoneEvaluations(threading.Thread):
    """Evaluates each complete milestone export (`evaluate --target <export>`) as soon as it appears, until
    training is done; its output goes to `logs/evaluate.log`. A failed evaluation sets `failed`, which stops
    training (it could wait for that verdict forever)."""

    def __init__(self, storage: Storage, run_args: dict[str, Any], poll: float = 1.0) -> None:
        super().__init__(name="milestone-evaluations", daemon=True)
        self.storage, self.run_args, self.poll = storage, run_args, poll
        self.training_done, self.failed = threading.Event(), threading.Event()
        self.error: RuntimeError | None = None

    def exports(self) -> list[str]:
        return [
            name
            for name in sorted(self.storage.list("exports"))
            if name.startswith("tokens-") and self.storage.exists("exports", name, "export.json")
        ]

    def run(self) -> None:
        seen: set[str] = set()
        log = StageLog(self.storage, Stage.EVALUATE)
        try:
            while True:
                last = self.training_done.is_set()  # before listing: an export written just before is still seen
                for name in [n for n in self.exports() if n not in seen]:
                    seen.add(name)
                    run_stage(Stage.EVALUATE, extra=["--target", name], log=log, **self.run_args)
                if last:
                    return
                self.training_done.wait(self.poll)
        except RuntimeError as error:
            self.error = RuntimeError(f"milestone evaluation: {error} (log: {log.location})")
            self.failed.set()
        except KeyboardInterrupt:  # Ctrl-C: the runner's main thread ends the run
            pass
        finally:
            log.close()


def breach_message(storage: Storage) -> str | None:
    """The message of the first breaching verdict in storage, if any."""
    for name in sorted(storage.list("eval")):
        if storage.exists(*verdict_path(name)):
            verdict = storage.read_json(*verdict_path(name))
            if verdict.get("breached"):
                return str(verdict.get("message", ""))
    return None
