"""Small helpers for tests against the real control plane."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float = 60, interval: float = 0.3, what: str = "") -> T:
    """Poll probe until it returns something truthy; fail with what was last seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}; last value: {last!r}")


def condition(obj: dict[str, Any], kind: str) -> str | None:
    """The status ("True"/"False"/...) of a condition type, or None."""
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return cond.get("status")
    return None


def job(
    name: str,
    namespace: str,
    *,
    annotations: dict[str, str] | None = None,
    backoff_limit: int = 0,
    gpus: int = 1,
    node_selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A batch/v1 Job with one pod that asks for GPUs."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": node_selector or {},
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.invalid/kubecpt/worker:test",
                            "command": ["python", "-m", "cpt_pipeline", "noop"],
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            },
        },
    }
