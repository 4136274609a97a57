"""The operator as a platform team runs it: installed by the Helm chart from its (local) image, a real pod on
the real node, Ready through kopf's health endpoint, and working through in-cluster configuration (its
ServiceAccount token and the `kubernetes` Service's ClusterIP, which kube-proxy resolves on this machine)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import s3fs
import yaml

from tests.cluster.cluster import Cluster
from tests.cluster.helpers import condition, eventually
from tests.conftest import REPO
from tests.e2e.conftest import (
    NEXT_OPERATOR_IMAGE,
    OPERATOR_IMAGE,
    WORKER_IMAGE,
    host_environment,
    worker_pod_template,
)
from tests.e2e.node import NODE_ADDRESS
from tests.e2e.slow_s3 import SlowCheckpoints
from tests.e2e.test_end_to_end import resource, restricted_namespace, upload_inputs

CHART = REPO / "charts" / "kubecpt"
CRD = REPO / "manifests" / "crd" / "continuedpretrains.cpt.kubecpt.dev.yaml"
NAMESPACE, SYSTEM = "chart-e2e", "kubecpt-system"


def chart_values(namespace: str, **extra: Any) -> dict[str, Any]:
    volumes, mounts = host_environment()
    repository, tag = OPERATOR_IMAGE.rsplit(":", 1)
    return {
        "crds": {"enabled": False},  # applied by the test; the end-to-end module applies it too
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watchNamespace": namespace,
        "extraVolumes": volumes,
        "extraVolumeMounts": mounts,
        # The local image runs the node's Python, which lives under /root (mode 700) on the test machine: root
        # here. Everything else of the restricted profile stays (read-only root, no privilege escalation, no
        # capabilities, RuntimeDefault seccomp); the production image runs as 65532.
        "podSecurityContext": {"runAsUser": 0, "runAsNonRoot": False, "seccompProfile": {"type": "RuntimeDefault"}},
        **extra,
    }


def helm_install(cluster: Cluster, values: dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(values))
    cluster.helm(
        *("install", "kubecpt", str(CHART), "-n", SYSTEM, "--create-namespace", "-f", str(path)),
        *("--wait", "--timeout", "180s"),
        timeout=200,
    )


def test_the_chart_installed_operator_runs_as_a_real_pod_and_reconciles(node, tmp_path) -> None:
    cluster: Cluster = node.cluster
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/continuedpretrains.cpt.kubecpt.dev", "--timeout=60s")
    cluster.kubectl("create", "namespace", NAMESPACE)
    helm_install(cluster, chart_values(NAMESPACE), tmp_path / "values.yaml")
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


UPGRADE_NAMESPACE = "upgrade-e2e"
UPGRADE_STEPS = 12
HOLD_SECONDS = 40  # each checkpoint write while the upgrade runs: the training is still on when it ends
CHILD_KINDS = "configmaps,jobs,jobsets.jobset.x-k8s.io,services,serviceaccounts,roles,rolebindings"
PHASES = ["Pending", "Preprocessing", "Training", "Evaluating", "Reporting", "Succeeded"]
STAGE_CONDITIONS = {"Preprocessed", "DataReady", "BaselineEvaluated", "Trained", "Evaluated", "Reported"}


class History(threading.Thread):
    """Every 2 s, the run's status (when it changed) and the UID of every object the run owns and every pod
    of its stages, until stopped."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.name, self.done = cluster, name, threading.Event()
        self.statuses: list[dict[str, Any]] = []
        self.uids: dict[str, set[str]] = {}

    def run(self) -> None:
        while not self.done.wait(2):
            self.sample()

    def _get(self, *what: str) -> dict[str, Any]:
        result = self.cluster.kubectl("get", *what, "-n", UPGRADE_NAMESPACE, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def sample(self) -> None:
        run = self._get("cpt", self.name)
        if not run:
            return
        status = run.get("status") or {}
        if status and (not self.statuses or self.statuses[-1] != status):
            self.statuses.append(status)
        owned = self._get(CHILD_KINDS).get("items", [])
        pods = self._get("pods", "-l", f"cpt.kubecpt.dev/run={self.name}").get("items", [])
        uid = run["metadata"]["uid"]
        for item in owned + pods:
            owners = {ref["uid"] for ref in item["metadata"].get("ownerReferences", [])}
            if item["kind"] == "Pod" or uid in owners:
                key = f"{item['kind']}/{item['metadata']['name']}"
                self.uids.setdefault(key, set()).add(item["metadata"]["uid"])

    def stop(self) -> None:
        self.done.set()
        self.join(10)
        self.sample()


def discontinuities(statuses: list[dict[str, Any]]) -> list[str]:
    """What a status did that a continuous history never does: its phase going back, its start or running time
    reset (a running period ends only when the run finishes), its step going back, a restart counted, a finished
    stage's condition changed."""
    found = []
    for before, after in itertools.pairwise(statuses):
        phases = [s.get("phase", "Pending") for s in (before, after)]
        if PHASES.index(phases[1]) < PHASES.index(phases[0]):
            found.append(f"phase {phases[0]} -> {phases[1]}")
        if before.get("startTime") and after.get("startTime") != before["startTime"]:
            found.append(f"startTime {before['startTime']} -> {after.get('startTime')}")
        if before.get("runningSince") and after.get("runningSince") not in (None, before["runningSince"]):
            found.append(f"runningSince {before['runningSince']} -> {after['runningSince']}")  # None: finished
        steps = [(s.get("training") or {}).get("step", 0) for s in (before, after)]
        if steps[1] < steps[0]:
            found.append(f"step {steps[0]} -> {steps[1]}")
        if (after.get("training") or {}).get("restarts", 0):
            found.append(f"restarts {after['training']['restarts']}")
        done = {c["type"]: c for c in before.get("conditions", []) if c["type"] in STAGE_CONDITIONS}
        now = {c["type"]: c for c in after.get("conditions", [])}
        for kind, was in done.items():
            if was["status"] == "True" and now.get(kind) != was:
                found.append(f"condition {kind} {was} -> {now.get(kind)}")
    return found


def upgrade_resource(endpoint: str) -> dict[str, Any]:
    """One pod, one process, long enough to train through the upgrade; the final evaluation only."""
    doc = resource("upgrade", endpoint, nodes=1, procs=1, namespace=UPGRADE_NAMESPACE)
    spec = doc["spec"]
    spec["data"]["tokenBudget"] = 16 * 256 * UPGRADE_STEPS
    del spec["data"]["milestones"]
    spec["training"]["checkpoint"] = {"intervalSteps": 4, "keepLast": 1}
    # atMilestones stays on: the budget's export is the one evaluated (with it off too, nothing is evaluated and
    # the report stage fails: "no evaluation results")
    spec["evaluation"]["baseline"] = False
    return doc


def operator_pod(cluster: Cluster) -> dict[str, Any]:
    pods = cluster.get_json("pods", "-n", SYSTEM, "-l", "app.kubernetes.io/name=kubecpt")["items"]
    (pod,) = [p for p in pods if "deletionTimestamp" not in p["metadata"]]
    return pod


def step_reached(cluster: Cluster, step: int) -> int | None:
    status = cluster.get_json("cpt", "upgrade", "-n", UPGRADE_NAMESPACE).get("status") or {}
    seen = (status.get("training") or {}).get("step", 0)
    return seen if seen >= step else None


def upgrade_operator(cluster: Cluster) -> float:
    """`helm upgrade` to the next image; checks that a new pod of another image replaced the old one and returns
    the seconds the upgrade took (--wait: until the new pod is Ready)."""
    old = operator_pod(cluster)
    started = time.monotonic()
    cluster.helm(
        *("upgrade", "kubecpt", str(CHART), "-n", SYSTEM, "--reuse-values"),
        *("--set", f"image.tag={NEXT_OPERATOR_IMAGE.rsplit(':', 1)[1]}", "--wait", "--timeout", "180s"),
        timeout=200,
    )
    seconds = time.monotonic() - started
    new = operator_pod(cluster)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert new["spec"]["containers"][0]["image"] == NEXT_OPERATOR_IMAGE
    assert new["status"]["containerStatuses"][0]["imageID"] != old["status"]["containerStatuses"][0]["imageID"]
    return seconds


def test_a_helm_upgrade_while_a_run_trains_recreates_no_child(node, pod_s3, worker_volumes, tmp_path) -> None:
    """`helm upgrade` to the operator's next image (another digest: the Deployment rolls, Recreate, so the old
    process gets SIGTERM and a new one starts from nothing) while a run trains on the real node: the run
    completes, no child or stage pod is ever created twice (one UID per name, sampled every 2 s), and the
    status history has no gap (phases forward, step never back, no restart counted, stage conditions kept).
    Checkpoint writes are held while the upgrade runs, so the training outlasts it on any machine."""
    cluster: Cluster = node.cluster
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl("apply", "--server-side", "-f", str(cluster.bin_dir / "crds" / "jobset.x-k8s.io_jobsets.yaml"))
    for crd in ("continuedpretrains.cpt.kubecpt.dev", "jobsets.jobset.x-k8s.io"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    restricted_namespace(cluster, worker_volumes, UPGRADE_NAMESPACE)
    upload_inputs(s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": pod_s3}))
    worker = {"image": WORKER_IMAGE, "pullPolicy": "Never", "podTemplate": worker_pod_template(worker_volumes)}
    helm_install(cluster, chart_values(UPGRADE_NAMESPACE, worker=worker), tmp_path / "values.yaml")
    history = History(cluster, "upgrade")
    try:
        with SlowCheckpoints(NODE_ADDRESS, pod_s3, HOLD_SECONDS) as proxy:
            proxy.armed.set()
            # JSON, not cluster.apply's YAML: PyYAML leaves the string "1e-3" unquoted and kubectl reads a number
            cluster.kubectl("apply", "-f", "-", input=json.dumps(upgrade_resource(proxy.endpoint)))
            history.start()
            at_step = eventually(lambda: step_reached(cluster, 2), timeout=900, interval=1, what="the run's step 2")
            upgrade_seconds = upgrade_operator(cluster)
            proxy.armed.clear()
            during = cluster.get_json("cpt", "upgrade", "-n", UPGRADE_NAMESPACE)
            assert condition(during, "Trained") != "True", "the run finished training before the upgrade did"
            cluster.kubectl(
                *("wait", "cpt/upgrade", "-n", UPGRADE_NAMESPACE, "--for=condition=Complete", "--timeout=900s"),
                timeout=910,
            )
        history.stop()
        final = cluster.get_json("cpt", "upgrade", "-n", UPGRADE_NAMESPACE)
        assert final["status"]["phase"] == "Succeeded" and final["status"]["training"]["step"] == UPGRADE_STEPS
        twice = {name: uids for name, uids in history.uids.items() if len(uids) > 1}
        assert not twice, twice
        assert any(name.startswith("JobSet/") for name in history.uids), sorted(history.uids)
        assert discontinuities(history.statuses) == [], history.statuses
        phases = [s.get("phase") for s in history.statuses]
        assert "Training" in phases and phases[-1] == "Succeeded", phases
        print(f"\nupgraded at step {at_step} in {upgrade_seconds:.0f} s; {len(history.statuses)} statuses seen")
    finally:
        history.done.set()
        cluster.kubectl("delete", "cpt", "--all", "-n", UPGRADE_NAMESPACE, "--wait=true", check=False, timeout=300)
        cluster.helm("uninstall", "kubecpt", "-n", SYSTEM, "--wait", check=False)
