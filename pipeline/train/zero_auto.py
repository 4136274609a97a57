"""`zeroStage: auto`: the lowest ZeRO stage whose per-device memory estimate fits the device.

Lower stages partition less and communicate less, so they are faster whenever the model fits; ZeRO-3 is for
models that do not. The estimate (bytes per device) is the usual ZeRO accounting (Rajbhandari et al. 2020)
plus activations at the micro-batch (Korthikanti et al. 2022, no attention matrix: SDPA/flash):

- per parameter: weights (2 bytes in bf16/fp16, 4 in fp32), gradients (the same), optimizer state (Adam m and
  v, plus an fp32 master copy in mixed precision: 12 or 8 bytes; none on the device when offloaded);
- stage 1 partitions the optimizer state over the processes, 2 also the gradients, 3 also the weights;
- activations per layer: micro-batch x sequence x hidden x 34 bytes (16-bit; 68 in fp32), or only the layer
  input (2 or 4 bytes per value) with gradient checkpointing plus one layer recomputed; the logits and their
  gradient in fp32 (3 x vocab x 4 bytes per token);
- 20% headroom for the allocator, communication buckets and the framework.

The stage chosen is recorded with every checkpoint (resume.py), so a resumed run keeps it even on a device of
another size (the checkpoint's partition layout depends on it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cpt.api.training import DeepSpeed

HEADROOM = 1.2


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

    def bytes(self, stage: int) -> int:
        """Estimated peak bytes on one device for this ZeRO stage."""
        ds, shape, world = self.ds, self.shape, self.world
        half = self.precision in ("bf16", "fp16")
        value = 2 if half else 4
        weights = value * shape.params
        grads = value * shape.params
        optimizer = 0 if ds.offload_optimizer == "cpu" else (12 if half else 8) * shape.params
        if stage >= 1:
            optimizer //= world
        if stage >= 2:
            grads //= world
        if stage >= 3:
            weights = 0 if ds.offload_params == "cpu" else weights // world
        tokens = self.micro_batch * self.seq_len
        full_layer = tokens * shape.hidden * 17 * value
        if ds.gradient_checkpointing:
            activations = tokens * shape.hidden * value * shape.layers + full_layer
        else:
            activations = full_layer * shape.layers
        logits = tokens * shape.vocab * 4 * 3
        return int(HEADROOM * (weights + grads + optimizer + activations + logits))


def allowed_stages(ds: DeepSpeed) -> list[int]:
    """The stages the offload settings allow (parameter offload needs 3, optimizer offload 1 or more)."""
    if ds.offload_params == "cpu":
        return [3]
    return [1, 2, 3] if ds.offload_optimizer == "cpu" else [0, 1, 2, 3]


def choose_stage(footprint: Footprint, device_bytes: int) -> tuple[int, str]:
    """(stage, why): the lowest allowed stage whose estimate fits `device_bytes`, else the highest."""
    stages = allowed_stages(footprint.ds)
    estimates = {s: footprint.bytes(s) for s in stages}
    fits = [s for s in stages if estimates[s] <= device_bytes]
    stage = fits[0] if fits else stages[-1]
    gib = 2**30
    why = (
        f"zeroStage auto: stage {stage}, estimated {estimates[stage] / gib:.2f} GiB per device of "
        f"{device_bytes / gib:.2f} GiB ("
        + ", ".join(f"stage {s}: {estimates[s] / gib:.2f}" for s in stages)
        + ")"
        + ("" if fits else "; none fits, so the highest")
    )
    return stage, why


def device_memory_bytes(device: str, local_rank: int, local_processes: int) -> int:
    """Memory one process may use: the GPU's total memory, or on CPU the machine's (or the container's cgroup
    limit, when lower) shared by the node's processes."""
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(local_rank).total_memory)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = ""
    if limit.isdigit():
        total = min(total, int(limit))
    return total // max(1, local_processes)
