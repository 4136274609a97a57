"""The platform team's worker pod template: what every stage pod on this cluster needs beyond the run's spec.

Like a Kubeflow Trainer ClusterTrainingRuntime, it belongs to whoever runs the operator, not to each run: a
shared cache volume, a CA bundle, a node selector for the worker pool, a pod securityContext. The operator
reads it from the YAML file named by KUBECPT_WORKER_POD_TEMPLATE (the Helm chart mounts it from a ConfigMap):

    volumes: [...]            # appended to the pod's volumes
    nodeSelector: {...}       # merged; the run's own keys win
    tolerations: [...]        # appended
    securityContext: {...}    # merged over the operator's restricted one, key by key: the template's keys win
    container:                # applied to every stage container
      volumeMounts: [...]     # appended
      env: [...]              # appended after the run's env (an env name the run sets is not repeated)
      securityContext: {...}  # merged over the operator's restricted one, key by key: the template's keys win

The operator gives every stage pod Pod Security `restricted` (placement.py): pod `runAsNonRoot` and a
RuntimeDefault seccomp profile; container `allowPrivilegeEscalation: false`, every capability dropped. A run
cannot change it; the platform can (e.g. `runAsUser: 1000` for an image without a numeric USER, as the end-to-end
tests' local image), and owns what that means for its namespaces.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

POD_KEYS = {"volumes": list, "nodeSelector": dict, "tolerations": list, "securityContext": dict, "container": dict}
CONTAINER_KEYS = {"volumeMounts": list, "env": list, "securityContext": dict}


class PodTemplateError(ValueError):
    """The worker pod template file is unreadable or has a key or type the operator does not apply."""


def _check(mapping: Any, allowed: dict[str, type], where: str) -> None:
    if not isinstance(mapping, dict):
        raise PodTemplateError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    for key, value in mapping.items():
        if key not in allowed:
            raise PodTemplateError(f"{where}.{key}: not applied by the operator (allowed: {', '.join(allowed)})")
        if not isinstance(value, allowed[key]):
            raise PodTemplateError(f"{where}.{key}: expected a {allowed[key].__name__}")


def load(path: str | Path) -> dict[str, Any]:
    """Read and check the template file; errors name the file and the key."""
    try:
        template = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise PodTemplateError(f"{path}: {error}") from error
    _check(template, POD_KEYS, str(path))
    _check(template.get("container", {}), CONTAINER_KEYS, f"{path}: container")
    return template


def apply(pod: dict[str, Any], template: dict[str, Any] | None) -> dict[str, Any]:
    """Return `pod` (a pod spec) with the template applied; the run's own settings take precedence."""
    if not template:
        return pod
    pod = copy.deepcopy(pod)
    pod["volumes"] = [*pod.get("volumes", []), *copy.deepcopy(template.get("volumes", []))]
    pod["nodeSelector"] = {**template.get("nodeSelector", {}), **pod.get("nodeSelector", {})}
    pod["tolerations"] = [*pod.get("tolerations", []), *copy.deepcopy(template.get("tolerations", []))]
    if "securityContext" in template:
        pod["securityContext"] = {**pod.get("securityContext", {}), **copy.deepcopy(template["securityContext"])}
    extra = template.get("container", {})
    for container in pod["containers"]:
        container["volumeMounts"] = [*container.get("volumeMounts", []), *copy.deepcopy(extra.get("volumeMounts", []))]
        names = {variable["name"] for variable in container.get("env", [])}
        added = [copy.deepcopy(v) for v in extra.get("env", []) if v.get("name") not in names]
        container["env"] = [*container.get("env", []), *added]
        if "securityContext" in extra:
            own = container.get("securityContext", {})
            container["securityContext"] = {**own, **copy.deepcopy(extra["securityContext"])}
    return pod
