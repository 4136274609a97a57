"""`status`: phase, metav1-style conditions, and what each stage reports."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from cpt.api.base import MAX_LIST, ApiModel


class Phase(StrEnum):
    """Display-only summary of the conditions."""

    PENDING = "Pending"
    PREPROCESSING = "Preprocessing"
    TRAINING = "Training"
    EVALUATING = "Evaluating"
    REPORTING = "Reporting"
    SUSPENDED = "Suspended"
    QUEUED = "Queued"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ConditionType(StrEnum):
    """Condition types: the run as a whole, then one per stage."""

    COMPLETE = "Complete"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    QUEUED = "Queued"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    READY = "Ready"
    PREPROCESSED = "Preprocessed"
    DATA_READY = "DataReady"
    BASELINE_EVALUATED = "BaselineEvaluated"
    TRAINED = "Trained"
    EVALUATED = "Evaluated"
    REPORTED = "Reported"
    FORGETTING_BUDGET_EXCEEDED = "ForgettingBudgetExceeded"


class Condition(ApiModel):
    """A metav1.Condition."""

    type: str = Field(max_length=316, pattern=r"^([a-z0-9.-]+/)?[A-Za-z][A-Za-z0-9_]*$", description="Type.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(None, ge=0, description="Generation this condition was set for.")
    last_transition_time: str = Field(description="RFC 3339 time of the last status change.")
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", description="Reason.")
    message: str = Field("", max_length=32768, description="Human-readable details.")


class PreprocessStatus(ApiModel):
    """Counts from the preprocessing stage (summed over workers)."""

    shards: int = Field(0, ge=0, description="Shards written.")
    tokens: int = Field(0, ge=0, description="Tokens written (domain sources).")
    replay_tokens: int = Field(0, ge=0, description="Tokens written (replay set).")
    docs_read: int = Field(0, ge=0, description="Documents read.")
    docs_kept: int = Field(0, ge=0, description="Documents kept.")
    docs_dropped: dict[str, int] = Field(default_factory=dict, description="Documents dropped, by reason.")
    duplicates: int = Field(0, ge=0, description="Exact or near duplicates removed.")
    contaminated: int = Field(0, ge=0, description="Documents removed by decontamination.")
    held_out: int = Field(
        0, ge=0, description="Domain documents held out from training (evaluation.perplexity.domain.heldOut)."
    )
    bad_records: int = Field(0, ge=0, description="Malformed records skipped.")
    epochs: dict[str, float] = Field(
        default_factory=dict,
        description="Passes training makes over each prepared set (tokens needed / tokens held, worst source); "
        "above 1 the data is repeated.",
    )
    decontamination: str | None = Field(
        None, description="What decontamination indexed (n-grams, files), or why nothing was decontaminated."
    )


class TrainingStatus(ApiModel):
    """Progress of the training stage."""

    step: int = Field(0, ge=0, description="Optimizer steps done.")
    tokens_seen: int = Field(0, ge=0, description="Training tokens consumed.")
    loss: float | None = Field(None, description="Latest training loss.")
    learning_rate: float | None = Field(None, description="Latest learning rate.")
    tokens_per_second: float | None = Field(None, ge=0, description="Recent throughput (all processes).")
    mfu: float | None = Field(None, ge=0, description="Model FLOPs utilisation estimate (0-1).")
    eta: str | None = Field(None, description="Estimated time left, e.g. 1h20m.")
    latest_checkpoint: str | None = Field(None, description="URI of the latest complete checkpoint.")
    restarts: int = Field(0, ge=0, description="Restarts from a checkpoint so far.")
    total_steps: int | None = Field(None, ge=0, description="Optimizer steps of the whole run.")
    zero_stage: int | None = Field(
        None, ge=0, le=3, description="ZeRO stage in use (the one zeroStage auto chose, kept across resumes)."
    )
    exports: list[str] = Field(
        default_factory=list,
        max_length=2 * MAX_LIST,  # every milestone (at most MAX_LIST) and each segment's budget (at most MAX_LIST)
        description="Milestone exports written so far (exports/<name>); each is evaluated as soon as it appears.",
    )
    last_update_time: str | None = Field(None, description="When the trainer last wrote progress (RFC 3339).")


class TaskScore(ApiModel):
    """One benchmark result."""

    task: str = Field(description="lm-eval task.")
    metric: str = Field(description="Metric (acc, acc_norm, ...).")
    score: float = Field(description="Score.")
    stderr: float | None = Field(None, description="Standard error.")
    delta: float | None = Field(None, description="Score minus the baseline's.")


class MilestoneEvaluation(ApiModel):
    """Scores of one checkpoint; tokens 0 is the baseline."""

    tokens: int = Field(ge=0, description="Training tokens of the evaluated checkpoint (0 = base model).")
    export: str | None = Field(None, description="The evaluated milestone export (exports/<name>).")
    scores: list[TaskScore] = Field(default_factory=list, max_length=MAX_LIST, description="Per-task scores.")
    average: float | None = Field(None, description="Mean score over the tasks.")
    average_delta: float | None = Field(None, description="Average minus the baseline's.")
    domain_perplexity: float | None = Field(None, description="Held-out domain perplexity.")
    general_perplexity: float | None = Field(None, description="Held-out general perplexity.")
    results_uri: str | None = Field(None, description="Full results JSON.")


class GuardrailStatus(ApiModel):
    """The forgetting guardrail's verdict over the milestones evaluated so far."""

    breached: bool = Field(False, description="Whether an evaluated milestone exceeded the forgetting budget.")
    breached_at: int | None = Field(None, ge=0, description="Tokens of the first milestone over the budget.")
    message: str = Field("", max_length=32768, description="What exceeded the budget, or that all are within it.")
    recommended_export: str | None = Field(
        None, description="The last milestone export within the budget (as status.recommendedExport)."
    )


class EvaluationStatus(ApiModel):
    """Evaluation results per milestone."""

    milestones: list[MilestoneEvaluation] = Field(
        default_factory=list,
        description="One entry per evaluated model, keyed by its tokens (0 = base model); each evaluation Job "
        "merges its entries into the ones there, so a late writer never removes another's.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["tokens"]},
    )
    latest_average: float | None = Field(None, description="Average of the most recent evaluation.")
    latest_domain_perplexity_change: float | None = Field(
        None, description="The latest trained model's domain perplexity against the base model's (-0.35 = 35% lower)."
    )
    latest_general_perplexity_change: float | None = Field(
        None,
        description="The latest trained model's general perplexity against the base model's (+0.10 = 10% higher: "
        "forgetting).",
    )
    guardrail: GuardrailStatus | None = Field(None, description="The forgetting guardrail's verdict.")


class PlanStatus(ApiModel):
    """What the run is expected to take, from the spec alone (cpt/plan.py, as `cpt plan` prints it)."""

    steps: int = Field(ge=0, description="Optimizer steps of the whole run.")
    tokens_per_step: int = Field(
        ge=0, description="nodes x procsPerNode x microBatchSize x gradAccumulation x sequenceLength."
    )
    tokens: int = Field(ge=0, description="Tokens trained: steps x tokensPerStep.")
    parameters: int | None = Field(None, ge=0, description="Model parameters, where the operator knows the model.")
    gpu: str | None = Field(None, description="GPU type of the estimate (cpt/throughput.yaml).")
    gpu_from: str | None = Field(None, description="Where the GPU type comes from (node selector or the default).")
    zero_stage: int | None = Field(
        None, ge=0, le=3, description="The spec's ZeRO stage, or the one zeroStage auto would pick on that GPU."
    )
    memory_per_device_gib: float | None = Field(
        None, ge=0, alias="memoryPerDeviceGiB", description="Estimated memory per device at that stage (GiB)."
    )
    tokens_per_second_per_gpu: int | None = Field(
        None, ge=0, description="The throughput figure, scaled to the model by model FLOPs per token."
    )
    expected_seconds: int | None = Field(None, ge=0, description="Expected training time (seconds).")
    expected_duration: str | None = Field(
        None,
        description='Expected training time, e.g. 7h30m; "7h30m (A100-80GB assumed)" when no label named the GPU.',
    )
    source: str | None = Field(None, description="The figure used and where it comes from.")
    note: str | None = Field(
        None, description="Why a figure is missing (unknown model, no GPU, no stage fits, the plan failed)."
    )


class SegmentStatus(ApiModel):
    """One budget the run has trained to (docs/training.md, "Extending a run"): segment 0 is the first budget,
    each growth of spec.data.tokenBudget adds one."""

    token_budget: int = Field(ge=0, description="spec.data.tokenBudget the segment trains to.")
    start_step: int = Field(ge=0, description="Optimizer steps done before it (the end of the segment before).")
    end_step: int = Field(
        ge=0, description="Optimizer steps done at its end (what the trainer reported, once trained)."
    )
    start_time: str | None = Field(None, description="When the segment started (RFC 3339).")
    completion_time: str | None = Field(None, description="When its training finished (RFC 3339).")
    restarts: int | None = Field(None, ge=0, description="Gang restarts of its training, once finished.")


class ContinuedPretrainStatus(ApiModel):
    """Observed state, written by the operator only."""

    observed_generation: int | None = Field(None, ge=0, description="Generation last acted upon.")
    phase: Phase = Field(Phase.PENDING, description="Display-only summary of the conditions.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Reconciling, Stalled, Complete, Failed, Suspended, ForgettingBudgetExceeded, and per stage "
        "Preprocessed, DataReady, "
        "BaselineEvaluated, Trained, Evaluated, Reported.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    start_time: str | None = Field(None, description="When the run started (RFC 3339).")
    completion_time: str | None = Field(None, description="When the run finished (RFC 3339).")
    running_seconds: int | None = Field(
        None,
        ge=0,
        description="Seconds the run has been running before runningSince: not suspended, not queued in Kueue, "
        "not finished (what runPolicy.activeDeadlineSeconds counts).",
    )
    running_since: str | None = Field(None, description="When the current running period began (RFC 3339).")
    preprocess: PreprocessStatus | None = Field(None, description="Preprocessing counts.")
    training: TrainingStatus | None = Field(None, description="Training progress.")
    evaluation: EvaluationStatus | None = Field(None, description="Evaluation results.")
    plan: PlanStatus | None = Field(
        None, description="Steps, memory and expected training time, written at admission (cpt plan)."
    )
    report_uri: str | None = Field(None, description="URI of the rendered report.")
    recommended_export: str | None = Field(
        None,
        description="With evaluation.guardrail: the last milestone export within the forgetting budget "
        "(exports/<name>), if any.",
    )
    segments: list[SegmentStatus] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="One entry per budget the run has had, in order (the operator's record; a grown budget adds one).",
    )
    evaluated_exports: list[str] = Field(
        default_factory=list,
        max_length=2 * MAX_LIST,  # every milestone (at most MAX_LIST) and each segment's budget (at most MAX_LIST)
        description="Milestone exports whose evaluation Job completed (the operator's record: each runs once).",
    )
