"""Smoke tests proving the test control plane is real: controllers, scheduler, kwok, RBAC, helm."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cluster.cluster import GPU_PRODUCT, Cluster, versions
from tests.cluster.helpers import condition, eventually, job


def wait_for_condition(cluster: Cluster, namespace: str, job_name: str, kind: str) -> None:
    eventually(
        lambda: condition(cluster.get_json("job", job_name, "-n", namespace), kind) == "True",
        what=f"Job {job_name} {kind}",
    )


def pods_of(cluster: Cluster, namespace: str, job_name: str) -> list[dict]:
    return cluster.get_json("pods", "-n", namespace, "-l", f"job-name={job_name}")["items"]


def test_server_reports_the_pinned_version(cluster: Cluster) -> None:
    info = json.loads(cluster.raw_get("/version"))
    assert info["gitVersion"] == versions()["K8S_VERSION"]


def test_kubectl_lists_the_fake_gpu_nodes(cluster: Cluster) -> None:
    out = cluster.kubectl("get", "nodes", "-l", "nvidia.com/gpu.present=true", "-o", "name").stdout.split()
    assert out == ["node/gpu-node-0", "node/gpu-node-1"]
    node = cluster.get_json("node", "gpu-node-0")
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == GPU_PRODUCT
    assert condition(node, "Ready") == "True"


def test_job_is_scheduled_on_a_gpu_node_and_completes(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("ok", namespace, node_selector={"nvidia.com/gpu.product": GPU_PRODUCT}))
    wait_for_condition(cluster, namespace, "ok", "Complete")
    (pod,) = pods_of(cluster, namespace, "ok")
    assert pod["spec"]["nodeName"].startswith("gpu-node-")  # bound by the real scheduler
    assert pod["status"]["phase"] == "Succeeded"  # run to completion by kwok


def test_deleting_a_job_garbage_collects_its_pod(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("gc", namespace, annotations={"test.kubecpt.dev/hold": ""}))
    eventually(
        lambda: [p for p in pods_of(cluster, namespace, "gc") if p["status"].get("phase") == "Running"],
        what="held pod Running",
    )
    cluster.kubectl("delete", "job", "gc", "-n", namespace, "--cascade=background", "--wait=false")
    eventually(lambda: pods_of(cluster, namespace, "gc") == [], what="pod garbage-collected")


def test_a_chosen_pod_fails_with_an_exit_code(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("fails", namespace, annotations={"test.kubecpt.dev/exit-code": "3"}))
    wait_for_condition(cluster, namespace, "fails", "Failed")
    job_obj = cluster.get_json("job", "fails", "-n", namespace)
    reasons = {c["reason"] for c in job_obj["status"]["conditions"] if c["type"] == "Failed"}
    assert reasons == {"BackoffLimitExceeded"}
    (pod,) = pods_of(cluster, namespace, "fails")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_a_held_pod_can_be_evicted_later(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("evicted", namespace, annotations={"test.kubecpt.dev/hold": ""}))
    pod = eventually(
        lambda: next(
            (p for p in pods_of(cluster, namespace, "evicted") if p["status"].get("phase") == "Running"), None
        ),
        what="held pod Running",
    )
    name = pod["metadata"]["name"]
    cluster.kubectl("annotate", "pod", name, "-n", namespace, "test.kubecpt.dev/evict=")

    def failed_status() -> dict | None:
        status = cluster.get_json("pod", name, "-n", namespace)["status"]
        return status if status["phase"] == "Failed" else None

    evicted = eventually(failed_status, what="pod evicted")
    assert evicted["reason"] == "Evicted"
    assert condition({"status": evicted}, "DisruptionTarget") == "True"


def test_the_server_rejects_an_invalid_object(cluster: Cluster, namespace: str) -> None:
    bad = job("Bad_Name", namespace)
    del bad["spec"]["template"]["spec"]["containers"][0]["image"]
    result = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert "is invalid" in result.stderr and "metadata.name" in result.stderr


def test_rbac_is_enforced(cluster: Cluster, namespace: str) -> None:
    who = f"--as=system:serviceaccount:{namespace}:default"
    assert cluster.kubectl("auth", "can-i", "create", "jobs", "-n", namespace, who, check=False).stdout.strip() == "no"
    assert cluster.kubectl("auth", "can-i", "create", "jobs", "-n", namespace).stdout.strip() == "yes"


def test_helm_template_and_install(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "demo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    rendered = cluster.helm("template", "demo", str(chart), "--set", "greeting=hi").stdout
    assert "name: demo-cm" in rendered and 'greeting: "hi"' in rendered
    cluster.helm("install", "demo", str(chart), "-n", namespace, "--wait", "--timeout", "60s")
    cm = cluster.get_json("configmap", "demo-cm", "-n", namespace)
    assert cm["data"] == {"greeting": "hello"}
    releases = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("demo", "deployed")]
    cluster.helm("uninstall", "demo", "-n", namespace, "--wait")
    assert cluster.kubectl("get", "configmap", "demo-cm", "-n", namespace, check=False).returncode != 0


def test_service_addresses_come_from_the_benchmarking_range(cluster: Cluster) -> None:
    """No address the cluster hands out may belong to a real network: 198.18.0.0/15 only."""
    import ipaddress

    ip = cluster.get_json("service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("198.18.0.0/15"), ip
