"""The DeepSpeed configuration of a run, from spec.training."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cpt.api.training import TrainingSpec

log = logging.getLogger(__name__)


def bf16_native() -> bool:
    """Whether this GPU computes in bf16 natively (compute capability 8.0 and later). torch's plain
    `is_bf16_supported()` also counts emulation (V100, T4), where bf16 is slow and fp16 is the right choice."""
    import torch

    return torch.cuda.is_bf16_supported(including_emulation=False)


def effective_precision(requested: str, device: str, native_bf16: Callable[[], bool] = bf16_native) -> str:
    """bf16 where the GPU supports it natively, else fp16; fp16 as asked; on CPU (tests, laptops) fp32."""
    if requested == "fp32":
        return "fp32"
    if device == "cuda":
        if requested == "bf16" and not native_bf16():
            log.warning("bf16 is not supported natively on this GPU (only emulated): training in fp16")
            return "fp16"
        return requested
    log.info("precision %s requested, but the device is %s: training in fp32", requested, device)
    return "fp32"


def deepspeed_config(training: TrainingSpec, world_size: int, precision: str, stage: int) -> dict[str, Any]:
    """The engine config; `stage` is the ZeRO stage in use (zeroStage, or the one auto chose)."""
    ds = training.deepspeed
    zero: dict[str, Any] = {"stage": stage, "contiguous_gradients": True, "overlap_comm": stage > 0}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_params == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    opt = training.optimizer
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": training.micro_batch_size,
        "gradient_accumulation_steps": training.grad_accumulation,
        "train_batch_size": training.micro_batch_size * training.grad_accumulation * world_size,
        "gradient_clipping": float(opt.grad_clip),
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
    }
    if ds.offload_optimizer == "cpu":  # DeepSpeed builds its CPU Adam for offloaded optimizer states
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": float(opt.lr),
                "betas": [float(b) for b in opt.betas],
                "eps": float(opt.eps),
                "weight_decay": float(opt.weight_decay),
            },
        }
    return config
