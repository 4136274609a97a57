"""The chart on the real API server, as a platform team meets it: install, RBAC checked by impersonating the
operator's ServiceAccount (and by running the operator with its token), an edit user, upgrade with a changed
CRD, uninstall keeping the CRD and the runs, and the kustomize base.

kwok's fake nodes run the operator's pod here (Ready without a process behind it); the operator process itself
runs beside the test with the ServiceAccount's token, so every call it makes passes through this RBAC.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.render import CHART
from tests.cluster.cluster import Cluster
from tests.cluster.helpers import eventually
from tests.kueue.controller import build_kueue
from tests.operator.process import Operator
from tests.operator.test_operator_on_cluster import phase_is, run_doc

RELEASE, SYSTEM = "kubecpt", "kubecpt-system"
SA = f"system:serviceaccount:{SYSTEM}:{RELEASE}"
CRD_NAME = "continuedpretrains.cpt.kubecpt.dev"
BASE = CHART.parents[1] / "manifests" / "base"

ALLOWED = [  # every call of cpt_operator/kube.py and kopf, in a user's namespace
    ("get", "continuedpretrains.cpt.kubecpt.dev"),
    ("list", "continuedpretrains.cpt.kubecpt.dev"),
    ("watch", "continuedpretrains.cpt.kubecpt.dev"),
    ("patch", "continuedpretrains.cpt.kubecpt.dev", "--subresource=status"),
    ("create", "jobs.batch"),
    ("patch", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("watch", "jobs.batch"),
    ("create", "jobsets.jobset.x-k8s.io"),
    ("patch", "jobsets.jobset.x-k8s.io"),
    ("delete", "jobsets.jobset.x-k8s.io"),
    ("create", "configmaps"),
    ("create", "serviceaccounts"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("list", "pods"),
    ("list", "workloads.kueue.x-k8s.io"),
    ("create", "events"),
    ("list", "namespaces"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
]
FORBIDDEN = [
    ("list", "secrets", "--all-namespaces"),
    ("get", "secrets", "-n", "default"),
    ("create", "deployments.apps", "-n", "default"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("patch", "continuedpretrains.cpt.kubecpt.dev", "-n", "default"),  # users own the spec
    ("delete", "pods", "-n", "default"),
]


def can_i(cluster: Cluster, user: str, *args: str) -> bool:
    result = cluster.kubectl("auth", "can-i", *args, f"--as={user}", check=False)
    return result.stdout.strip() == "yes"


def helm_install(cluster: Cluster, *args: str, chart: Path = CHART) -> None:
    cluster.helm("upgrade", "--install", RELEASE, str(chart), "-n", SYSTEM, "--create-namespace", *args, "--wait")


@pytest.fixture(scope="module")
def installed(cluster: Cluster):
    # The session's cluster may hold the CRD applied by other modules without Helm's ownership: start clean.
    cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=true", timeout=120)
    cluster.kubectl("apply", "--server-side", "-f", str(cluster.bin_dir / "crds" / "jobset.x-k8s.io_jobsets.yaml"))
    # Kueue's Workload type, so the check of the operator's right to read Workloads means something
    workloads = build_kueue() / "crds" / "kueue.x-k8s.io_workloads.yaml"
    cluster.kubectl("apply", "--server-side", "-f", str(workloads))
    cluster.wait_established("workloads.kueue.x-k8s.io")
    helm_install(cluster, "--set", "worker.image=kubecpt/worker:test")
    yield cluster
    cluster.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", check=False)
    cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=true", timeout=120)


def test_install_establishes_the_crd_and_rolls_out_the_operator(installed: Cluster) -> None:
    installed.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    installed.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", SYSTEM, "--timeout=120s", timeout=130)
    deployment = installed.get_json("deployment", RELEASE, "-n", SYSTEM)
    assert deployment["status"]["readyReplicas"] == 1
    notes = installed.helm("get", "notes", RELEASE, "-n", SYSTEM).stdout
    assert "watches all namespaces" in notes


def test_the_operator_account_may_do_exactly_what_it_needs(installed: Cluster, namespace: str) -> None:
    missing = [args for args in ALLOWED if not can_i(installed, SA, *args, "-n", namespace)]
    assert not missing, f"the operator's ServiceAccount lacks {missing}"
    granted = [args for args in FORBIDDEN if can_i(installed, SA, *args)]
    assert not granted, f"the operator's ServiceAccount may {granted}"


def test_the_operator_completes_a_run_with_only_its_service_account(
    installed: Cluster, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = installed.token_kubeconfig(RELEASE, SYSTEM, tmp_path / "operator.kubeconfig")
    operator = Operator(installed, namespace, tmp_path / "operator.log", env={"KUBECONFIG": str(kubeconfig)})
    operator.start()
    try:
        installed.apply({**run_doc("rbac"), "metadata": {"name": "rbac", "namespace": namespace}})

        def succeeded() -> dict[str, Any] | None:
            operator.alive()
            return phase_is(installed, namespace, "rbac", "Succeeded")

        eventually(succeeded, timeout=180, what="the run Succeeded under the operator's ServiceAccount")
    finally:
        operator.stop()
    log = operator.log.read_text()
    assert "Forbidden" not in log and "status=403" not in log, log[-3000:]  # not a ",403]" timestamp
    whoami = installed.kubectl("--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json").stdout
    assert json.loads(whoami)["status"]["userInfo"]["username"] == SA


def test_a_namespace_editor_creates_runs_but_never_writes_status(installed: Cluster, namespace: str) -> None:
    user = "alice@example.com"
    installed.kubectl("create", "rolebinding", "alice-edit", "--clusterrole=edit", f"--user={user}", "-n", namespace)
    eventually(lambda: can_i(installed, user, "create", "continuedpretrains", "-n", namespace), what="aggregation")
    doc = {**run_doc("mine"), "metadata": {"name": "mine", "namespace": namespace}}
    installed.kubectl("create", "-f", "-", f"--as={user}", input=yaml.safe_dump(doc))
    patch = installed.kubectl(
        *("patch", "cpt", "mine", "-n", namespace, "--subresource=status", "--type=merge"),
        *("-p", '{"status": {"phase": "Succeeded"}}', f"--as={user}"),
        check=False,
    )
    assert patch.returncode != 0 and "forbidden" in patch.stderr.lower(), patch.stderr
    assert can_i(installed, "bob@example.com", "list", "continuedpretrains", "-n", namespace) is False


def test_upgrade_with_a_changed_crd_updates_it(installed: Cluster, tmp_path: Path) -> None:
    chart = tmp_path / "kubecpt"
    shutil.copytree(CHART, chart)
    crd = chart / "templates" / "crd.yaml"
    old = "description: A ContinuedPretrain resource as stored in Kubernetes."
    assert old in crd.read_text()
    crd.write_text(crd.read_text().replace(old, "description: A ContinuedPretrain (upgraded)."))
    helm_install(installed, "--set", "worker.image=kubecpt/worker:test", chart=chart)
    live = installed.get_json("crd", CRD_NAME)
    assert live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] == "A ContinuedPretrain (upgraded)."
    helm_install(installed, "--set", "worker.image=kubecpt/worker:test")  # back to the real chart


def test_uninstall_keeps_the_crd_and_the_runs(installed: Cluster, namespace: str) -> None:
    installed.apply({**run_doc("kept"), "metadata": {"name": "kept", "namespace": namespace}})
    installed.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait")
    assert installed.kubectl("get", "deployment", RELEASE, "-n", SYSTEM, check=False).returncode != 0
    assert installed.get_json("crd", CRD_NAME)["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert installed.get_json("cpt", "kept", "-n", namespace)["metadata"]["name"] == "kept"


def test_the_kustomize_base_applies(installed: Cluster) -> None:
    """After the Helm release is gone: `kubectl apply -k manifests/base` installs the same operator."""
    installed.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", check=False)
    installed.kubectl("apply", "-k", str(BASE))
    installed.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", SYSTEM, "--timeout=120s", timeout=130)
    assert can_i(installed, SA, "patch", "continuedpretrains.cpt.kubecpt.dev", "--subresource=status", "-n", "default")
    installed.kubectl("delete", "-k", str(BASE), "--wait=true", timeout=180)
    assert installed.kubectl("get", "clusterrole", RELEASE, check=False).returncode != 0


def test_the_committed_kustomize_base_is_current(cluster: Cluster) -> None:
    import subprocess
    import sys

    script = CHART.parents[1] / "scripts" / "render_kustomize_base.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check", "--helm", cluster.binary("helm")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
