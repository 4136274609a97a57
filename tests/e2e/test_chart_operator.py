"""The operator as a platform team runs it: installed by the Helm chart from its (local) image, a real pod on
the real node, Ready through kopf's health endpoint, and working through in-cluster configuration (its
ServiceAccount token and the `kubernetes` Service's ClusterIP, which kube-proxy resolves on this machine)."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.cluster.cluster import Cluster
from tests.cluster.helpers import eventually
from tests.conftest import REPO
from tests.e2e.conftest import OPERATOR_IMAGE, host_environment

CHART = REPO / "charts" / "kubecpt"
CRD = REPO / "manifests" / "crd" / "continuedpretrains.cpt.kubecpt.dev.yaml"
NAMESPACE, SYSTEM = "chart-e2e", "kubecpt-system"


def test_the_chart_installed_operator_runs_as_a_real_pod_and_reconciles(node, tmp_path) -> None:
    cluster: Cluster = node.cluster
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/continuedpretrains.cpt.kubecpt.dev", "--timeout=60s")
    cluster.kubectl("create", "namespace", NAMESPACE)
    volumes, mounts = host_environment()
    repository, tag = OPERATOR_IMAGE.rsplit(":", 1)
    values = {
        "crds": {"enabled": False},  # applied above; the end-to-end module applies it too
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watchNamespace": NAMESPACE,
        "extraVolumes": volumes,
        "extraVolumeMounts": mounts,
        # The local image runs the node's Python, which lives under /root (mode 700) on the test machine: root
        # here. Everything else of the restricted profile stays (read-only root, no privilege escalation, no
        # capabilities, RuntimeDefault seccomp); the production image runs as 65532.
        "podSecurityContext": {"runAsUser": 0, "runAsNonRoot": False, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    cluster.helm(
        *("install", "kubecpt", str(CHART), "-n", SYSTEM, "--create-namespace", "-f", str(tmp_path / "values.yaml")),
        *("--wait", "--timeout", "180s"),
        timeout=200,
    )
    try:
        deployment = cluster.get_json("deployment", "kubecpt", "-n", SYSTEM)
        assert deployment["status"]["readyReplicas"] == 1  # the readiness probe is kopf's /healthz, for real
        (pod,) = cluster.get_json("pods", "-n", SYSTEM, "-l", "app.kubernetes.io/name=kubecpt")["items"]
        assert pod["spec"]["nodeName"] == "kubecpt-node" and pod["status"]["phase"] == "Running"
        security = pod["spec"]["containers"][0]["securityContext"]
        assert security["readOnlyRootFilesystem"] and security["capabilities"] == {"drop": ["ALL"]}

        run = {
            "apiVersion": "cpt.kubecpt.dev/v1alpha1",
            "kind": "ContinuedPretrain",
            "metadata": {"name": "seen", "namespace": NAMESPACE},
            "spec": {
                "model": {"uri": "s3://nowhere/model"},
                "data": {"sources": [{"name": "d", "uri": "s3://nowhere/d.jsonl"}], "tokenBudget": 1000000},
                "storage": {"uri": "s3://nowhere/seen"},
                "suspend": True,  # nothing runs: the point is that the in-cluster operator acts
            },
        }
        cluster.apply(run)

        def reconciled() -> dict[str, Any] | None:
            obj = cluster.get_json("cpt", "seen", "-n", NAMESPACE)
            status = obj.get("status") or {}
            return obj if status.get("observedGeneration") == obj["metadata"]["generation"] else None

        seen = eventually(reconciled, timeout=90, what="the in-cluster operator's first pass")
        assert seen["status"]["phase"] == "Suspended"
        configmap = cluster.get_json("configmap", "seen-spec", "-n", NAMESPACE)
        assert json.loads(json.dumps(configmap["metadata"]["ownerReferences"]))[0]["name"] == "seen"
        logs = cluster.kubectl("logs", pod["metadata"]["name"], "-n", SYSTEM).stdout
        assert "Handler 'on_run' succeeded" in logs and "Forbidden" not in logs, logs[-3000:]
    finally:
        cluster.kubectl("delete", "cpt", "--all", "-n", NAMESPACE, "--wait=true", check=False, timeout=120)
        cluster.helm("uninstall", "kubecpt", "-n", SYSTEM, "--wait", check=False)
