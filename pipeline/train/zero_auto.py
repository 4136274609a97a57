"""The memory a training process may use, for `zeroStage: auto` (the estimate and the choice: cpt/memory.py)."""

from __future__ import annotations

import os
from pathlib import Path

from cpt.memory import CUDA_CONTEXT_BYTES


def device_memory_bytes(device: str, local_rank: int, local_processes: int) -> int:
    """Memory one process may use: the GPU's total memory less the CUDA context, or on CPU the machine's (or
    the container's cgroup limit, when lower) shared by the node's processes."""
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(local_rank).total_memory) - CUDA_CONTEXT_BYTES
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = ""
    if limit.isdigit():
        total = min(total, int(limit))
    return total // max(1, local_processes)
