"""spec.suspend under the real Kueue: the operator deactivates the run's Workloads (Kueue owns the Jobs' own
`suspend`), so the admitted gang's pods stop and resuming re-queues it; and a queue label on the run itself never
reaches its children (the queue comes from spec.scheduling.queueName alone)."""

from __future__ import annotations

from typing import Any

from tests.cluster.helpers import eventually
from tests.kueue import test_kueue_on_cluster as base
from tests.kueue.test_kueue_on_cluster import queued_run, running_gang
from tests.operator.process import Operator
from tests.operator.test_operator_on_cluster import condition, get, phase_is, run_doc

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
kueue, operator = base.kueue, base.operator  # the fixtures: Kueue with a GPU queue, the operator as a process


def workloads_of(cluster: Any, namespace: str, child: str) -> list[dict[str, Any]]:
    items = get(cluster, namespace, "workloads.kueue.x-k8s.io")["items"]
    return [w for w in items if any(r["name"] == child for r in w["metadata"].get("ownerReferences", []))]


def test_suspend_stops_an_admitted_gang_and_resume_requeues_it(operator: Operator, namespace: str) -> None:
    cluster = operator.cluster
    cluster.apply(queued_run("paused", namespace, extraEnv={"TEST_HOLD": "1"}))
    first = eventually(
        lambda: operator.alive() and running_gang(cluster, namespace, "paused"), timeout=120, what="gang running"
    )
    cluster.kubectl("patch", "cpt", "paused", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')

    def stopped() -> dict[str, Any] | None:
        operator.alive()
        run = get(cluster, namespace, "cpt", "paused")
        pods = get(cluster, namespace, "pods", "-l", "jobset.sigs.k8s.io/jobset-name=paused-train")["items"]
        return run if run["status"].get("phase") == "Suspended" and not pods else None

    run = eventually(stopped, timeout=90, what="Suspended with every gang pod gone")
    assert condition(run, "Suspended") == "True" and condition(run, "Queued") in (None, "False")
    (workload,) = workloads_of(cluster, namespace, "paused-train")
    assert workload["spec"]["active"] is False
    cluster.kubectl("patch", "cpt", "paused", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    uids = {p["metadata"]["uid"] for p in first}
    again = eventually(
        lambda: [p for p in running_gang(cluster, namespace, "paused") if p["metadata"]["uid"] not in uids],
        timeout=120,
        what="the gang admitted again and running",
    )
    for pod in again:
        cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, "test.kubecpt.dev/release=")
    eventually(lambda: phase_is(cluster, namespace, "paused", "Succeeded"), timeout=180, what="Succeeded")


def test_a_queue_label_on_the_run_does_not_reach_its_children(operator: Operator, namespace: str) -> None:
    cluster = operator.cluster
    doc = run_doc("labelled")
    doc["metadata"] = {"name": "labelled", "namespace": namespace, "labels": {QUEUE_LABEL: "gpu", "team": "nlp"}}
    cluster.apply(doc)
    eventually(lambda: operator.alive() and phase_is(cluster, namespace, "labelled", "Succeeded"), timeout=180)
    for kind in ("jobs", "jobsets"):
        for child in get(cluster, namespace, kind, "-l", "cpt.kubecpt.dev/run=labelled")["items"]:
            labels = child["metadata"].get("labels", {})
            assert QUEUE_LABEL not in labels and "team" not in labels, (child["metadata"]["name"], labels)
    assert workloads_of(cluster, namespace, "labelled-train") == []


def test_a_missing_workload_priority_class_is_reported(operator: Operator, namespace: str) -> None:
    """scheduling.priorityClassName also names the Workloads' WorkloadPriorityClass: when none exists, Kueue makes
    no Workload (it only logs why), and the run says so in Stalled."""
    cluster = operator.cluster
    cluster.apply(queued_run("no-class", namespace, priority="missing-class"))

    def stalled() -> dict[str, Any] | None:
        operator.alive()
        run = get(cluster, namespace, "cpt", "no-class")
        stalls = [c for c in (run or {}).get("status", {}).get("conditions", []) if c["type"] == "Stalled"]
        return run if stalls and "WorkloadPriorityClass missing-class not found" in stalls[0]["message"] else None

    run = eventually(stalled, timeout=90, what="Stalled naming the missing WorkloadPriorityClass")
    assert condition(run, "Failed") is None
