"""The training worker (one process per GPU, started by torchrun): DeepSpeed engine, loop, checkpoints.

Exit codes: 0 done, or one of `exit_codes.py` (preempted, non-finite loss, bad input, forgetting budget exceeded).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpt.api import ContinuedPretrainSpec
from cpt.memory import Footprint, ModelShape, choose_stage
from cpt.stages import TRAINING_COMPLETE, export_name
from cpt.throughput import flops_per_token
from cpt_pipeline.errors import exit_code_for, one_line
from cpt_pipeline.pause import pause_point
from cpt_pipeline.preprocess.segments import budgets as segment_budgets
from cpt_pipeline.preprocess.segments import manifests as segment_manifests
from cpt_pipeline.preprocess.segments import segment_dir
from cpt_pipeline.storage import Storage
from cpt_pipeline.train.checkpoint import Checkpointer, export_hf
from cpt_pipeline.train.chunked_loss import causal_lm_loss
from cpt_pipeline.train.data import DataError, MixedSamples, SegmentedSamples, load_set
from cpt_pipeline.train.distributed import (
    LOOP_COLLECTIVE_DEVICE,
    node_scratch,
    process_group_backend,
    process_group_timeout,
)
from cpt_pipeline.train.ds_config import deepspeed_config, effective_precision
from cpt_pipeline.train.exit_codes import EXIT_BAD_INPUT, EXIT_FORGETTING, EXIT_NONFINITE, EXIT_PREEMPTED
from cpt_pipeline.train.faults import Faults
from cpt_pipeline.train.guardrail_wait import handoff_dir, wait_for_verdict, waits_at
from cpt_pipeline.train.model import count_parameters, load_model
from cpt_pipeline.train.nonfinite import NonFiniteLoss, UpdateGate, after_update, before_update
from cpt_pipeline.train.progress import Progress, peak_flops
from cpt_pipeline.train.resume import ZERO_KEY, extends, recorded_segments, resume_plan
from cpt_pipeline.train.schedule import lr_multiplier, stable_end
from cpt_pipeline.train.shard_check import check_data, model_eos_id
from cpt_pipeline.train.zero_auto import device_memory_bytes

log = logging.getLogger(__name__)
LOG_SAMPLE_IDS = "CPT_LOG_SAMPLE_IDS"  # tests: record the sample ids of every step in metrics


@dataclass(frozen=True)
class Plan:
    """Steps and milestones of a run, derived from the spec, the world size and the budgets its data was prepared
    for (one per segment: docs/training.md, "Extending a run")."""

    tokens_per_step: int
    ends: tuple[int, ...]  # the steps done at the end of each segment
    milestones: dict[int, int]  # optimizer step -> token milestone (those after the earlier segments)
    stable_end: int | None = None  # wsd: the steps done when the decay starts (that checkpoint is kept)

    @property
    def total_steps(self) -> int:
        return self.ends[-1]

    @classmethod
    def of(cls, spec: ContinuedPretrainSpec, world_size: int, budgets: list[int] | None = None) -> Plan:
        per_step = (
            world_size * spec.training.micro_batch_size * spec.training.grad_accumulation * (spec.data.sequence_length)
        )
        budgets = budgets or [spec.data.token_budget]
        ends = tuple(max(1, math.ceil(b / per_step)) for b in budgets)
        if any(b <= a for a, b in itertools.pairwise(ends)):
            raise DataError(
                f"spec.data.tokenBudget grew by less than one optimizer step of {per_step} tokens "
                f"(segment budgets {budgets}): raise it further"
            )
        targets = {*(m for m in spec.data.milestones if m <= budgets[-1]), budgets[-1]}
        before = ends[-2] if len(ends) > 1 else 0  # milestones up to here were exported by an earlier segment
        steps = {step: m for m in sorted(targets) if (step := max(1, math.ceil(m / per_step))) > before}
        stable = stable_end(spec.training.schedule, ends[-1])
        return cls(per_step, ends, steps, stable if spec.training.schedule.type == "wsd" else None)


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only (not norms or biases), as HF Trainer and llm-foundry do."""
    decay, plain = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else plain).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


@dataclass
class Run:
    """What every step of a worker needs, built once by `setup`."""

    spec: ContinuedPretrainSpec
    storage: Storage
    plan: Plan
    engine: Any
    scheduler: Any
    gate: UpdateGate
    samples: SegmentedSamples
    checkpointer: Checkpointer
    progress: Progress
    faults: Faults
    precision: str
    stage: int
    device: str
    rank: int
    world: int
    local_rank: int
    scratch: Path
    start: int
    restarts: int
    latest: str | None
    stop: dict[str, int] = field(default_factory=lambda: {"signal": 0})


@dataclass(frozen=True)
class StepResult:
    """One optimizer step, as every rank agreed on it."""

    step: int  # counted from 1
    loss: float  # mean over every rank's micro-batches (NaN when one was not finite)
    lr: float
    seconds: float
    ids: list[str]
    skipped: str | None  # why the update was skipped (nonfinite.py), None when it was applied
    stopping: bool  # a rank received SIGTERM


def train(spec: ContinuedPretrainSpec, storage: Storage) -> int:
    run = setup(spec, storage)
    code = guardrail(run, run.start)  # resumed at a milestone: its verdict first
    step = run.start
    while code is None and step < run.plan.total_steps:
        code = commit(run, train_step(run, step))
        step += 1
        if code is None:
            pause_point("train-worker:step")
            code = guardrail(run, step)
    return finish(run) if code is None else code


def guardrail(run: Run, done: int) -> int | None:
    """Under guardrail action stop, after a milestone's export: wait for its verdict; an exit code when the
    budget is exceeded (or SIGTERM came while waiting)."""
    name = waits_at(run.spec, done, run.plan.milestones, run.plan.total_steps)
    if name is None:
        return None
    verdict = wait_for_verdict(
        run.storage, name, run.spec.evaluation.guardrail, run.stop, run.rank, run.local_rank, handoff_dir(run.scratch)
    )
    if verdict is None:
        log.warning("SIGTERM while waiting for the guardrail verdict: checkpoint of step %d saved, exiting", done)
        return EXIT_PREEMPTED
    if not verdict.get("breached"):
        return None
    if run.rank == 0:
        message = f"stopped after step {done}: {verdict.get('message', '')}"
        print(json.dumps({"event": "error", "kind": "forgetting-budget-exceeded", "message": message}), flush=True)
        log.error("%s", message)
    if run.local_rank == 0:
        shutil.rmtree(run.scratch, ignore_errors=True)
    return EXIT_FORGETTING


def setup(spec: ContinuedPretrainSpec, storage: Storage) -> Run:
    """Process group, shards, model and DeepSpeed engine, resumed from the latest checkpoint."""
    import deepspeed
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    deepspeed.init_distributed(dist_backend=process_group_backend(cuda), timeout=process_group_timeout())
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    scratch = node_scratch(local_rank, world)
    tcfg = spec.training
    manifests, segments, budgets = _shards(spec, storage, scratch)
    model = _model(spec, manifests)
    faults = Faults.from_env()
    faults.arm(model, rank)

    plan = Plan.of(spec, world, budgets)
    precision = effective_precision(tcfg.deepspeed.precision, device)
    checkpointer = Checkpointer(storage, scratch, tcfg.checkpoint.keep_last, rank, local_rank, {})
    recorded = checkpointer.recorded_plan()
    stage = _zero_stage(spec, model, precision, world, device, local_rank, recorded)
    checkpointer.plan = resume_plan(spec, world, list(plan.ends), stage, manifests)
    tag = _resume_tag(spec, checkpointer, recorded)
    if tag != checkpointer.latest():
        recorded = checkpointer.recorded_plan(tag)
    checkpointer.check_resumable(recorded, tag)
    engine, scheduler, gate = _engine(spec, model, deepspeed_config(tcfg, world, precision, stage), plan, cuda)

    state = checkpointer.load(engine, tag) or {}
    _follow_schedule(scheduler, lr_multiplier(tcfg.schedule, list(plan.ends)))
    fraction = float(spec.data.active_replay.fraction) if spec.data.active_replay else 0.0
    parts = [MixedSamples(domain, replay, fraction, tcfg.seed) for domain, replay in segments[: len(plan.ends)]]
    run = Run(
        spec,
        storage,
        plan,
        engine,
        scheduler,
        gate,
        SegmentedSamples(parts, [0, *plan.ends[:-1]]),
        checkpointer,
        _progress(spec, storage, plan, engine, stage, device, world, rank, scratch),
        faults,
        precision,
        stage,
        device,
        rank,
        world,
        local_rank,
        scratch,
        start=int(state.get("step", 0)),
        restarts=int(state.get("restarts", -1)) + 1 if state else 0,
        latest=checkpointer.storage.url(tag) if state and tag else None,
    )
    if rank == 0:
        run.progress.start(run.start)
        _log_start(run)
    signal.signal(signal.SIGTERM, lambda signum, _frame: run.stop.update(signal=signum))
    return run


def _shards(
    spec: ContinuedPretrainSpec, storage: Storage, scratch: Path
) -> tuple[dict[str, Any], list[tuple[list, list]], list[int]]:
    """The manifests ({segment folder: manifest}), the (domain, replay) shards of each segment, and the budgets
    the run trains to: each segment's, up to spec.data.tokenBudget (a budget the data does not cover yet is
    trained to once preprocessing has prepared its segment)."""
    names = ["domain", "replay"] if spec.data.active_replay is not None else ["domain"]
    found = {name: segment_budgets(storage, spec, name, segment_manifests(storage, name)) for name in names}
    prepared = found["domain"] or [spec.data.token_budget]  # none: load_set below names what is missing
    if any(budgets != prepared for budgets in found.values() if budgets):
        raise DataError(f"the prepared sets cover different budgets ({found}): run the preprocess and dedup stages")
    budget = spec.data.token_budget
    budgets = [b for b in prepared if b < budget] + [min(budget, prepared[-1])]
    budgets = sorted(set(budgets))
    if budget > prepared[-1]:
        log.warning(
            "spec.data.tokenBudget is %d, but the prepared data covers %d tokens: training stops there; run the "
            "preprocess and dedup stages to prepare the rest (docs/training.md, Extending a run)",
            budget,
            prepared[-1],
        )
    manifests: dict[str, dict[str, Any]] = {}
    segments: list[tuple[list, list]] = []
    for index in range(len(budgets)):
        loaded: dict[str, list] = {"domain": [], "replay": []}
        for name in names:
            folder = segment_dir(name, index)
            manifests[folder], loaded[name] = load_set(storage, folder, str(scratch / "shards"))
        segments.append((loaded["domain"], loaded["replay"]))
    return manifests, segments, budgets


def _resume_tag(spec: ContinuedPretrainSpec, checkpointer: Checkpointer, recorded: dict[str, Any] | None) -> str | None:
    """The checkpoint to resume from: the latest; when the budget grew under wsd and the latest is past the old
    decay's start, the kept checkpoint at that start (the stable phase continues from it)."""
    latest = checkpointer.latest()
    schedule = spec.training.schedule
    if latest is None or schedule.type != "wsd" or not extends(recorded, checkpointer.plan):
        return latest
    decay_start = stable_end(schedule, recorded_segments(recorded)[-1])
    if int(latest.split("-")[1]) <= decay_start:
        return latest
    kept = checkpointer.kept_at_or_before(decay_start)
    if kept is None:
        raise DataError(
            f"spec.data.tokenBudget grew, and a wsd run continues its stable phase from the checkpoint at the old "
            f"decay's start (step {decay_start}), but no checkpoint at or before it is kept in "
            f"{checkpointer.storage.url()}"
        )
    log.info("budget grew: the stable phase continues from checkpoint %s (the old decay began after it)", kept)
    return kept


def _follow_schedule(scheduler: Any, multiplier: Any) -> None:
    """Set the rate of the next step from the schedule of this run (a loaded scheduler keeps the rate its own
    schedule gave, which a grown budget changes)."""
    step = scheduler.last_epoch
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * multiplier(step)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def _model(spec: ContinuedPretrainSpec, manifests: dict[str, Any]) -> Any:
    """The model to train, checked against the shards."""
    tcfg = spec.training
    model = load_model(spec.model, manifests["domain"]["tokenizer"]["vocab_size"], tcfg.attention, tcfg.seed)
    check_data(manifests, spec, model.get_input_embeddings().num_embeddings, model_eos_id(spec.model, model.config))
    if tcfg.deepspeed.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


def _engine(spec: ContinuedPretrainSpec, model: Any, config: dict[str, Any], plan: Plan, cuda: bool) -> tuple[Any, ...]:
    """The DeepSpeed engine (AdamW without decay on norms and biases), its LR scheduler and the update gate
    (installed before the scheduler wraps the optimizer's step, when the optimizer is ours)."""
    import deepspeed
    import torch

    opt = spec.training.optimizer
    groups = _param_groups(model, float(opt.weight_decay))
    optimizer, gate = None, None
    if "optimizer" not in config:  # else DeepSpeed builds its CPU Adam (optimizer offload)
        optimizer = torch.optim.AdamW(
            groups, lr=float(opt.lr), betas=tuple(float(b) for b in opt.betas), eps=float(opt.eps), fused=cuda or None
        )
        gate = UpdateGate(optimizer)
    multiplier = lr_multiplier(spec.training.schedule, list(plan.ends))
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        model_parameters=groups if optimizer is None else None,
        config=config,
        lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, multiplier),
    )
    if spec.training.compile:
        engine.compile()
        log.info("model compiled with torch.compile (engine.is_compiled: %s)", engine.is_compiled)
    return engine, scheduler, gate or UpdateGate(engine.optimizer)


def _progress(
    spec: ContinuedPretrainSpec,
    storage: Storage,
    plan: Plan,
    engine: Any,
    stage: int,
    device: str,
    world: int,
    rank: int,
    scratch: Path,
) -> Progress:
    config = engine.module.config
    return Progress(
        storage,
        plan.total_steps,
        plan.tokens_per_step,
        flops_per_token(
            count_parameters(engine.module), config.num_hidden_layers, config.hidden_size, spec.data.sequence_length
        ),
        peak_flops(device),
        world,
        spec.training.log_interval_steps,
        _tensorboard_dir(storage, scratch) if rank == 0 else None,
        zero_stage=stage,
    )


def _log_start(run: Run) -> None:
    import torch

    log.info(
        "training %d parameters on %d %s process(es) (%d threads each), %s, ZeRO-%d, steps %d..%d of %d tokens "
        "each, milestones %s",
        count_parameters(run.engine.module),
        run.world,
        run.device,
        torch.get_num_threads(),
        run.precision,
        run.stage,
        run.start + 1,
        run.plan.total_steps,
        run.plan.tokens_per_step,
        {s: m for s, m in run.plan.milestones.items() if s > run.start},
    )


def _to_device(rows: Any, device: str) -> Any:
    """A micro-batch's token ids on the device; on a GPU through pinned memory, without waiting for the copy."""
    import torch

    tensor = torch.from_numpy(rows)
    return tensor.pin_memory().to(device, non_blocking=True) if device == "cuda" else tensor


def _loss(engine: Any, inputs: Any) -> Any:
    """The mean next-token loss of one micro-batch."""
    return causal_lm_loss(engine, inputs)


def train_step(run: Run, step: int) -> StepResult:
    """One optimizer step (`step` counts from 0): every micro-batch forward and backward, then the update,
    which every rank skips or applies alike (nonfinite.py). Loss figures stay on the device until the step's
    one host synchronisation (`_agree`)."""
    import torch

    began = time.perf_counter()
    tcfg, engine = run.spec.training, run.engine
    lr = float(run.scheduler.get_last_lr()[0])  # the rate this step trains with (the scheduler moves after it)
    sums = torch.zeros(2, dtype=torch.float64, device=run.device)  # loss sum, non-finite micro-batches
    ids: list[str] = []
    for micro in range(tcfg.grad_accumulation):
        shape = (tcfg.micro_batch_size, tcfg.grad_accumulation)
        rows, batch_ids = run.samples.batch(step, micro, run.rank, run.world, *shape)
        ids += batch_ids
        run.faults.at = (step + 1, micro)
        loss = run.faults.loss(_loss(engine, _to_device(rows, run.device)), step + 1, run.rank)
        value = loss.detach().double()
        sums += torch.stack([value, (~torch.isfinite(value)).double()])
        engine.backward(loss)
        if micro < tcfg.grad_accumulation - 1:
            engine.step()  # no update before the last micro-batch
    loss_sum, bad, stopping = _agree(run, sums)
    micro_batches = run.world * tcfg.grad_accumulation
    skip = before_update(tcfg.non_finite_loss, int(bad), micro_batches, step + 1, tcfg.optimizer.lr)
    skipped_before = engine.skipped_steps
    run.gate.skip = skip
    engine.step()
    run.gate.skip = False
    by_engine = engine.skipped_steps > skipped_before
    if by_engine:  # DeepSpeed does not move the schedule on a step it skipped; the schedule follows the step
        run.scheduler.step()
    skipped = after_update(run.precision, tcfg.non_finite_loss, by_engine, skip, step + 1, tcfg.optimizer.lr)
    return StepResult(step + 1, loss_sum / micro_batches, lr, time.perf_counter() - began, ids, skipped, stopping)


def _agree(run: Run, sums: Any) -> tuple[float, float, bool]:
    """(loss sum, non-finite micro-batches, whether any rank received SIGTERM) over every rank: the step's
    one host synchronisation."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1.0 if run.stop["signal"] else 0.0], dtype=torch.float64)
    totals = torch.cat([sums.to(LOOP_COLLECTIVE_DEVICE), flag])
    dist.all_reduce(totals)
    loss_sum, bad, stopping = totals.tolist()
    return loss_sum, bad, stopping > 0


def commit(run: Run, result: StepResult) -> int | None:
    """After a step: checkpoint (and at a milestone export) when due, record the step; an exit code when the
    worker must stop now (preempted)."""
    done, plan = result.step, run.plan
    checkpointed = (
        done in plan.milestones or done % run.spec.training.checkpoint.interval_steps == 0 or done == plan.stable_end
    )
    if checkpointed or result.stopping:
        run.latest = _checkpoint(run, done)
    extra: dict[str, Any] = {"skipped": result.skipped} if result.skipped else {}
    extra.update(peak_memory(run.device))
    if os.environ.get(LOG_SAMPLE_IDS):
        extra["sampleIds"] = _gather_ids(result.ids, run.world)
    if run.rank == 0:
        run.progress.step(
            done,
            result.loss,
            result.lr,
            result.seconds,
            run.latest,
            run.restarts,
            extra or None,
            checkpointed or result.stopping,
        )
    if result.stopping:
        log.warning("SIGTERM: checkpoint saved at step %d, exiting for a restart", done)
        if run.local_rank == 0:
            shutil.rmtree(run.scratch, ignore_errors=True)
        return EXIT_PREEMPTED
    if run.faults.exit_after == done:
        os._exit(137)
    return None


def _checkpoint(run: Run, done: int) -> str:
    """Save the checkpoint of step `done`, export it first when it is a milestone, then make it `latest`."""
    plan = run.plan
    state = {"step": done, "tokens": done * plan.tokens_per_step, "restarts": run.restarts}
    tag = run.checkpointer.save(run.engine, done, state, done in plan.milestones, stable=done == plan.stable_end)
    if done in plan.milestones:  # exported before `latest` moves: a restart after a failed export exports it again
        if run.faults.exit_before_export == done:
            os._exit(137)
        name = export_name(plan.milestones[done])
        export_hf(
            run.engine, run.stage, _tokenizer_dir(run.spec), run.storage, name, run.rank, done * plan.tokens_per_step
        )
        if run.rank == 0:
            run.progress.exports = sorted({*run.progress.exports, name})
    return run.checkpointer.commit(tag)


def finish(run: Run) -> int:
    """After the last step: `train/complete.json` (rank 0), then the node folder is removed."""
    import torch.distributed as dist

    if run.rank == 0:
        run.storage.write_json(
            {
                "exports": sorted(run.storage.list("exports")),
                "steps": run.plan.total_steps,
                "tokens": run.plan.total_steps * run.plan.tokens_per_step,
            },
            *TRAINING_COMPLETE,
        )
    dist.barrier()
    if run.local_rank == 0:
        shutil.rmtree(run.scratch, ignore_errors=True)
    return 0


def _zero_stage(
    spec: ContinuedPretrainSpec,
    model: Any,
    precision: str,
    world: int,
    device: str,
    local_rank: int,
    recorded: dict[str, Any] | None,
) -> int:
    """The ZeRO stage: the spec's; for auto, the one the latest checkpoint was written with, else the lowest
    that fits (cpt/memory.py)."""
    requested = spec.training.deepspeed.zero_stage
    if requested != "auto":
        return int(requested)
    if recorded and recorded.get(ZERO_KEY) is not None:
        return int(recorded[ZERO_KEY])
    shape = ModelShape(
        count_parameters(model),
        model.config.num_hidden_layers,
        model.config.hidden_size,
        model.get_input_embeddings().num_embeddings,
    )
    training = spec.training
    footprint = Footprint(
        training.deepspeed,
        shape,
        precision,
        training.micro_batch_size,
        spec.data.sequence_length,
        world,
        training.compile,
    )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    stage, why = choose_stage(footprint, device_memory_bytes(device, local_rank, local))
    if int(os.environ.get("RANK", "0")) == 0:
        log.info("%s", why)
    return stage


def peak_memory(device: str) -> dict[str, int]:
    """On a GPU, the most memory this process's tensors held so far (the allocator's own count: no device sync),
    recorded with each step (`peakMemoryBytes`) to check cpt.memory's estimate against; nothing on a CPU."""
    if device != "cuda":
        return {}
    import torch

    return {"peakMemoryBytes": int(torch.cuda.max_memory_allocated())}


def _gather_ids(ids: list[str], world: int) -> list[str]:
    import torch.distributed as dist

    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, ids)
    return [i for part in everyone for i in part]


def _tokenizer_dir(spec: ContinuedPretrainSpec) -> Path:
    from cpt_pipeline.preprocess.tokenize import resolve_tokenizer_dir

    return resolve_tokenizer_dir(spec.model.tokenizer_uri, spec.model.tokenizer_revision)


def _tensorboard_dir(storage: Storage, scratch: Path) -> Path:
    return Path(storage.path("train", "tensorboard")) if storage.is_local else scratch / "tensorboard"


def run_worker(spec: ContinuedPretrainSpec, storage: Storage) -> int:
    """The worker's exit code (see the module docstring), with errors as one clear line."""
    try:
        return train(spec, storage)
    except NonFiniteLoss as error:
        print(json.dumps({"event": "error", "kind": "non-finite-loss", "message": str(error)}), flush=True)
        log.error("%s", error)
        return EXIT_NONFINITE
    except Exception as error:
        code = exit_code_for(error)
        if code is None:
            raise  # a bug: keep the traceback
        kind = "data" if code == EXIT_BAD_INPUT else "unavailable"
        print(json.dumps({"event": "error", "kind": kind, "message": str(error)}), flush=True)
        log.debug("traceback of the error below", exc_info=error)
        log.error("%s", one_line("train", error))
        return code
    finally:
        _shutdown_distributed()


def _shutdown_distributed() -> None:
    """Tear the process group down before the interpreter exits: a communication thread still running at
    exit aborts the process ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
