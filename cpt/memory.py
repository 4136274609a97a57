"""Per-device memory of a training process for each ZeRO stage, and `zeroStage: auto`: the lowest stage whose
estimate fits the device. Pure arithmetic (no torch): the trainer, `cpt plan` and the operator's status.plan use it.

Lower stages partition less and communicate less, so they are faster whenever the model fits; ZeRO-3 is for
models that do not. The estimate (bytes per device) is the usual ZeRO accounting (Rajbhandari et al. 2020)
plus activations at the micro-batch (after Korthikanti et al. 2022, no attention matrix: SDPA/flash):

- per parameter: weights (2 bytes in bf16/fp16, 4 in fp32), gradients (the same), optimizer state (Adam m and
  v, plus an fp32 master copy in mixed precision: 12 or 8 bytes; none on the device when offloaded);
- stage 1 partitions the optimizer state over the processes, 2 also the gradients, 3 also the weights;
- activations: a full layer keeps about 20 values per token and hidden unit (SwiGLU MLP, norms upcast;
  measured on CPU), i.e. 40 bytes in 16-bit and 80 in fp32; with gradient checkpointing only each layer's
  input is kept (plus the final hidden state and its gradient) and one layer is recomputed at a time;
- the loss's logits: one chunk of tokens at a time (`chunk_tokens`, used by the trainer's chunked loss), fp32
  logits, their log-softmax and their gradient (12 bytes per vocabulary entry, 16 with the 16-bit head
  output), at the moment a recomputed layer is not live (the peak is the larger of the two);
- with `training.compile` and gradient checkpointing, 2.3x the checkpointed activations: the compiled graph keeps
  more than the layer inputs (measured on an H200 with MobileLLM-125M: 2.28x at 16 x 2048 tokens, 1.90x at
  80 x 2000, where the eager run was within 10% of the estimate; bench/README.md, "GPU");
- 20% headroom for the allocator's fragmentation and the framework;
- communication buffers with more than one process: DeepSpeed's gradient bucket (5e8 values or the model,
  whichever is smaller) for stage 0, and 4.5x its reduce and all-gather buckets with overlap_comm for stages
  1-3 (DeepSpeed's ZeRO tutorial);
- on a GPU, the CUDA context and library workspaces (1 GiB) are taken off the device's memory.

When no stage fits, the stage fails before training (exit 4) naming `microBatchSize` and the largest value
that fits. The stage chosen is recorded with every checkpoint (cpt_pipeline.train.resume), so a resumed run
keeps it even on a device of another size (the checkpoint's partition layout depends on it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cpt.api.training import DeepSpeed

HEADROOM = 1.2
LAYER_VALUES = 20  # saved values per token and hidden unit in one layer's forward (measured on CPU, fp32)
DS_BUCKET = 500_000_000  # DeepSpeed's default reduce / all-gather bucket (values)
OVERLAP_FACTOR = 4.5  # overlap_comm's buffers per bucket (DeepSpeed ZeRO tutorial)
CUDA_CONTEXT_BYTES = 2**30
GIB = 2**30
LOGITS_CHUNK_BYTES = 256 * 2**20  # fp32 logits of one chunk of the chunked loss
COMPILED_CHECKPOINTING = 2.3  # activations of a compiled, checkpointed model over the eager estimate (H200)


def chunk_tokens(vocab: int) -> int:
    """Tokens per chunk of the chunked loss: ~LOGITS_CHUNK_BYTES of fp32 logits."""
    return max(1, LOGITS_CHUNK_BYTES // (4 * vocab))


class MemoryPlanError(ValueError):
    """No ZeRO stage fits the device at the spec's micro-batch: a user error (exit 4)."""


@dataclass(frozen=True)
class ModelShape:
    params: int
    layers: int
    hidden: int
    vocab: int


@dataclass(frozen=True)
class Footprint:
    """What decides a device's memory: the model's shape, the DeepSpeed settings, the precision, the batch and
    the number of processes."""

    ds: DeepSpeed
    shape: ModelShape
    precision: str
    micro_batch: int
    seq_len: int
    world: int
    compiled: bool = False  # training.compile

    @property
    def value(self) -> int:
        return 2 if self.precision in ("bf16", "fp16") else 4

    def model_states(self, stage: int) -> int:
        """Weights, gradients and optimizer state on one device."""
        ds, params, world, value = self.ds, self.shape.params, self.world, self.value
        weights = grads = value * params
        optimizer = 0 if ds.offload_optimizer == "cpu" else (12 if value == 2 else 8) * params
        if stage >= 1:
            optimizer //= world
        if stage >= 2:
            grads //= world
        if stage >= 3:
            weights = 0 if ds.offload_params == "cpu" else weights // world
        return weights + grads + optimizer

    def activations(self) -> int:
        """Peak activation bytes: the layers' saved values plus the larger of a recomputed layer and one chunk
        of the loss's logits."""
        shape, tokens = self.shape, self.micro_batch * self.seq_len
        full_layer = tokens * shape.hidden * LAYER_VALUES * self.value
        chunk = min(tokens, chunk_tokens(shape.vocab))
        logits = chunk * shape.vocab * (12 + (2 * self.value if self.value == 2 else 0))
        if self.ds.gradient_checkpointing:
            kept = tokens * shape.hidden * self.value * (shape.layers + 2) + max(full_layer, logits)
            return int(kept * COMPILED_CHECKPOINTING) if self.compiled else kept
        return full_layer * shape.layers + logits

    def communication(self, stage: int) -> int:
        """DeepSpeed's gradient/parameter buckets (none with one process)."""
        if self.world == 1:
            return 0
        bucket = min(DS_BUCKET, self.shape.params) * self.value
        return bucket if stage == 0 else int(OVERLAP_FACTOR * 2 * bucket)

    def bytes(self, stage: int) -> int:
        """Estimated peak bytes on one device for this ZeRO stage."""
        return int(HEADROOM * (self.model_states(stage) + self.activations())) + self.communication(stage)


def allowed_stages(ds: DeepSpeed) -> list[int]:
    """The stages the offload settings allow (parameter offload needs 3, optimizer offload 1 or more)."""
    if ds.offload_params == "cpu":
        return [3]
    return [1, 2, 3] if ds.offload_optimizer == "cpu" else [0, 1, 2, 3]


def choose_stage(footprint: Footprint, device_bytes: int) -> tuple[int, str]:
    """(stage, why): the lowest allowed stage whose estimate fits `device_bytes`; MemoryPlanError when none
    does, naming the largest micro-batch that fits."""
    stages = allowed_stages(footprint.ds)
    estimates = {s: footprint.bytes(s) for s in stages}
    fits = [s for s in stages if estimates[s] <= device_bytes]
    if not fits:
        raise MemoryPlanError(_too_big(footprint, device_bytes, stages[-1]))
    stage = fits[0]
    why = (
        f"zeroStage auto: stage {stage}, estimated {estimates[stage] / GIB:.2f} GiB per device of "
        f"{device_bytes / GIB:.2f} GiB (" + ", ".join(f"stage {s}: {estimates[s] / GIB:.2f}" for s in stages) + ")"
    )
    return stage, why


def largest_micro_batch(footprint: Footprint, device_bytes: int, stage: int) -> int:
    """The largest micro-batch (at most the footprint's) whose estimate at `stage` fits; 0 when none does."""
    low, high = 0, footprint.micro_batch
    while low < high:
        middle = (low + high + 1) // 2
        if replace(footprint, micro_batch=middle).bytes(stage) <= device_bytes:
            low = middle
        else:
            high = middle - 1
    return low


def _too_big(footprint: Footprint, device_bytes: int, stage: int) -> str:
    best = largest_micro_batch(footprint, device_bytes, stage)
    head = (
        f"spec.training.microBatchSize {footprint.micro_batch} does not fit the device with any ZeRO stage "
        f"(stage {stage}: estimated {footprint.bytes(stage) / GIB:.2f} GiB of {device_bytes / GIB:.2f} GiB)"
    )
    if best:
        return f"{head}: set microBatchSize to {best} or less (the largest that fits) and raise gradAccumulation"
    return (
        f"{head}, nor does microBatchSize 1: offload (spec.training.deepspeed.offloadOptimizer/offloadParams: "
        "cpu), gradient checkpointing, a shorter sequence or a larger device"
    )
