"""The training worker (one process per GPU, started by torchrun): DeepSpeed engine, loop, checkpoints.

Exit codes: 0 done, or one of `exit_codes.py` (preempted, non-finite loss, bad input).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpt.api import ContinuedPretrainSpec
from cpt.stages import TRAINING_COMPLETE, export_name
from cpt_pipeline.errors import exit_code_for, one_line
from cpt_pipeline.storage import Storage
from cpt_pipeline.train.checkpoint import Checkpointer, export_hf
from cpt_pipeline.train.chunked_loss import causal_lm_loss
from cpt_pipeline.train.data import MixedSamples, load_set
from cpt_pipeline.train.distributed import LOOP_COLLECTIVE_DEVICE, node_scratch, process_group_backend
from cpt_pipeline.train.ds_config import deepspeed_config, effective_precision
from cpt_pipeline.train.exit_codes import EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_PREEMPTED
from cpt_pipeline.train.model import count_parameters, load_model
from cpt_pipeline.train.progress import Progress, flops_per_token, peak_flops
from cpt_pipeline.train.resume import ZERO_KEY, resume_plan
from cpt_pipeline.train.schedule import lr_multiplier
from cpt_pipeline.train.shard_check import check_data, model_eos_id
from cpt_pipeline.train.zero_auto import Footprint, ModelShape, choose_stage, device_memory_bytes

log = logging.getLogger(__name__)
FAULT_EXIT_AFTER_STEPS = "CPT_FAULT_EXIT_AFTER_STEPS"  # tests: simulate a crash after step N
FAULT_NAN_AT_STEP = "CPT_FAULT_NAN_AT_STEP"  # tests: make the loss of step N non-finite
FAULT_EXIT_BEFORE_EXPORT = "CPT_FAULT_EXIT_BEFORE_EXPORT"  # tests: crash after step N's checkpoint, before its export
LOG_SAMPLE_IDS = "CPT_LOG_SAMPLE_IDS"  # tests: record the sample ids of every step in metrics


class NonFiniteLoss(RuntimeError):
    pass


@dataclass(frozen=True)
class Plan:
    """Steps and milestones of a run, derived from the spec and the world size."""

    tokens_per_step: int
    total_steps: int
    milestones: dict[int, int]  # optimizer step -> token milestone

    @classmethod
    def of(cls, spec: ContinuedPretrainSpec, world_size: int) -> Plan:
        per_step = (
            world_size * spec.training.micro_batch_size * spec.training.grad_accumulation * (spec.data.sequence_length)
        )
        steps = {max(1, math.ceil(m / per_step)): m for m in spec.data.milestones_with_budget}
        return cls(per_step, max(steps), steps)


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only (not norms or biases), as HF Trainer and llm-foundry do."""
    decay, plain = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else plain).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def train(spec: ContinuedPretrainSpec, storage: Storage) -> int:
    import deepspeed
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    deepspeed.init_distributed(dist_backend=process_group_backend(cuda))
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    scratch = node_scratch(local_rank, world)
    tcfg = spec.training

    manifests: dict[str, dict[str, Any]] = {}
    manifests["domain"], domain = load_set(storage, "domain", str(scratch / "shards"))
    replay: list = []
    if spec.data.active_replay is not None:
        manifests["replay"], replay = load_set(storage, "replay", str(scratch / "shards"))
    model = load_model(spec.model, manifests["domain"]["tokenizer"]["vocab_size"], tcfg.attention, tcfg.seed)
    check_data(manifests, spec, model.get_input_embeddings().num_embeddings, model_eos_id(spec.model, model.config))
    if tcfg.deepspeed.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False

    plan = Plan.of(spec, world)
    precision = effective_precision(tcfg.deepspeed.precision, device)
    checkpointer = Checkpointer(storage, scratch, tcfg.checkpoint.keep_last, rank, local_rank, {})
    recorded = checkpointer.recorded_plan()
    stage = _zero_stage(spec, model, precision, world, device, local_rank, recorded)
    checkpointer.plan = resume_plan(spec, world, plan.total_steps, stage, manifests)
    checkpointer.check_resumable(recorded)
    config = deepspeed_config(tcfg, world, precision, stage)
    opt = tcfg.optimizer
    groups = _param_groups(model, float(opt.weight_decay))
    optimizer = None
    if "optimizer" not in config:
        optimizer = torch.optim.AdamW(
            groups, lr=float(opt.lr), betas=tuple(float(b) for b in opt.betas), eps=float(opt.eps), fused=cuda or None
        )
    multiplier = lr_multiplier(tcfg.schedule, plan.total_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        model_parameters=groups if optimizer is None else None,
        config=config,
        lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, multiplier),
    )

    state = checkpointer.load(engine) or {}
    start = int(state.get("step", 0))
    restarts = int(state.get("restarts", -1)) + 1 if state else 0
    latest = checkpointer.storage.url(checkpointer.latest()) if state else None
    samples = MixedSamples(
        domain, replay, float(spec.data.active_replay.fraction) if spec.data.active_replay else 0.0, tcfg.seed
    )
    params = count_parameters(engine.module)
    progress = Progress(
        storage,
        plan.total_steps,
        plan.tokens_per_step,
        flops_per_token(params, model.config.num_hidden_layers, model.config.hidden_size, spec.data.sequence_length),
        peak_flops(device),
        world,
        tcfg.log_interval_steps,
        _tensorboard_dir(storage, scratch) if rank == 0 else None,
        zero_stage=stage,
    )
    if rank == 0:
        progress.start(start)
        log.info(
            "training %d parameters on %d %s process(es) (%d threads each), %s, ZeRO-%d, steps %d..%d of %d tokens "
            "each, milestones %s",
            params,
            world,
            device,
            torch.get_num_threads(),
            precision,
            stage,
            start + 1,
            plan.total_steps,
            plan.tokens_per_step,
            {s: m for s, m in plan.milestones.items() if s > start},
        )

    stop = {"signal": 0}
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.update(signal=signum))
    nan_step = int(os.environ.get(FAULT_NAN_AT_STEP, "0"))
    crash_step = int(os.environ.get(FAULT_EXIT_AFTER_STEPS, "0"))
    for step in range(start, plan.total_steps):
        began = time.perf_counter()
        lr = float(scheduler.get_last_lr()[0])  # the rate this step trains with (the scheduler moves after it)
        total = torch.zeros(2, dtype=torch.float64, device=LOOP_COLLECTIVE_DEVICE)
        ids: list[str] = []
        for micro in range(tcfg.grad_accumulation):
            rows, batch_ids = samples.batch(step, micro, rank, world, tcfg.micro_batch_size, tcfg.grad_accumulation)
            ids += batch_ids
            inputs = torch.from_numpy(rows).to(device)
            loss = causal_lm_loss(engine, inputs)
            if nan_step and step + 1 == nan_step:
                loss = loss + float("nan")
            if _skip_micro_batch(loss, tcfg.non_finite_loss, spec, step + 1, rank):
                # Backpropagate zero through the same graph: every rank runs the same ZeRO hooks, and this
                # micro-batch adds nothing to the gradients.
                engine.backward(torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0) * 0.0)
                engine.step()
                continue
            engine.backward(loss)
            engine.step()
            total += torch.tensor([float(loss.detach()), 1.0], dtype=torch.float64, device=LOOP_COLLECTIVE_DEVICE)
        norm = engine.get_global_grad_norm()
        if norm is not None and not math.isfinite(float(norm)):
            _skip_micro_batch(torch.tensor(float("nan")), "stop", spec, step + 1, rank)
        flags = torch.tensor([stop["signal"]], dtype=torch.int64, device=LOOP_COLLECTIVE_DEVICE)
        dist.all_reduce(total)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        done = step + 1
        mean_loss = float(total[0] / total[1]) if total[1] else float("nan")
        checkpointed = done in plan.milestones or done % tcfg.checkpoint.interval_steps == 0 or bool(flags.item())
        if checkpointed:
            milestone = done in plan.milestones
            tag = checkpointer.save(
                engine, done, {"step": done, "tokens": done * plan.tokens_per_step, "restarts": restarts}, milestone
            )
            if milestone:  # exported before `latest` moves: a restart after a failed export exports it again
                if os.environ.get(FAULT_EXIT_BEFORE_EXPORT) == str(done):
                    os._exit(137)
                name = export_name(plan.milestones[done])
                export_hf(
                    engine,
                    stage,
                    _tokenizer_dir(spec),
                    storage,
                    name,
                    rank,
                    done * plan.tokens_per_step,
                )
                if rank == 0:
                    progress.exports = sorted({*progress.exports, name})
            latest = checkpointer.commit(tag)
        if rank == 0:
            extra = {"sampleIds": _gather_ids(ids, world)} if os.environ.get(LOG_SAMPLE_IDS) else None
            progress.step(
                done,
                mean_loss,
                lr,
                time.perf_counter() - began,
                latest,
                restarts,
                extra,
                checkpointed,
            )
        elif os.environ.get(LOG_SAMPLE_IDS):
            _gather_ids(ids, world)
        if flags.item():
            log.warning("signal %d: checkpoint saved at step %d, exiting for a restart", flags.item(), done)
            if local_rank == 0:
                shutil.rmtree(scratch, ignore_errors=True)
            return EXIT_PREEMPTED
        if crash_step and done == crash_step:
            os._exit(137)
    if rank == 0:
        storage.write_json(
            {
                "exports": sorted(storage.list("exports")),
                "steps": plan.total_steps,
                "tokens": plan.total_steps * plan.tokens_per_step,
            },
            *TRAINING_COMPLETE,
        )
    dist.barrier()
    if local_rank == 0:
        shutil.rmtree(scratch, ignore_errors=True)
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
    that fits (zero_auto.py)."""
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
        training.deepspeed, shape, precision, training.micro_batch_size, spec.data.sequence_length, world
    )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    stage, why = choose_stage(footprint, device_memory_bytes(device, local_rank, local))
    if int(os.environ.get("RANK", "0")) == 0:
        log.info("%s", why)
    return stage


def _gather_ids(ids: list[str], world: int) -> list[str]:
    import torch.distributed as dist

    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, ids)
    return [i for part in everyone for i in part]


def _skip_micro_batch(loss: Any, policy: str, spec: ContinuedPretrainSpec, step: int, rank: int) -> bool:
    """Stop on a non-finite loss, or (skipBatch) agree across ranks to skip this micro-batch's backward."""
    import torch
    import torch.distributed as dist

    bad = torch.tensor(
        [0 if torch.isfinite(loss.detach()).item() else 1], dtype=torch.int64, device=LOOP_COLLECTIVE_DEVICE
    )
    if policy == "skipBatch":
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            log.warning("non-finite loss at step %d: micro-batch skipped on every rank", step)
        return bool(bad.item())
    if bad.item():
        raise NonFiniteLoss(
            f"non-finite loss at step {step} on rank {rank}: stopping (lower "
            f"spec.training.optimizer.lr, currently {spec.training.optimizer.lr}, or check the data)"
        )
    return False


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
