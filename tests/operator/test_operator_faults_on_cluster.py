"""The operator where real clusters fail, on the real control plane: a run that fails stops its pods, the deadline
counts running time only, an API call refused by an admission webhook is retried with its cause in the status,
and a run re-created under the same name never takes the old run's children as its own."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.cluster.helpers import eventually
from tests.operator import test_operator_on_cluster as base
from tests.operator.process import Operator
from tests.operator.test_operator_on_cluster import condition, get, phase_is, run_doc
from tests.operator.webhook import DenyingWebhook

RUN = "cpt.kubecpt.dev/run"
crds, operator = base.crds, base.operator  # the fixtures: the CRDs applied, the operator as a process
CHILD_KINDS = ("jobs", "jobsets", "configmaps", "serviceaccounts", "roles", "rolebindings")


def live_pods(cluster: Any, namespace: str, run: str) -> list[str]:
    pods = get(cluster, namespace, "pods", "-l", f"{RUN}={run}")["items"]
    return [p["metadata"]["name"] for p in pods if p["status"].get("phase") in ("Pending", "Running")]


def stalled_message(run: dict[str, Any] | None) -> str:
    conditions = (run or {}).get("status", {}).get("conditions", [])
    return next((c["message"] for c in conditions if c["type"] == "Stalled" and c["status"] == "True"), "")


def test_the_deadline_counts_running_time_and_a_failed_run_stops_its_pods(operator: Operator, namespace: str) -> None:
    """Suspended past its deadline, the run does not fail; resumed, its training pods are held running until the
    deadline fails the run: then no pod of the run is left, the JobSet is kept, an Event says what stopped."""
    cluster = operator.cluster
    hold = {"extraEnv": {"TEST_HOLD": "1"}}  # kwok keeps the training pods running
    doc = run_doc("held", suspend=True, training=hold, runPolicy={"activeDeadlineSeconds": 20})
    cluster.apply({**doc, "metadata": {"name": "held", "namespace": namespace}})
    eventually(lambda: phase_is(cluster, namespace, "held", "Suspended"), what="Suspended")
    time.sleep(25)  # longer than the deadline, all of it suspended
    assert condition(get(cluster, namespace, "cpt", "held"), "Failed") is None
    cluster.kubectl("patch", "cpt", "held", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')

    def training() -> list[str] | None:
        pods = get(cluster, namespace, "pods", "-l", f"{RUN}=held,cpt.kubecpt.dev/stage=train")["items"]
        return [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"] or None

    eventually(training, timeout=60, what="training pods running")
    run = eventually(lambda: phase_is(cluster, namespace, "held", "Failed"), timeout=60, what="Failed at the deadline")
    failed = next(c for c in run["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded" and run["status"]["runningSeconds"] >= 20
    eventually(lambda: live_pods(cluster, namespace, "held") == [], timeout=30, what="every pod of the run gone")
    assert get(cluster, namespace, "jobset", "held-train") is not None  # kept for inspection until the TTL
    events = get(cluster, namespace, "events", "--field-selector", "involvedObject.name=held")["items"]
    stopped = [e["message"] for e in events if e["reason"] == "Stopped" and e["type"] == "Warning"]
    assert any("JobSet held-train" in m and "the run failed" in m for m in stopped), stopped


def test_a_denied_create_is_retried_with_the_cause_in_status_until_allowed(
    operator: Operator, namespace: str, tmp_path: Path
) -> None:
    """A validating webhook denies the JobSet create: the run reports the webhook's message (Stalled once it
    persists) and a Warning Event, keeps retrying with backoff, and completes by itself once it is allowed."""
    cluster = operator.cluster
    with DenyingWebhook(cluster, namespace, "jobset.x-k8s.io", "jobsets", tmp_path) as webhook:
        cluster.apply({**run_doc("denied"), "metadata": {"name": "denied", "namespace": namespace}})
        run = eventually(
            lambda: (r := get(cluster, namespace, "cpt", "denied")) and webhook.deny in stalled_message(r) and r,
            timeout=90,
            what="Stalled with the webhook's message",
        )
        assert "create JobSet denied-train" in stalled_message(run) and condition(run, "Reconciling") == "True"
        events = get(cluster, namespace, "events", "--field-selector", "involvedObject.name=denied")["items"]
        assert any(e["reason"] == "ApiError" and webhook.deny in e["message"] for e in events)
        calls = webhook.calls
        time.sleep(15)
        assert 1 <= webhook.calls - calls <= 4, webhook.calls - calls  # retried without events, with backoff
        webhook.deny = None
        run = eventually(lambda: phase_is(cluster, namespace, "denied", "Succeeded"), timeout=120, what="Succeeded")
    assert condition(run, "Stalled") == "False" and condition(run, "Reconciling") == "False"


def owners(cluster: Any, namespace: str, run: str) -> dict[str, set[str]]:
    """Each child of the run (by kind/name) and the UIDs of its controller owners."""
    found = {}
    for kind in CHILD_KINDS:
        for obj in get(cluster, namespace, kind, "-l", f"{RUN}={run}")["items"]:
            refs = obj["metadata"].get("ownerReferences", [])
            found[f"{kind}/{obj['metadata']['name']}"] = {r["uid"] for r in refs if r.get("controller")}
    return found


def test_a_run_recreated_under_the_same_name_preprocesses_again(operator: Operator, namespace: str) -> None:
    """`kubectl delete --cascade=orphan` then apply: the new run deletes the old run's children and makes its
    own, every one owned by the new UID."""
    cluster = operator.cluster
    doc = {**run_doc("again"), "metadata": {"name": "again", "namespace": namespace}}
    cluster.apply(doc)
    eventually(lambda: phase_is(cluster, namespace, "again", "Succeeded"), timeout=180, what="first run Succeeded")
    old = get(cluster, namespace, "job", "again-preprocess")["metadata"]["uid"]
    cluster.kubectl("delete", "cpt", "again", "-n", namespace, "--cascade=orphan", "--wait=true", "--timeout=60s")
    assert get(cluster, namespace, "job", "again-preprocess") is not None  # orphaned, still there
    cluster.apply(doc)
    run = eventually(lambda: phase_is(cluster, namespace, "again", "Succeeded"), timeout=180, what="second Succeeded")
    uid = run["metadata"]["uid"]
    assert get(cluster, namespace, "job", "again-preprocess")["metadata"]["uid"] != old  # preprocessed again
    children = owners(cluster, namespace, "again")
    assert len(children) == 11 and all(refs == {uid} for refs in children.values()), children


def stalled_on(cluster: Any, namespace: str, run: str, text: str) -> dict[str, Any] | None:
    found = get(cluster, namespace, "cpt", run)
    return found if text in stalled_message(found) else None


def test_pods_that_cannot_be_created_or_scheduled_stall_the_run_with_the_cause(
    operator: Operator, namespace: str
) -> None:
    """A ServiceAccount that does not exist and a ResourceQuota make the Job controller fail to create pods; a gang
    asking for more GPUs than any node has stays unschedulable. Each run says why in Stalled; a fixed cause clears."""
    cluster = operator.cluster
    quota_class = f"quota-{namespace}"[:63]
    cluster.apply(
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": quota_class}, "value": 10}
    )
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-pods", "namespace": namespace},
            "spec": {
                "hard": {"pods": "0"},
                "scopeSelector": {
                    "matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": [quota_class]}]
                },
            },
        }
    )
    gpus = {"requests": {"nvidia.com/gpu": 64}, "limits": {"nvidia.com/gpu": 64}}  # the fake nodes have 8
    runs = {
        "no-account": run_doc("no-account", scheduling={"serviceAccountName": "missing-sa"}),
        "over-quota": run_doc("over-quota", scheduling={"priorityClassName": quota_class}),
        "too-big": run_doc("too-big", training={"resources": gpus}),
    }
    try:
        for name, doc in runs.items():
            cluster.apply({**doc, "metadata": {"name": name, "namespace": namespace}})
        eventually(
            lambda: stalled_on(cluster, namespace, "no-account", 'serviceaccount "missing-sa" not found'),
            timeout=90,
            what="no-account Stalled",
        )
        eventually(lambda: stalled_on(cluster, namespace, "over-quota", "exceeded quota"), timeout=90, what="quota")
        run = eventually(
            lambda: stalled_on(cluster, namespace, "too-big", "Unschedulable"), timeout=120, what="unschedulable"
        )
        assert "Insufficient nvidia.com/gpu" in stalled_message(run) and "too-big-train" in stalled_message(run)
        assert run["status"]["phase"] == "Training" and condition(run, "Failed") is None
        for name in runs:
            events = get(cluster, namespace, "events", "--field-selector", f"involvedObject.name={name}")["items"]
            assert any(e["reason"] == "PodCannotStart" and e["type"] == "Warning" for e in events), name
        cluster.apply(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "missing-sa", "namespace": namespace}}
        )
        eventually(
            lambda: condition(get(cluster, namespace, "cpt", "no-account"), "Stalled") == "False",
            timeout=180,
            what="no-account no longer Stalled once the ServiceAccount exists",
        )
    finally:
        cluster.kubectl("delete", "priorityclass", quota_class, check=False)


def test_a_spec_edit_is_applied_to_the_spec_configmap_and_the_rolebinding(operator: Operator, namespace: str) -> None:
    """scheduling and runPolicy edits of a running run are applied: the spec ConfigMap (what later children mount)
    and the status RoleBinding follow, and only then observedGeneration moves; a refused edit changes nothing."""
    cluster = operator.cluster
    cluster.apply({**run_doc("edited", suspend=True), "metadata": {"name": "edited", "namespace": namespace}})
    eventually(lambda: phase_is(cluster, namespace, "edited", "Suspended"), what="Suspended")
    edit = '{"spec":{"runPolicy":{"backoffLimit":7},"scheduling":{"serviceAccountName":"trainer"}}}'
    cluster.kubectl("patch", "cpt", "edited", "-n", namespace, "--type=merge", "-p", edit)

    def applied() -> dict[str, Any] | None:
        run = get(cluster, namespace, "cpt", "edited")
        return run if run["status"].get("observedGeneration") == run["metadata"]["generation"] == 2 else None

    eventually(applied, timeout=60, what="generation 2 observed")
    spec = json.loads(get(cluster, namespace, "configmap", "edited-spec")["data"]["spec.json"])["spec"]
    assert spec["runPolicy"]["backoffLimit"] == 7 and spec["scheduling"]["serviceAccountName"] == "trainer"
    subjects = get(cluster, namespace, "rolebinding", "edited-status")["subjects"]
    assert [s["name"] for s in subjects] == ["trainer"]
    refused = cluster.kubectl(
        "patch",
        "cpt",
        "edited",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"training":{"microBatchSize":2}}}',
        check=False,
    )
    assert refused.returncode != 0 and "spec.training is immutable once the run has started" in refused.stderr
