"""Every stage pod the operator builds passes Pod Security `restricted` on the real API server, and gets requests.

`cpt render`'s objects are applied with --dry-run=server in a namespace that enforces `restricted`; since Pod
Security admission checks pods, not Jobs, a Pod is also created (dry run) from each Job's and the JobSet's pod
template there. The API server answers with the Pod it would store, whose `status.qosClass` shows the stage has
requests. A template with the security context removed is refused there, so the namespace really enforces."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.cluster import Cluster
from tests.operator.test_operator_on_cluster import crds, run_doc

__all__ = ["crds"]  # the fixture: CRDs of the run and of JobSet installed


def render(doc: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    cpt = str(Path(sys.executable).parent / "cpt")
    rendered = subprocess.run([cpt, "render", str(path)], capture_output=True, text=True, check=True).stdout
    return list(yaml.safe_load_all(rendered))


def pod_templates(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each Job's and JobSet's pod template, by child name."""
    templates = {}
    for child in children:
        if child["kind"] == "Job":
            templates[child["metadata"]["name"]] = child["spec"]["template"]
        elif child["kind"] == "JobSet":
            templates[child["metadata"]["name"]] = child["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    return templates


def create_pod(cluster: Cluster, namespace: str, name: str, template: dict[str, Any]) -> subprocess.CompletedProcess:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }
    return cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod), check=False)


def test_every_stage_pod_passes_pod_security_restricted(crds: Cluster, namespace: str, tmp_path: Path) -> None:
    crds.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    training = {
        "nodes": 2,
        "procsPerNode": 4,
        "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"nvidia.com/gpu": 4, "memory": "64Gi"}},
        "secretEnv": {"WANDB_API_KEY": {"name": "wandb", "key": "api-key"}},
    }
    doc = run_doc("restricted", training=training, scheduling={"nodeSelector": {"nvidia.com/gpu.present": "true"}})
    doc["metadata"]["namespace"] = namespace
    children = render(doc, tmp_path)
    applied = crds.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(children), check=False)
    assert applied.returncode == 0, applied.stderr
    # The pods' ServiceAccount must exist for a Pod to be admitted at all (the ServiceAccount admission plugin).
    crds.apply([c for c in children if c["kind"] in ("ConfigMap", "ServiceAccount")])

    templates = pod_templates(children)
    assert len(templates) == 7  # baseline, preprocess, dedup, training, two milestone evaluations, report
    for name, template in templates.items():
        result = create_pod(crds, namespace, name, template)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        pod = json.loads(result.stdout)
        assert pod["status"]["qosClass"] == "Burstable", name  # requests on every stage, none BestEffort

    relaxed = copy.deepcopy(templates["restricted-preprocess"])
    del relaxed["spec"]["securityContext"]
    del relaxed["spec"]["containers"][0]["securityContext"]
    refused = create_pod(crds, namespace, "relaxed", relaxed)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr, refused.stderr
