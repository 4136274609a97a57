"""Checkpoints in the storage URI: saved every N steps and at milestones, `latest` written last, keep-last-K.

DeepSpeed writes each rank's partitions (model, optimizer, scheduler) plus our client state (step, tokens,
restarts, RNG). On a local filesystem it writes straight into `<storage>/checkpoints/<tag>/`. On an object
store it writes to local scratch first, and each node's local rank 0 uploads what that node wrote. Once
every rank has finished, global rank 0 writes `checkpoints/latest`. A checkpoint that a crash interrupted
is therefore never referenced, and resume always loads a complete one. Periodic checkpoints beyond
`keepLast` are deleted. Milestone checkpoints (tag suffix `-milestone`) are kept.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from cpt_pipeline.storage import Storage

log = logging.getLogger(__name__)
PERIODIC = re.compile(r"^step-(\d{8})$")
ANY_TAG = re.compile(r"^step-(\d{8})(-milestone)?$")


def tag_for(step: int, milestone: bool) -> str:
    return f"step-{step:08d}" + ("-milestone" if milestone else "")


class Checkpointer:
    def __init__(self, storage: Storage, scratch: Path, keep_last: int, rank: int, local_rank: int) -> None:
        self.storage = storage.sub("checkpoints")
        self.scratch = scratch
        self.keep_last = keep_last
        self.rank = rank
        self.local_rank = local_rank

    def latest(self) -> str | None:
        if not self.storage.exists("latest"):
            return None
        return self.storage.read_bytes("latest").decode().strip() or None

    def _dir(self) -> Path:
        return Path(self.storage.root) if self.storage.is_local else self.scratch / "checkpoints"

    def save(self, engine: Any, step: int, client_state: dict[str, Any], milestone: bool) -> str:
        tag = tag_for(step, milestone)
        engine.save_checkpoint(str(self._dir()), tag=tag, client_state=client_state, save_latest=False)
        dist.barrier()
        if not self.storage.is_local and self.local_rank == 0:
            local = self._dir() / tag
            for path in sorted(local.rglob("*")):
                if path.is_file():
                    self.storage.put_file(str(path), tag, str(path.relative_to(local)))
            shutil.rmtree(local, ignore_errors=True)
        dist.barrier()
        if self.rank == 0:
            self.storage.write_text(tag + "\n", "latest")
            self._purge(keep={tag})
        dist.barrier()
        log.info("checkpoint %s saved to %s", tag, self.storage.url(tag))
        return self.storage.url(tag)

    def _purge(self, keep: set[str]) -> None:
        periodic = sorted(name for name in self.storage.list() if PERIODIC.match(name))
        for name in periodic[: max(0, len(periodic) - self.keep_last)]:
            if name not in keep:
                self.storage.remove(name)

    def load(self, engine: Any) -> dict[str, Any] | None:
        """Load the latest complete checkpoint into engine; returns its client state (None: fresh start)."""
        tag = self.latest()
        if tag is None:
            return None
        if not ANY_TAG.match(tag) or not self.storage.exists(tag):
            raise FileNotFoundError(f"checkpoints/latest names {tag!r}, which is not in {self.storage.url()}")
        root = self._dir()
        if not self.storage.is_local and self.local_rank == 0:
            target = root / tag
            shutil.rmtree(target, ignore_errors=True)
            self.storage.fs.get(self.storage.path(tag) + "/", str(target) + "/", recursive=True)
        dist.barrier()
        _, client_state = engine.load_checkpoint(
            str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if client_state is None:
            raise RuntimeError(f"checkpoint {tag} could not be loaded from {root}")
        log.info("resumed from checkpoint %s (step %s)", tag, client_state.get("step"))
        return client_state


def export_hf(engine: Any, zero_stage: int, tokenizer_dir: Path, storage: Storage, name: str, rank: int) -> str:
    """A Hugging Face export (safetensors + config + tokenizer files) that from_pretrained and lm-eval load."""
    state = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else engine.module.state_dict()
    target = storage.sub("exports", name)
    if rank == 0:
        local = Path(os.environ.get("TMPDIR", "/tmp")) / f"kubecpt-export-{os.getpid()}" / name
        shutil.rmtree(local, ignore_errors=True)
        engine.module.save_pretrained(str(local), state_dict=state, safe_serialization=True)
        for item in tokenizer_dir.iterdir():
            if item.is_file() and (item.name.startswith("tokenizer") or item.name == "special_tokens_map.json"):
                shutil.copy(item, local / item.name)
        files = sorted(p.name for p in local.iterdir())
        for file in files:
            target.put_file(str(local / file), file)
        target.write_json({"files": files}, "export.json")  # written last: the export is complete
        shutil.rmtree(local.parent, ignore_errors=True)
    dist.barrier()
    return target.url()
