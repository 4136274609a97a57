"""Where outputs go and how the pods run: storage, run policy, scheduling, images."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cpt.api.base import MAX_LIST, ApiModel, DnsSubdomain, Resources, Rule, SecretRef, section

SHUTDOWN_MARGIN_SECONDS = 10  # of the training pods' grace period, left for the launcher's own exit
SHUTDOWN_ENV = "KUBECPT_SHUTDOWN_SECONDS"  # the operator's RunPolicy.worker_shutdown_seconds for the launcher


class StorageSpec(ApiModel):
    """Output location for shards, checkpoints, exports, results and the report."""

    uri: str = Field(
        min_length=1,
        max_length=2048,
        description="s3://bucket/prefix, gs://bucket/prefix, file:///path, or a local path (local runs).",
    )
    credentials_secret: SecretRef | None = Field(
        None, description="Secret with credentials (e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) as env vars."
    )
    endpoint: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="S3-compatible endpoint override (MinIO, Ceph, ...), e.g. http://minio.storage:9000.",
    )
    region: str | None = Field(None, max_length=64, description="Object-store region.")

    rules = (
        Rule(
            cel="!has(self.endpoint) || self.uri.startsWith('s3://')",
            message="endpoint applies to s3:// storage only",
            field="endpoint",
            check=lambda s: s.endpoint is None or s.uri.startswith("s3://"),
        ),
        Rule(
            cel="!self.uri.contains('://') || self.uri.startsWith('s3://') || self.uri.startsWith('gs://') "
            "|| self.uri.startsWith('file://')",
            message="storage uri scheme must be s3://, gs:// or file://",
            field="uri",
            check=lambda s: "://" not in s.uri or s.uri.startswith(("s3://", "gs://", "file://")),
        ),
    )


class RunPolicy(ApiModel):
    """Retries and lifetime, as in Kubeflow Trainer's runPolicy."""

    backoff_limit: int = Field(3, ge=0, le=1000, description="Pod failures tolerated per stage Job.")
    max_restarts: int = Field(
        10, ge=0, le=10000, description="Training restarts from the latest checkpoint before the run fails."
    )
    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        description="Fail the run once it has run this many seconds (time suspended or queued in Kueue does not "
        "count); its pods are then stopped, as a Job's are.",
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the child Jobs this long after the run finishes."
    )
    termination_grace_period_seconds: int = Field(
        300,
        ge=30,
        le=86400,
        description="The training pods' terminationGracePeriodSeconds: time to finish the step, save and upload "
        "a checkpoint on SIGTERM (preemption, eviction, drain). The launcher gives its workers this minus "
        f"{SHUTDOWN_MARGIN_SECONDS} s before it kills them.",
    )
    rendezvous_timeout_seconds: int = Field(
        900,
        ge=10,
        le=86400,
        description="How long each training node waits for the whole gang to start (scheduling and image pulls "
        "included). A gang not all there by then restarts like a preemption, not counted in maxRestarts.",
    )

    @property
    def worker_shutdown_seconds(self) -> int:
        """How long the launcher waits for its workers after forwarding SIGTERM: the grace period less a margin
        for the launcher's own exit, so the workers are never killed by the kubelet mid-upload."""
        return self.termination_grace_period_seconds - SHUTDOWN_MARGIN_SECONDS


class Toleration(ApiModel):
    """A core/v1 Toleration."""

    key: str | None = Field(None, max_length=316, description="Taint key (empty with Exists matches all).")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match (empty matches all)."
    )
    toleration_seconds: int | None = Field(None, description="NoExecute: how long the pod stays bound.")


class Images(ApiModel):
    """Container images of the stages (defaults come from the operator's configuration)."""

    worker: str | None = Field(None, max_length=1024, description="Image for preprocess/train/evaluate/report.")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(None, description="Image pull policy.")


class StageScheduling(ApiModel):
    """Resources and placement of one stage's pods. An unset field takes the stage's default (docs/operator.md):
    requests and a memory limit sized for the stage; no node selector or tolerations, unless the pod requests a
    GPU, which then goes where the training gang goes (scheduling.nodeSelector and tolerations)."""

    resources: Resources | None = Field(
        None, description="Requests and limits of each pod (replace the stage's default as a whole)."
    )
    node_selector: dict[str, str] | None = Field(None, max_length=MAX_LIST, description="Node selector.")
    tolerations: list[Toleration] | None = Field(None, max_length=MAX_LIST, description="Tolerations.")


class Stages(ApiModel):
    """Per-stage resources and placement of the CPU stages (and of evaluation, which gets a GPU by default when
    training requests GPUs)."""

    preprocess: StageScheduling = section(StageScheduling, "Each preprocessing worker's pod.")
    dedup: StageScheduling = section(StageScheduling, "The dedup/pack pod.")
    evaluate: StageScheduling = section(StageScheduling, "Each evaluation pod (baseline and every milestone).")
    report: StageScheduling = section(StageScheduling, "The report pod.")


class Scheduling(ApiModel):
    """Placement of the child pods, their images, and the Kueue queue (children carry only the operator's labels)."""

    node_selector: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_LIST,
        description="Node selector of the training gang (and of any stage pod that requests a GPU).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Tolerations of the training gang (and of any stage pod that requests a GPU).",
    )
    priority_class_name: DnsSubdomain | None = Field(None, description="PriorityClass of the pods.")
    service_account_name: DnsSubdomain | None = Field(None, description="ServiceAccount of the pods.")
    queue_name: str | None = Field(
        None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Kueue LocalQueue: set as the kueue.x-k8s.io/queue-name label on every child Job.",
    )
    images: Images = section(Images, "Container images.")
    stages: Stages = section(Stages, "Resources and placement of the other stages' pods.")
