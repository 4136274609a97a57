"""Process-group choices of the training workers, kept pure so CPU tests can check what a GPU run does.

The loop's own collectives (the loss sum, the stop flag, the skip-batch vote, the sample-id gather) use
small CPU tensors, while DeepSpeed's collectives use CUDA tensors. NCCL alone serves only CUDA tensors and
raises on the first CPU all-reduce, so a GPU run initialises one process group with a backend per device:
`cpu:gloo,cuda:nccl`. A CPU run uses gloo for everything.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

from cpt_pipeline.storage import s3_deadline

LOOP_COLLECTIVE_DEVICE = "cpu"  # where the loop's bookkeeping tensors live, on CPU and GPU runs alike


# How much longer than one storage operation's deadline the ranks wait in a collective: while rank 0 uploads a
# checkpoint the others wait in all_gather_object, and must see its exit-5 failure, not their own watchdog's.
PROCESS_GROUP_MARGIN_SECONDS = 600.0


def process_group_timeout() -> timedelta:
    """The `timeout=` of `deepspeed.init_distributed`: CPT_S3_DEADLINE_SECONDS (a whole storage operation,
    retries included) plus a 10-minute margin, 30 minutes by default."""
    return timedelta(seconds=s3_deadline() + PROCESS_GROUP_MARGIN_SECONDS)


def process_group_backend(cuda: bool) -> str:
    """The backend string for `deepspeed.init_distributed` / `torch.distributed.init_process_group`."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def backend_for_device(backend: str, device: str) -> str | None:
    """Which backend of a backend string serves tensors on `device` (None: none does).

    A plain name ("gloo") serves CPU tensors (gloo also serves CUDA ones); NCCL serves CUDA tensors only.
    """
    if ":" not in backend:
        serves = {"gloo": {"cpu", "cuda"}, "nccl": {"cuda"}, "mpi": {"cpu", "cuda"}}.get(backend, set())
        return backend if device in serves else None
    pairs = dict(part.split(":", 1) for part in backend.split(","))
    return pairs.get(device)


def node_id() -> int:
    """This process's node (torchrun's GROUP_RANK; 0 on one node)."""
    return int(os.environ.get("GROUP_RANK", "0"))


def node_scratch(local_rank: int, world_size: int) -> Path:
    """One scratch folder per node, made by its local rank 0 and shared by every process of the node.

    Checkpoints go through it on object storage: DeepSpeed writes every local rank's partitions there, and
    one upload (and, on resume, one download) serves the whole node.
    """
    import torch.distributed as dist

    mine = tempfile.mkdtemp(prefix=f"kubecpt-train-node{node_id()}-") if local_rank == 0 else None
    everyone: list[tuple[int, str | None] | None] = [None] * world_size
    dist.all_gather_object(everyone, (node_id(), mine))
    return Path(next(path for node, path in everyone if node == node_id() and path))  # type: ignore[misc]
