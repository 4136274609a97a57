"""Where outputs go and how the pods run: storage, run policy, scheduling, images."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cpt.api.base import MAX_LIST, ApiModel, DnsSubdomain, Rule, SecretRef, section


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
    active_deadline_seconds: int | None = Field(None, ge=1, description="Fail the run after this many seconds.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the child Jobs this long after the run finishes."
    )


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


class Scheduling(ApiModel):
    """Placement of the child pods; labels here (e.g. the Kueue queue) pass through to every child."""

    node_selector: dict[str, str] = Field(default_factory=dict, max_length=MAX_LIST, description="Node selector.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=MAX_LIST, description="Tolerations.")
    priority_class_name: DnsSubdomain | None = Field(None, description="PriorityClass of the pods.")
    service_account_name: DnsSubdomain | None = Field(None, description="ServiceAccount of the pods.")
    queue_name: str | None = Field(
        None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Kueue LocalQueue: set as the kueue.x-k8s.io/queue-name label on every child Job.",
    )
    images: Images = section(Images, "Container images.")
