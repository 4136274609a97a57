"""Checkpoints in the storage URI: saved every N steps and at milestones, `latest` written last, keep-last-K.

DeepSpeed writes each rank's partitions (model, optimizer, scheduler) plus our client state (step, tokens,
restarts, RNG, and the run's data-order settings). On a local filesystem it writes straight into
`<storage>/checkpoints/<tag>/`. On an object store every rank of a node writes into one node-local scratch
folder shared by the node's processes; after a barrier, the node's local rank 0 uploads every file there
(its own ranks' partitions and, on node 0, the common files). Each node reports the files it uploaded;
global rank 0 checks that every one of them is in the bucket and only then writes `checkpoints/latest`.
A checkpoint that a crash interrupted is therefore never referenced, and resume always loads a complete
one. `latest` moves in a separate `commit`, after the caller's own work for that step (a milestone's
export): a crash before it leaves the previous `latest`, and the restart does that step again. On resume
each node's local rank 0 downloads the whole tag into the node folder before any rank loads. Periodic
checkpoints beyond `keepLast` are deleted. Milestone checkpoints (tag suffix `-milestone`) are kept, and so is
a WSD run's checkpoint at the start of its decay (`-stable`): a grown budget continues the stable phase from it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from cpt_pipeline.pause import pause_point
from cpt_pipeline.storage import Storage, StorageUnavailable
from cpt_pipeline.train.resume import PLAN_FILE, check_resume

log = logging.getLogger(__name__)
PERIODIC = re.compile(r"^step-(\d{8})$")
ANY_TAG = re.compile(r"^step-(\d{8})(-milestone|-stable)?$")


def tag_for(step: int, milestone: bool, stable: bool = False) -> str:
    return f"step-{step:08d}" + ("-milestone" if milestone else "-stable" if stable else "")


class Checkpointer:
    def __init__(
        self, storage: Storage, scratch: Path, keep_last: int, rank: int, local_rank: int, plan: dict[str, Any]
    ) -> None:
        self.storage = storage.sub("checkpoints")
        self.scratch = scratch
        self.keep_last = keep_last
        self.rank = rank
        self.local_rank = local_rank
        self.plan = plan  # the settings a resume must keep (resume.py), written with every checkpoint

    def recorded_plan(self, tag: str | None = None) -> dict[str, Any] | None:
        """The settings a checkpoint (default: the latest) was written under (None: no checkpoint, or one without
        a plan)."""
        tag = tag or self.latest()
        if tag is None or not self.storage.exists(tag, PLAN_FILE):
            return None
        return self.storage.read_json(tag, PLAN_FILE)

    def check_resumable(self, recorded: dict[str, Any] | None, tag: str | None = None) -> None:
        """Stop before loading when the checkpoint (default: the latest) was written (`recorded`, from
        recorded_plan) under a different data order or LR."""
        tag = tag or self.latest()
        if tag is not None:
            check_resume(recorded, self.plan, tag)

    def kept_at_or_before(self, step: int) -> str | None:
        """The complete checkpoint with the most steps, at most `step` (one with its plan written: committed)."""
        tags = [(int(m.group(1)), name) for name in self.storage.list() if (m := ANY_TAG.match(name))]
        done = [(s, name) for s, name in tags if s <= step and self.storage.exists(name, PLAN_FILE)]
        return max(done)[1] if done else None

    def latest(self) -> str | None:
        if not self.storage.exists("latest"):
            return None
        return self.storage.read_bytes("latest").decode().strip() or None

    def _dir(self) -> Path:
        return Path(self.storage.root) if self.storage.is_local else self.scratch / "checkpoints"

    def save(self, engine: Any, step: int, client_state: dict[str, Any], milestone: bool, stable: bool = False) -> str:
        """Write (and upload) the checkpoint of `step` on every rank; returns its tag. `latest` still names the
        previous checkpoint until `commit(tag)`."""
        tag = tag_for(step, milestone, stable)
        engine.save_checkpoint(str(self._dir()), tag=tag, client_state=client_state, save_latest=False)
        pause_point("train-worker:checkpoint")  # files written, not uploaded, `latest` not moved
        dist.barrier()  # every rank of the node has written its files into the node folder
        uploaded: list[str] | tuple[bool, str] = []
        if not self.storage.is_local and self.local_rank == 0:
            try:
                uploaded = self._upload(tag)
            except Exception as error:  # reported to every rank below, so that none waits forever
                message = f"upload of checkpoint {tag} to {self.storage.url(tag)} failed: {error}"
                uploaded = (isinstance(error, StorageUnavailable), message)
        reports: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(reports, uploaded)
        failures = [r for r in reports if isinstance(r, tuple)]
        if failures:  # the object store's failure (exit 5, worth a retry) or another one
            unavailable, message = failures[0]
            raise (StorageUnavailable if unavailable else RuntimeError)(message)
        if self.rank == 0:
            self._confirm(tag, sorted({name for report in reports for name in report}))
        return tag

    def commit(self, tag: str) -> str:
        """Make the saved checkpoint `tag` the one a restart resumes from (`latest`, written last), and purge
        periodic checkpoints beyond keepLast; returns its URL."""
        if self.rank == 0:
            self.storage.write_json(self.plan, tag, PLAN_FILE)
            self.storage.write_text(tag + "\n", "latest")
            self._purge(keep={tag})
        dist.barrier()
        log.info("checkpoint %s saved to %s", tag, self.storage.url(tag))
        return self.storage.url(tag)

    def _upload(self, tag: str) -> list[str]:
        """Upload every file of the node folder's tag (all local ranks' files); returns their relative paths."""
        local = self._dir() / tag
        names = []
        for path in sorted(local.rglob("*")):
            if path.is_file():
                name = str(path.relative_to(local))
                self.storage.put_file(str(path), tag, name)
                names.append(name)
        shutil.rmtree(local, ignore_errors=True)
        return names

    def _confirm(self, tag: str, names: list[str]) -> None:
        """Every uploaded file is in the bucket (else `latest` must not name this checkpoint)."""
        if self.storage.is_local:
            return
        root = self.storage.path(tag).rstrip("/") + "/"
        self.storage.fs.invalidate_cache(self.storage.path(tag))
        present = {path[len(root) :] for path in self.storage.fs.find(root)}
        missing = [name for name in names if name not in present]
        if missing or not names:
            raise RuntimeError(f"checkpoint {tag}: files missing from {self.storage.url(tag)} after upload: {missing}")

    def _purge(self, keep: set[str]) -> None:
        periodic = sorted(name for name in self.storage.list() if PERIODIC.match(name))
        for name in periodic[: max(0, len(periodic) - self.keep_last)]:
            if name not in keep:
                self.storage.remove(name)

    def load(self, engine: Any, tag: str | None = None) -> dict[str, Any] | None:
        """Load a complete checkpoint (default: the latest) into engine; returns its client state (None: fresh
        start)."""
        tag = tag or self.latest()
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


def export_hf(
    engine: Any, zero_stage: int, tokenizer_dir: Path, storage: Storage, name: str, rank: int, tokens: int
) -> str:
    """A Hugging Face export (safetensors + config + tokenizer files) that from_pretrained and lm-eval load.

    `export.json`, written last, lists the files and the tokens actually trained on (whole optimizer steps,
    so at least the milestone the export is named after); evaluation labels its row with those tokens.
    """
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
        target.write_json({"files": files, "tokens": tokens}, "export.json")  # written last: the export is complete
        shutil.rmtree(local.parent, ignore_errors=True)
    dist.barrier()
    return target.url()
