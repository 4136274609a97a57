"""The operator's own settings, from its environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cpt_operator import pod_template


@dataclass(frozen=True)
class OperatorConfig:
    """Defaults a resource may override (images), the platform's worker pod template, how often runs are
    reconciled."""

    worker_image: str = "ghcr.io/kubecpt/worker:0.1.0"
    pull_policy: str = "IfNotPresent"
    reconcile_seconds: float = 60.0
    worker_pod_template: dict[str, Any] | None = field(default=None, hash=False, compare=False)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        return cls(
            worker_image=os.environ.get("KUBECPT_WORKER_IMAGE", cls.worker_image),
            pull_policy=os.environ.get("KUBECPT_PULL_POLICY", cls.pull_policy),
            reconcile_seconds=float(os.environ.get("KUBECPT_RECONCILE_SECONDS", cls.reconcile_seconds)),
            worker_pod_template=(
                pod_template.load(os.environ["KUBECPT_WORKER_POD_TEMPLATE"])
                if os.environ.get("KUBECPT_WORKER_POD_TEMPLATE")
                else None
            ),
        )
