"""Training progress: JSON lines on stdout, `train/progress.json` (the status the operator shows),
`train/metrics.jsonl` (the loss curve of the report), and TensorBoard events. W&B and MLflow are used
when installed and configured (WANDB_API_KEY / MLFLOW_TRACKING_URI)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpt.exit_codes import EXIT_UNAVAILABLE
from cpt_pipeline import jsonl
from cpt_pipeline.errors import exit_code_for
from cpt_pipeline.status_push import push_status
from cpt_pipeline.storage import Storage

log = logging.getLogger(__name__)

# Dense bf16 peak per GPU (datasheet figures), for the MFU estimate; override with CPT_PEAK_TFLOPS.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def peak_flops(device: str) -> float | None:
    if os.environ.get("CPT_PEAK_TFLOPS"):
        return float(os.environ["CPT_PEAK_TFLOPS"]) * 1e12
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in name), None)


WRITE_ATTEMPTS = 3
RETRY_DELAY_SECONDS = 1.0


def _best_effort(what: str, write: Callable[[], None]) -> bool:
    """Run `write`, retrying transient storage errors with backoff; after the last attempt, warn and go on.
    Any other error (a bug, bad credentials) is raised."""
    for attempt in range(WRITE_ATTEMPTS):
        try:
            write()
            return True
        except Exception as error:
            if exit_code_for(error) != EXIT_UNAVAILABLE:
                raise
            if attempt == WRITE_ATTEMPTS - 1:
                log.warning("could not write %s (%s); training goes on, the next write retries", what, error)
                return False
            time.sleep(RETRY_DELAY_SECONDS * 2**attempt)
    return False


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@dataclass
class Progress:
    storage: Storage
    total_steps: int
    tokens_per_step: int
    flops_per_token: float
    peak: float | None
    world_size: int
    interval: int
    tensorboard_dir: Path | None
    zero_stage: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    exports: list[str] = field(default_factory=list)  # complete milestone exports, reported in the status
    _recent: list[float] = field(default_factory=list)
    _writer: Any = None
    _trackers: list[Any] = field(default_factory=list)

    def start(self, resumed_step: int) -> None:
        """Keep the history up to the resumed step (a restart replays the steps after it)."""
        self.exports = [n for n in self.storage.list("exports") if self.storage.exists("exports", n, "export.json")]
        if self.storage.exists("train", "metrics.jsonl"):
            records = jsonl.records(self.storage.read_bytes("train", "metrics.jsonl"))
            self.history = [r for r in records if r["step"] <= resumed_step]
        if self.tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.tensorboard_dir))
            except ImportError:
                log.warning("tensorboard is not installed: no TensorBoard events")
        self._trackers = _optional_trackers()

    def step(
        self,
        step: int,
        loss: float,
        lr: float,
        seconds: float,
        latest: str | None,
        restarts: int,
        extra: dict[str, Any] | None = None,
        checkpointed: bool = False,
    ) -> dict[str, Any]:
        """Record one optimizer step. Storage is written every `interval` steps, at the end, and whenever a
        checkpoint was saved at this step: a resumed run then finds the history of every step it skips."""
        self._recent = [*self._recent, seconds][-20:]
        per_step = sum(self._recent) / len(self._recent)
        tokens_per_second = self.tokens_per_step / per_step
        mfu = tokens_per_second * self.flops_per_token / (self.peak * self.world_size) if self.peak else None
        loss_value = loss if math.isfinite(loss) else None  # JSON (and a Kubernetes status) has no NaN
        record = {
            "step": step,
            "tokens": step * self.tokens_per_step,
            "loss": loss_value,
            "lr": lr,
            "tokensPerSecond": round(tokens_per_second, 1),
            "stepSeconds": round(seconds, 6),
            **(extra or {}),
        }
        self.history.append(record)
        status = {
            "step": step,
            "tokensSeen": record["tokens"],
            "loss": loss_value,
            "learningRate": lr,
            "tokensPerSecond": record["tokensPerSecond"],
            "mfu": None if mfu is None else round(mfu, 4),
            "eta": _eta(per_step * (self.total_steps - step)),
            "latestCheckpoint": latest,
            "restarts": restarts,
            "totalSteps": self.total_steps,
            "zeroStage": self.zero_stage,
            "exports": list(self.exports),
            "lastUpdateTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        print(json.dumps({"event": "train_step", **status, **(extra or {})}), flush=True)
        if self._writer is not None:
            for key in ("loss", "lr", "tokensPerSecond"):
                if record[key] is not None:
                    self._writer.add_scalar(f"train/{key}", record[key], step)
        for tracker in self._trackers:
            tracker(record)
        if checkpointed or step % self.interval == 0 or step == self.total_steps:
            self.flush(status)
        return status

    def flush(self, status: dict[str, Any]) -> None:
        """Write progress and the loss history. Best effort: an object store that is briefly unreachable costs a
        warning, never the run (the next flush rewrites both files whole)."""
        _best_effort("train/progress.json", lambda: self.storage.write_json(status, "train", "progress.json"))
        # In a cluster, the resource's status.training too; the operator owns `restarts` (the gang's count).
        push_status("kubecpt-train", {"training": {k: v for k, v in status.items() if k != "restarts"}})
        text = "".join(json.dumps(r) + "\n" for r in self.history)
        _best_effort("train/metrics.jsonl", lambda: self.storage.write_text(text, "train", "metrics.jsonl"))
        if self._writer is not None:
            self._writer.flush()


def _optional_trackers() -> list[Any]:
    trackers = []
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        try:
            import wandb

            run = wandb.init(project=os.environ.get("WANDB_PROJECT", "kubecpt"), resume="allow")
            trackers.append(lambda r: run.log(r, step=r["step"]))
        except ImportError:
            log.warning("WANDB_* is set but wandb is not installed")
    if os.environ.get("MLFLOW_TRACKING_URI"):
        try:
            import mlflow

            trackers.append(lambda r: mlflow.log_metrics({k: v for k, v in r.items() if k != "step"}, step=r["step"]))
        except ImportError:
            log.warning("MLFLOW_TRACKING_URI is set but mlflow is not installed")
    return trackers
