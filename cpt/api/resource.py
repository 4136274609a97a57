"""The `ContinuedPretrain` resource: spec sections composed, plus the rules that span them."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from cpt import API_GROUP, API_VERSION, KIND
from cpt.api.base import ApiModel, Rule, section
from cpt.api.data import DataSpec
from cpt.api.evaluation import EvaluationSpec
from cpt.api.model import ModelSpec
from cpt.api.platform import RunPolicy, Scheduling, StorageSpec
from cpt.api.status import ContinuedPretrainStatus
from cpt.api.training import TrainingSpec

_STEP = (
    "(self.training.nodes * self.training.procsPerNode * self.training.microBatchSize * "
    "self.training.gradAccumulation * self.data.sequenceLength)"
)


def _distinct_milestone_steps(spec: ContinuedPretrainSpec) -> bool:
    """Every milestone (and the budget) ends in its own optimizer step, so each gets its own export."""
    per_step = spec.training.tokens_per_step(spec.data.sequence_length)
    steps = [math.ceil(m / per_step) for m in spec.data.milestones_with_budget]
    return len(set(steps)) == len(steps)


class ContinuedPretrainSpec(ApiModel):
    """Desired state: one reproducible continued pre-training run."""

    model: ModelSpec = Field(description="The base model.")
    data: DataSpec = Field(description="Training data and preprocessing.")
    training: TrainingSpec = section(TrainingSpec, "Training.")
    evaluation: EvaluationSpec = section(EvaluationSpec, "Evaluation.")
    storage: StorageSpec = Field(description="Output storage.")
    suspend: bool = Field(False, description="Suspend the run: running pods stop, work resumes on unsuspend.")
    run_policy: RunPolicy = section(RunPolicy, "Retries and lifetime.")
    scheduling: Scheduling = section(Scheduling, "Pod placement, images and the Kueue queue.")

    rules = (
        Rule(
            cel="self.data.tokenBudget >= self.training.nodes * self.training.procsPerNode * "
            "self.training.microBatchSize * self.training.gradAccumulation * self.data.sequenceLength",
            message="tokenBudget is smaller than one optimizer step "
            "(nodes * procsPerNode * microBatchSize * gradAccumulation * sequenceLength)",
            field="data.tokenBudget",
            check=lambda s: s.data.token_budget >= s.training.tokens_per_step(s.data.sequence_length),
        ),
        Rule(
            cel=f"self.data.milestones.all(m, self.data.milestones.exists_one(n, (n + {_STEP} - 1) / {_STEP} == "
            f"(m + {_STEP} - 1) / {_STEP})) && self.data.milestones.all(m, m == self.data.tokenBudget || "
            f"(m + {_STEP} - 1) / {_STEP} < (self.data.tokenBudget + {_STEP} - 1) / {_STEP})",
            message="two milestones (or a milestone and tokenBudget) fall in the same optimizer step of "
            "nodes * procsPerNode * microBatchSize * gradAccumulation * sequenceLength tokens: "
            "space them at least one step apart",
            field="data.milestones",
            check=lambda s: _distinct_milestone_steps(s),
        ),
        Rule(
            cel="self.training.nodes == 1 || self.storage.uri.startsWith('s3://') "
            "|| self.storage.uri.startsWith('gs://')",
            message="training on several nodes needs shared object storage (s3:// or gs://): each node's pod "
            "has its own filesystem, so checkpoints and shards on a local path would exist on one node only",
            field="storage.uri",
            check=lambda s: s.training.nodes == 1 or s.storage.uri.startswith(("s3://", "gs://")),
        ),
    )


# Transition rules need the old object, so only the API server enforces them.
IMMUTABLE_ONCE_STARTED = tuple(
    Rule(
        cel="!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending' "
        f"|| self.spec.{name} == oldSelf.spec.{name}",
        message=f"spec.{name} is immutable once the run has started",
        field=f"spec.{name}",
    )
    for name in ("model", "data")
)


class ContinuedPretrain(ApiModel):
    """A ContinuedPretrain resource as stored in Kubernetes."""

    api_version: Literal["cpt.kubecpt.dev/v1alpha1"] = Field(f"{API_GROUP}/{API_VERSION}", description="API version.")
    kind: Literal["ContinuedPretrain"] = Field(KIND, description="Kind.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: ContinuedPretrainSpec = Field(description="Desired state.")
    status: ContinuedPretrainStatus | None = Field(None, description="Observed state.")

    rules = IMMUTABLE_ONCE_STARTED
