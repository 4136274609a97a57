"""Resources and placement of each stage's pods, and the security context every stage pod runs with.

The training gang takes `training.resources` and `scheduling.nodeSelector`/`tolerations` (the GPU pool). The
other stages take `scheduling.stages.<stage>`; a field left unset there takes the stage's default: requests and
a memory limit (no CPU limit, so a stage is never throttled below an idle node's capacity), and no node
selector or tolerations, so CPU work stays off the GPU pool. A stage pod that requests a GPU goes where the gang
goes. Evaluation requests one GPU of the training's kind when the training requests GPUs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from cpt.api import ContinuedPretrainSpec
from cpt.api.base import Resources
from cpt.stages import Stage

# Pod Security `restricted`: the pod's and each container's part. A platform's worker pod template may change
# them key by key (operator/pod_template.py); the worker image runs as a numeric non-root USER (1000).
POD_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

# The defaults of scheduling.stages.<stage>.resources (one setting there replaces a default as a whole).
STAGE_RESOURCES: dict[Stage, dict[str, dict[str, Any]]] = {
    Stage.PREPROCESS: {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
    Stage.DEDUP: {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "8Gi"}},
    Stage.EVALUATE: {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}},
    Stage.REPORT: {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
}
# Evaluation when the training requests GPUs: this, plus one GPU of the training's resource name.
GPU_EVALUATE: dict[str, dict[str, Any]] = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "32Gi"}}


@dataclass(frozen=True)
class Placement:
    """One stage pod's container resources, node selector and tolerations, as the pod spec spells them."""

    resources: dict[str, Any]
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]

    @property
    def gpu(self) -> str | None:
        return gpu_resource(self.resources)


def gpu_resource(resources: dict[str, Any]) -> str | None:
    """The GPU resource name requested (nvidia.com/gpu, amd.com/gpu, nvidia.com/mig-1g.10gb, ...), if any."""
    names = {name for part in resources.values() for name in part}
    gpus = sorted(n for n in names if "/" in n and ("gpu" in n.split("/")[-1] or n.split("/")[-1].startswith("mig-")))
    return gpus[0] if gpus else None


def _resources(model: Resources) -> dict[str, Any]:
    return {key: value for key, value in model.to_api().items() if value}


def training_placement(spec: ContinuedPretrainSpec) -> Placement:
    scheduling = spec.scheduling
    tolerations = [t.to_api() for t in scheduling.tolerations]
    return Placement(_resources(spec.training.resources), dict(scheduling.node_selector), tolerations)


def default_resources(spec: ContinuedPretrainSpec, stage: Stage) -> dict[str, Any]:
    """A stage's resources when scheduling.stages.<stage>.resources is unset."""
    gpu = training_placement(spec).gpu if stage is Stage.EVALUATE else None
    if gpu is None:
        return copy.deepcopy(STAGE_RESOURCES[stage])
    resources = copy.deepcopy(GPU_EVALUATE)
    resources["requests"][gpu] = resources["limits"][gpu] = 1
    return resources


def stage_placement(spec: ContinuedPretrainSpec, stage: Stage) -> Placement:
    """What `stage`'s pods request and where they go (the module docstring says the rules)."""
    gang = training_placement(spec)
    if stage is Stage.TRAIN:
        return gang
    own = getattr(spec.scheduling.stages, str(stage))
    resources = _resources(own.resources) if own.resources is not None else default_resources(spec, stage)
    on_gpu = gpu_resource(resources) is not None
    node_selector = own.node_selector if own.node_selector is not None else gang.node_selector if on_gpu else {}
    tolerations = (
        [t.to_api() for t in own.tolerations] if own.tolerations is not None else gang.tolerations if on_gpu else []
    )
    return Placement(resources, dict(node_selector), tolerations)
