"""`spec.training`: topology, resources, DeepSpeed, optimizer, schedule, batch and checkpoints."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from cpt.api.base import MAX_LIST, ApiModel, Resources, Rule, SecretKeyRef, cel_not_decimal, decimal, section

# An environment variable name (a C identifier, what shells and most programs accept).
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A name with one of these words between underscores (WANDB_API_KEY, HF_TOKEN, MLFLOW_TRACKING_PASSWORD) holds a
# credential; TOKENIZERS_PARALLELISM or KEYRING_BACKEND do not. The same regex in CEL (RE2) and in Python.
CREDENTIAL_NAME = r"(?i)(^|_)(KEY|APIKEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)"


def plain_credentials(env: dict[str, str]) -> list[str]:
    """The names in a plain-text env map that look like credentials."""
    return [name for name in env if re.search(CREDENTIAL_NAME, name)]


ZERO_STAGES = ("0", "1", "2", "3", "auto")


def _check_zero_stage(value: int | str) -> int | str:
    if isinstance(value, bool) or str(value) not in ZERO_STAGES:
        raise ValueError(f'{value!r} is not a ZeRO stage: use 0, 1, 2, 3 or "auto"')
    return "auto" if value == "auto" else int(value)


ZeroStage = Annotated[
    int | str, AfterValidator(_check_zero_stage), Field(json_schema_extra={"x-kubernetes-int-or-string": True})
]


class DeepSpeed(ApiModel):
    """DeepSpeed engine settings (the paper: ZeRO-3, gradient checkpointing, CPU offload, bf16)."""

    zero_stage: ZeroStage = Field(
        "auto",
        description='ZeRO stage 0-3, or "auto": the lowest stage whose per-device memory estimate (weights, '
        "gradients, optimizer state, activations at the micro-batch) fits the device; the stage chosen is in "
        "status.training.zeroStage and kept when the run resumes.",
    )
    offload_optimizer: Literal["none", "cpu"] = Field("none", description="Offload optimizer state to CPU.")
    offload_params: Literal["none", "cpu"] = Field("none", description="Offload parameters to CPU (ZeRO-3 only).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass.")
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="Mixed precision; bf16 falls back to fp32 where unsupported (CPU tests)."
    )

    rules = (
        Rule(
            cel="string(self.zeroStage) in ['0', '1', '2', '3', 'auto']",
            message='zeroStage must be 0, 1, 2, 3 or "auto"',
            field="zeroStage",
            check=lambda d: str(d.zero_stage) in ZERO_STAGES,
        ),
        Rule(
            cel="self.offloadParams == 'none' || string(self.zeroStage) in ['3', 'auto']",
            message="offloadParams needs zeroStage 3 (or auto, which then picks 3)",
            field="offloadParams",
            check=lambda d: d.offload_params == "none" or str(d.zero_stage) in ("3", "auto"),
        ),
        Rule(
            cel="self.offloadOptimizer == 'none' || string(self.zeroStage) in ['1', '2', '3', 'auto']",
            message="offloadOptimizer needs zeroStage 1 or higher (or auto, which then picks 1 or higher)",
            field="offloadOptimizer",
            check=lambda d: d.offload_optimizer == "none" or str(d.zero_stage) in ("1", "2", "3", "auto"),
        ),
    )


class Optimizer(ApiModel):
    """AdamW hyper-parameters (decimal strings; the paper's values by default)."""

    name: Literal["adamw"] = Field("adamw", description="Optimizer.")
    lr: decimal(gt=0, le=1) = Field("1e-4", description='Peak learning rate, e.g. "1e-4".')
    weight_decay: decimal(ge=0, le=1) = Field("0.005", description="Decoupled weight decay.")
    betas: list[decimal(ge=0, lt=1)] = Field(
        default_factory=lambda: ["0.9", "0.95"], min_length=2, max_length=2, description="Adam beta1, beta2."
    )
    eps: decimal(gt=0, le=1) = Field("1e-8", description="Adam epsilon.")
    grad_clip: decimal(ge=0) = Field("1.0", description="Gradient norm clipping (0 turns it off).")


class Schedule(ApiModel):
    """Learning-rate schedule."""

    type: Literal["cosine", "wsd", "constant"] = Field(
        "cosine",
        description="cosine (warmup then cosine decay), wsd (warmup-stable-decay), constant (after warmup).",
    )
    warmup_fraction: decimal(ge=0, lt=1) = Field("0.1", description="Share of steps spent warming up.")
    decay_fraction: decimal(ge=0, le=1) = Field("0.2", description="wsd: share of steps spent decaying at the end.")
    min_lr_ratio: decimal(ge=0, le=1) = Field(
        "0.0", description="Learning rate of the last step as a share of the peak (cosine and wsd)."
    )
    rewarm: bool = Field(
        True,
        description="Warm the rate up from zero over warmupFraction at the start of this run (re-warming: the base "
        "model's own schedule had decayed); false starts at the peak rate with no warmup.",
    )

    rules = (
        Rule(
            cel=f"self.type != 'wsd' || {cel_not_decimal('self.warmupFraction')} || "
            f"{cel_not_decimal('self.decayFraction')} || "
            "double(self.warmupFraction) + double(self.decayFraction) <= 1.0",
            message="warmupFraction + decayFraction must not exceed 1",
            field="decayFraction",
            check=lambda s: s.type != "wsd" or float(s.warmup_fraction) + float(s.decay_fraction) <= 1.0,
        ),
    )


class Checkpointing(ApiModel):
    """Checkpoints in the storage URI."""

    interval_steps: int = Field(500, ge=1, le=10**9, description="Save every N optimizer steps.")
    keep_last: int = Field(3, ge=1, le=1000, description="Keep this many periodic checkpoints (milestones are kept).")


class TrainingSpec(ApiModel):
    """How the model is trained."""

    nodes: int = Field(1, ge=1, le=4096, description="Number of nodes (one pod each).")
    procs_per_node: int = Field(1, ge=1, le=64, description="Processes (usually GPUs) per node.")
    resources: Resources = section(Resources, "Resources per node.")
    deepspeed: DeepSpeed = section(DeepSpeed, "DeepSpeed settings.")
    optimizer: Optimizer = section(Optimizer, "Optimizer.")
    schedule: Schedule = section(Schedule, "Learning-rate schedule.")
    micro_batch_size: int = Field(80, ge=1, le=65536, description="Sequences per process per micro-step.")
    grad_accumulation: int = Field(2, ge=1, le=65536, description="Micro-steps per optimizer step.")
    checkpoint: Checkpointing = section(Checkpointing, "Checkpointing.")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Random seed (data order, init).")
    log_interval_steps: int = Field(
        10, ge=1, le=10**6, description="Write progress (status) and metrics to storage every N steps."
    )
    non_finite_loss: Literal["stop", "skipBatch"] = Field(
        "stop",
        description="On a NaN/inf loss (or, in bf16/fp32, non-finite gradients) on any rank: stop every rank with "
        "exit code 3, or skip that step's update on every rank (weights and optimizer state unchanged). fp16 "
        "loss-scale overflows are always skipped, as DeepSpeed intends.",
    )
    compile: bool = Field(
        False,
        description="Compile the model with torch.compile (through DeepSpeed's engine.compile): faster steps on a "
        "GPU after a first slow one; the losses equal eager mode's.",
    )
    attention: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto", description="Attention kernel; auto picks SDPA (flash on GPU) where available."
    )
    extra_env: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_LIST,
        description="Extra environment variables for the training pods (e.g. NCCL settings), in plain text: they "
        "are stored in the resource, the spec ConfigMap and the JobSet, so credentials go in secretEnv.",
    )
    secret_env: dict[str, SecretKeyRef] = Field(
        default_factory=dict,
        max_length=MAX_LIST,
        description="Environment variables of the training pods taken from a key of a Secret in the run's "
        'namespace (valueFrom.secretKeyRef), e.g. {"WANDB_API_KEY": {"name": "wandb", "key": "api-key"}}. '
        "cpt run takes each from the caller's environment under the same name instead.",
    )

    rules = (
        Rule(
            cel=f"self.extraEnv.all(name, !name.matches('{CREDENTIAL_NAME}'))",
            message="training.extraEnv is plain text (stored in the resource, the spec ConfigMap and the JobSet): "
            "a name with KEY, TOKEN, SECRET, PASSWORD or CREDENTIALS is a credential; put it in a Secret and "
            "reference it from training.secretEnv",
            field="extraEnv",
            check=lambda t: not plain_credentials(t.extra_env),
        ),
        Rule(
            cel=f"self.secretEnv.all(name, name.matches('{ENV_NAME}'))",
            message="training.secretEnv: every key must be an environment variable name (letters, digits and _, "
            "not starting with a digit)",
            field="secretEnv",
            check=lambda t: all(re.match(ENV_NAME, name) for name in t.secret_env),
        ),
        Rule(
            cel="self.secretEnv.all(name, !(name in self.extraEnv))",
            message="training: a variable is set in both extraEnv and secretEnv; keep it in one",
            field="secretEnv",
            check=lambda t: not set(t.secret_env) & set(t.extra_env),
        ),
    )

    @property
    def world_size(self) -> int:
        """Total number of training processes."""
        return self.nodes * self.procs_per_node

    def tokens_per_step(self, sequence_length: int) -> int:
        """Tokens consumed by one optimizer step."""
        return self.world_size * self.micro_batch_size * self.grad_accumulation * sequence_length
