"""Kueue for real: the Kueue controller (v0.19.2, built from the Go module proxy) admits training gangs under a
GPU quota that fits one gang. Two runs on the queue: the second's gang waits, and its status says it is queued
and by which Workload, until the first finishes; then it is admitted and completes. kwok's fake GPU nodes run
the pods; the operator runs as a process, as in tests/operator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cluster.cluster import GPU_PRODUCT, Cluster
from tests.cluster.helpers import eventually
from tests.kueue.controller import start_kueue
from tests.operator.process import Operator
from tests.operator.test_operator_on_cluster import CRD, condition, get, phase_is, run_doc

KUEUE = "kueue.x-k8s.io/v1beta2"
GANG_GPUS = 8  # one node of 8 GPUs: the ClusterQueue's whole quota


@pytest.fixture(scope="module")
def kueue(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory):
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/continuedpretrains.cpt.kubecpt.dev", "--timeout=60s")
    controller = start_kueue(cluster, tmp_path_factory.mktemp("kueue"))
    cluster.apply(
        [
            {  # the kwok nodes' GPU: status.plan is re-planned on it once a gang is admitted
                "apiVersion": KUEUE,
                "kind": "ResourceFlavor",
                "metadata": {"name": "default"},
                "spec": {"nodeLabels": {"nvidia.com/gpu.product": GPU_PRODUCT}},
            },
            {
                "apiVersion": KUEUE,
                "kind": "ClusterQueue",
                "metadata": {"name": "gpu"},
                "spec": {
                    "namespaceSelector": {},
                    "preemption": {"withinClusterQueue": "LowerPriority"},
                    "resourceGroups": [
                        {
                            "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                            "flavors": [
                                {
                                    "name": "default",
                                    "resources": [
                                        {"name": "cpu", "nominalQuota": "100"},
                                        {"name": "memory", "nominalQuota": "1000Gi"},
                                        {"name": "nvidia.com/gpu", "nominalQuota": GANG_GPUS},
                                    ],
                                }
                            ],
                        }
                    ],
                },
            },
        ]
    )
    for name, value in (("cpt-low", 100), ("cpt-high", 1000)):  # the pods' and Kueue's priority, one name
        cluster.apply(
            [
                {
                    "apiVersion": "scheduling.k8s.io/v1",
                    "kind": "PriorityClass",
                    "metadata": {"name": name},
                    "value": value,
                },
                {"apiVersion": KUEUE, "kind": "WorkloadPriorityClass", "metadata": {"name": name}, "value": value},
            ]
        )
    yield cluster
    controller.stop()
    print(f"\nkueue log: {controller.log}\n{controller.tail(40)}")


def queued_run(name: str, namespace: str, priority: str | None = None, **training: Any) -> dict[str, Any]:
    doc = run_doc(
        name,
        scheduling={
            "queueName": "gpu",
            **({"priorityClassName": priority} if priority else {}),
            # The quota fits one gang: evaluation runs on CPU here (by default it would take one of the GPUs), so
            # only the gangs compete for it.
            "stages": {"evaluate": {"resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}},
        },
        training={
            "nodes": 1,
            "resources": {"requests": {"nvidia.com/gpu": GANG_GPUS}, "limits": {"nvidia.com/gpu": GANG_GPUS}},
            **training,
        },
    )
    return {**doc, "metadata": {"name": name, "namespace": namespace}}


def local_queue(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        {
            "apiVersion": KUEUE,
            "kind": "LocalQueue",
            "metadata": {"name": "gpu", "namespace": namespace},
            "spec": {"clusterQueue": "gpu"},
        }
    )


def running_gang(cluster: Cluster, namespace: str, run: str) -> list[dict[str, Any]]:
    pods = get(cluster, namespace, "pods", "-l", f"jobset.sigs.k8s.io/jobset-name={run}-train")
    return [
        p
        for p in (pods or {}).get("items", [])
        if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]
    ]


@pytest.fixture
def operator(kueue: Cluster, namespace: str, tmp_path: Path):
    """The namespace's LocalQueue on the `gpu` ClusterQueue, and the operator serving the namespace."""
    local_queue(kueue, namespace)
    running = Operator(kueue, namespace, tmp_path / "operator.log")
    running.start()
    yield running
    running.stop()
    print(running.log.read_text()[-3000:])


def test_the_second_gang_waits_in_the_queue_until_the_first_finishes(operator: Operator, namespace: str) -> None:
    cluster = operator.cluster
    cluster.apply(queued_run("first", namespace, extraEnv={"TEST_HOLD": "1"}))  # its gang holds the quota

    def first_gang_running() -> Any:
        operator.alive()
        return running_gang(cluster, namespace, "first")

    eventually(first_gang_running, timeout=120, what="the first run's gang admitted and running")

    def admitted_plan() -> dict[str, Any] | None:  # planned on the admitted flavor's GPU, no longer an assumed one
        plan = ((get(cluster, namespace, "cpt", "first") or {}).get("status") or {}).get("plan") or {}
        return (
            plan
            if plan.get("gpuFrom") == f"Kueue ResourceFlavor default: nvidia.com/gpu.product {GPU_PRODUCT}"
            else None
        )

    plan = eventually(admitted_plan, what="status.plan on the admitted flavor's GPU")
    assert plan["gpu"] == "A100-80GB" and "assumed" not in plan["expectedDuration"]
    cluster.apply(queued_run("second", namespace))

    def queued() -> dict[str, Any] | None:
        operator.alive()
        run = get(cluster, namespace, "cpt", "second")
        return run if condition(run, "Queued") == "True" else None

    run = eventually(queued, timeout=120, what="the second run Queued")
    assert run["status"]["phase"] == "Queued"
    message = next(c["message"] for c in run["status"]["conditions"] if c["type"] == "Queued")
    workloads = get(cluster, namespace, "workloads.kueue.x-k8s.io")["items"]
    pending = [w for w in workloads if any(r["name"] == "second-train" for r in w["metadata"]["ownerReferences"])]
    assert len(pending) == 1 and pending[0]["metadata"]["name"] in message, (message, workloads)
    assert "second-train" in message and "gpu" in message
    assert get(cluster, namespace, "jobset", "second-train")["spec"]["suspend"] is True

    for pod in first_gang_running():  # the first gang finishes: its quota is released
        cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, "test.kubecpt.dev/release=")
    for name in ("first", "second"):
        done = eventually(
            lambda n=name: operator.alive() and phase_is(cluster, namespace, n, "Succeeded"),
            timeout=180,
            what=f"{name} Succeeded",
        )
        assert condition(done, "Queued") in (None, "False")
    events = get(cluster, namespace, "events", "--field-selector", "involvedObject.name=second")["items"]
    assert any(e["reason"] == "Queued" for e in events)


def test_a_higher_priority_run_preempts_the_gang_which_resumes_after_it(operator: Operator, namespace: str) -> None:
    cluster = operator.cluster
    cluster.apply(queued_run("low", namespace, priority="cpt-low", extraEnv={"TEST_HOLD": "1"}))
    first = eventually(
        lambda: operator.alive() and running_gang(cluster, namespace, "low"), timeout=120, what="low's gang"
    )
    cluster.apply(queued_run("high", namespace, priority="cpt-high"))

    def preempted() -> dict[str, Any] | None:
        operator.alive()
        jobset = get(cluster, namespace, "jobset", "low-train")
        run = get(cluster, namespace, "cpt", "low")
        return run if jobset["spec"].get("suspend") and condition(run, "Queued") == "True" else None

    run = eventually(preempted, timeout=120, what="low's gang suspended by Kueue and the run Queued")
    assert run["status"]["phase"] == "Queued"
    eventually(
        lambda: operator.alive() and phase_is(cluster, namespace, "high", "Succeeded"),
        timeout=180,
        what="high Succeeded",
    )
    # low is admitted again: a new gang (the preempted pods are gone) resumes; let it finish
    again = eventually(
        lambda: (
            operator.alive()
            and [
                p
                for p in running_gang(cluster, namespace, "low")
                if p["metadata"]["uid"] not in {q["metadata"]["uid"] for q in first}
            ]
        ),
        timeout=120,
        what="low's gang running again",
    )
    for pod in again:
        cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, "test.kubecpt.dev/release=")
    done = eventually(
        lambda: operator.alive() and phase_is(cluster, namespace, "low", "Succeeded"), timeout=180, what="low"
    )
    assert condition(done, "Queued") == "False"
    assert done["status"]["training"]["restarts"] == 0  # a preemption is not a failure: nothing counted


def without_resource_flavors(cluster: Cluster, namespace: str, path: Path) -> Path:
    """A kubeconfig with the token of a ServiceAccount bound to the chart's operator ClusterRoles less the
    ResourceFlavor rule (a platform team trimmed the RBAC); the ClusterRoles are named after the namespace."""
    from tests.chart.render import template

    cluster.kubectl("create", "serviceaccount", "operator", "-n", namespace)
    for (kind, name), role in template().items():
        if kind != "ClusterRole" or name not in ("rel-kubecpt", "rel-kubecpt-discovery"):
            continue
        trimmed = f"{namespace}-{name}"
        rules = [rule for rule in role["rules"] if "resourceflavors" not in rule["resources"]]
        cluster.apply({**role, "metadata": {"name": trimmed}, "rules": rules})
        account = f"--serviceaccount={namespace}:operator"
        cluster.kubectl("create", "clusterrolebinding", trimmed, f"--clusterrole={trimmed}", account)
    return cluster.token_kubeconfig("operator", namespace, path)


def test_without_the_resource_flavor_permission_a_queued_run_completes_on_an_assumed_gpu(
    kueue: Cluster, namespace: str, tmp_path: Path
) -> None:
    local_queue(kueue, namespace)
    kubeconfig = without_resource_flavors(kueue, namespace, tmp_path / "operator.kubeconfig")
    running = Operator(kueue, namespace, tmp_path / "operator.log", env={"KUBECONFIG": str(kubeconfig)})
    running.start()
    try:
        kueue.apply(queued_run("trimmed", namespace))
        run = eventually(
            lambda: running.alive() and phase_is(kueue, namespace, "trimmed", "Succeeded"),
            timeout=180,
            what="the queued run Succeeded without the ResourceFlavor permission",
        )
    finally:
        running.stop()
        for name in ("rel-kubecpt", "rel-kubecpt-discovery"):
            kueue.kubectl("delete", "clusterrole,clusterrolebinding", f"{namespace}-{name}", check=False)
    assert "(A100-80GB assumed)" in run["status"]["plan"]["expectedDuration"], run["status"]["plan"]
    log = running.log.read_text()
    assert log.count("cannot read Kueue ResourceFlavors") == 1, log[-3000:]  # the reason, once
