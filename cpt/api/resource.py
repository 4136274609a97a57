"""The `ContinuedPretrain` resource: spec sections composed, plus the rules that span them."""

from __future__ import annotations

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
