"""The `ContinuedPretrain` resource: spec sections composed, plus the rules that span them."""

from __future__ import annotations

import math
import re
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

_SIZES = (
    "self.training.nodes",
    "self.training.procsPerNode",
    "self.training.microBatchSize",
    "self.training.gradAccumulation",
    "self.data.sequenceLength",
)
_STEP = "(" + " * ".join(_SIZES) + ")"
# Each size below its minimum is refused by the schema, naming the field; the rules pass such a resource
# instead of dividing by zero. The step in double cannot overflow (at most 2^70) and compares exactly with
# tokenBudget (at most 10^15 < 2^53); the milestone rule runs in int only once the step fits in the budget.
_POSITIVE = "(" + " && ".join(f"{size} > 0" for size in _SIZES) + ")"
_STEP_DOUBLE = "(" + " * ".join(f"double({size})" for size in _SIZES) + ")"


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
            cel=f"!{_POSITIVE} || double(self.data.tokenBudget) >= {_STEP_DOUBLE}",
            message="tokenBudget is smaller than one optimizer step "
            "(nodes * procsPerNode * microBatchSize * gradAccumulation * sequenceLength)",
            field="data.tokenBudget",
            check=lambda s: s.data.token_budget >= s.training.tokens_per_step(s.data.sequence_length),
        ),
        Rule(
            cel=f"!{_POSITIVE} || {_STEP_DOUBLE} > double(self.data.tokenBudget) || "
            f"self.data.milestones.all(m, self.data.milestones.exists_one(n, (n + {_STEP} - 1) / {_STEP} == "
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
        Rule(
            cel="!has(self.evaluation.guardrail) || has(self.model.uri)",
            message="evaluation.guardrail compares with the base model: a model built from an architecture has none",
            field="evaluation.guardrail",
            check=lambda s: s.evaluation.guardrail is None or s.model.uri is not None,
        ),
    )


# The run's name is the value of the run label on every child and pod (label values: at most 63 characters), and
# the prefix of the training JobSet, whose name is its headless Service's and its pods' DNS host names (RFC 1035
# labels: a letter first, no dots). Child names are shortened with a hash (`cpt_operator.names`); the run label is
# not, so the name itself must fit. A root rule may read metadata.name; the API server then refuses the name.
RUN_NAME_MAX = 63
RUN_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_RUN_NAME_RE = re.compile(RUN_NAME_PATTERN)


def _name_fits(resource: ContinuedPretrain) -> bool:
    name = resource.metadata.get("name")
    return name is None or len(name) <= RUN_NAME_MAX


def _name_is_a_label(resource: ContinuedPretrain) -> bool:
    name = resource.metadata.get("name")
    return name is None or _RUN_NAME_RE.match(name) is not None


RUN_NAME_RULES = (
    Rule(
        cel=f"self.metadata.name.size() <= {RUN_NAME_MAX}",
        message=f"metadata.name must be at most {RUN_NAME_MAX} characters: it is the value of the "
        f"{API_GROUP}/run label on every child and pod of the run, and label values are at most 63 characters",
        check=_name_fits,
    ),
    Rule(
        cel=f"self.metadata.name.matches('{RUN_NAME_PATTERN}')",
        message="metadata.name must start with a lowercase letter and contain only lowercase letters, digits and "
        "'-' (an RFC 1035 label, no dots): it names the training JobSet, its headless Service and its pods' host names",
        check=_name_is_a_label,
    ),
)

# Transition rules need the old object, so only the API server enforces them (docs/operator.md: what an edit does).
NOT_STARTED = "!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending'"
GROWABLE_DATA = ("tokenBudget", "milestones")  # a started run may grow (docs/training.md: extending a run)


def _unchanged(path: str, optional: bool) -> str:
    """CEL: the field at `path` (under spec) is as it was; an optional field is also still set, or still unset."""
    same = f"self.spec.{path} == oldSelf.spec.{path}"
    if not optional:
        return same
    return f"has(self.spec.{path}) == has(oldSelf.spec.{path}) && (!has(self.spec.{path}) || {same})"


def _frozen(path: str, optional: bool = False) -> Rule:
    return Rule(
        cel=f"{NOT_STARTED} || {_unchanged(path, optional)}",
        message=f"spec.{path} is immutable once the run has started",
        field=f"spec.{path}",
    )


def _frozen_data_fields() -> tuple[Rule, ...]:
    """One rule per field of spec.data but the budget and milestones, each naming its field."""
    rules = []
    for name, info in DataSpec.model_fields.items():
        alias = info.alias or name
        if alias not in GROWABLE_DATA:
            rules.append(_frozen(f"data.{alias}", optional=info.default is None and not info.is_required()))
    return tuple(rules)


_OLD_BUDGET = "oldSelf.spec.data.tokenBudget"
_MILESTONES, _OLD_MILESTONES = "self.spec.data.milestones", "oldSelf.spec.data.milestones"


# The old object's step: a started run's step size is immutable, and the stored object was admitted, so its
# sizes are positive and its step fits in its budget (no division by zero, no overflow), whatever the edit.
_OLD_STEP = _STEP.replace("self.", "oldSelf.spec.")


def _steps(tokens: str) -> str:
    """CEL, on the resource: the optimizer steps that reach `tokens`."""
    return f"(({tokens} + {_OLD_STEP} - 1) / {_OLD_STEP})"


GROWTH_RULES = (
    Rule(
        cel=f"{NOT_STARTED} || self.spec.data.tokenBudget == {_OLD_BUDGET} || "
        f"{_steps('self.spec.data.tokenBudget')} > {_steps(_OLD_BUDGET)}",
        message="spec.data.tokenBudget may only grow once the run has started, by at least one optimizer step "
        "(the run continues from its checkpoint to the new budget)",
        field="spec.data.tokenBudget",
    ),
    Rule(
        cel=f"{NOT_STARTED} || ({_OLD_MILESTONES}.all(m, m in {_MILESTONES}) && "
        f"{_MILESTONES}.all(m, m in {_OLD_MILESTONES} || {_steps('m')} > {_steps(_OLD_BUDGET)}))",
        message="spec.data.milestones may only be appended to once the run has started: keep every milestone "
        "and add new ones in steps after the old tokenBudget (which has its export already)",
        field="spec.data.milestones",
    ),
)
IMMUTABLE_ONCE_STARTED = (
    *(_frozen(name) for name in ("model", "training", "evaluation", "storage")),
    *_frozen_data_fields(),
    *GROWTH_RULES,
)


class ContinuedPretrain(ApiModel):
    """A ContinuedPretrain resource as stored in Kubernetes."""

    api_version: Literal["cpt.kubecpt.dev/v1alpha1"] = Field(f"{API_GROUP}/{API_VERSION}", description="API version.")
    kind: Literal["ContinuedPretrain"] = Field(KIND, description="Kind.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: ContinuedPretrainSpec = Field(description="Desired state.")
    status: ContinuedPretrainStatus | None = Field(None, description="Observed state.")

    rules = (*RUN_NAME_RULES, *IMMUTABLE_ONCE_STARTED)
