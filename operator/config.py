"""The operator's own settings, from its environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorConfig:
    """Defaults a resource may override (images) and how often runs are reconciled."""

    worker_image: str = "ghcr.io/kubecpt/worker:0.1.0"
    pull_policy: str = "IfNotPresent"
    reconcile_seconds: float = 5.0

    @classmethod
    def from_env(cls) -> OperatorConfig:
        return cls(
            worker_image=os.environ.get("KUBECPT_WORKER_IMAGE", cls.worker_image),
            pull_policy=os.environ.get("KUBECPT_PULL_POLICY", cls.pull_policy),
            reconcile_seconds=float(os.environ.get("KUBECPT_RECONCILE_SECONDS", cls.reconcile_seconds)),
        )
