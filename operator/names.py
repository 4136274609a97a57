"""Deterministic names and labels of a run's children: the same resource always yields the same names, so a
restarted operator finds what it created instead of creating it again."""

from __future__ import annotations

import hashlib

from cpt import API_GROUP

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # Kueue: the LocalQueue a child waits in
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"  # Kueue: the WorkloadPriorityClass of a child's Workload

RUN_LABEL = f"{API_GROUP}/run"  # every child and every pod: the ContinuedPretrain's name
DEACTIVATED = f"{API_GROUP}/deactivated"  # annotation on a Kueue Workload the operator deactivated (suspend, a stop)
STAGE_LABEL = f"{API_GROUP}/stage"  # preprocess, dedup, train, evaluate, report
TARGET_LABEL = f"{API_GROUP}/target"  # evaluation Jobs: baseline or an export
MANAGED_BY = "kubecpt-operator"
MAX_NAME = 52  # Job names become pod-name prefixes and label values; JobSet pod host names add "-node-0-0"


def child_name(run: str, suffix: str) -> str:
    """`<run>-<suffix>`, shortened with a stable hash when it would be too long."""
    name = f"{run}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{run[: MAX_NAME - len(suffix) - 10]}-{digest}-{suffix}"


def segment_suffix(stage: str, segment: int) -> str:
    """A stage child's name suffix: `<stage>` for segment 0, `<stage>-segment-NN` for the segment a grown budget
    added (as its data folders are named), so a continued run's children never take an earlier segment's names."""
    return stage if segment == 0 else f"{stage}-segment-{segment:02d}"


def labels(run: str, stage: str | None = None) -> dict[str, str]:
    out = {RUN_LABEL: run, "app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/name": "kubecpt"}
    if stage:
        out[STAGE_LABEL] = stage
    return out
