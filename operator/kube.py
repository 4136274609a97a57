"""The few Kubernetes API calls the operator makes, on the official client."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cpt import API_GROUP, API_VERSION, PLURAL
from cpt_operator.names import QUEUE_LABEL, RUN_LABEL

JOBSET = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
WORKLOAD = ("kueue.x-k8s.io", "v1beta2", "workloads")
CAUSE = "kubecpt.dev/failedJobMessage"  # added to an observed JobSet: why its first failed Job failed


CANNOT_START = {
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
    "ErrImagePull",
    "ImagePullBackOff",
}


def workload_summary(workload: dict[str, Any], owner: str) -> dict[str, Any]:
    """What a pass needs of a Kueue Workload: its owner child, whether it holds quota, and Kueue's message."""
    conditions = {c["type"]: c for c in workload.get("status", {}).get("conditions", [])}
    admitted = conditions.get("Admitted", {}).get("status") == "True"
    pending = conditions.get("QuotaReserved", {})
    return {
        "kind": "Workload",
        "metadata": {"name": workload["metadata"]["name"]},
        "owner": owner,
        "queue": workload.get("spec", {}).get("queueName", ""),
        "admitted": admitted,
        "finished": conditions.get("Finished", {}).get("status") == "True",
        "message": pending.get("message", "") if not admitted else "",
    }


def _start_problem(pod: Any) -> str:
    """Why a pod's containers cannot start (a missing Secret or ConfigMap, an image that cannot be pulled)."""
    if pod.status is None or pod.status.phase != "Pending":
        return ""
    for status in [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]:
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason in CANNOT_START:
            return f"{waiting.reason}: {waiting.message or ''}".strip(": ")
    return ""


@dataclass
class Kube:
    """API clients (in-cluster config, else the kubeconfig)."""

    core: Any
    batch: Any
    custom: Any
    rbac: Any

    @classmethod
    def connect(cls) -> Kube:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(client.CoreV1Api(), client.BatchV1Api(), client.CustomObjectsApi(), client.RbacAuthorizationV1Api())

    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def children(self, namespace: str, run: str) -> dict[str, dict[str, Any]]:
        """The run's ConfigMaps, Jobs and JobSets by name (plain dicts, as the API serves them)."""
        from kubernetes.client.exceptions import ApiException

        from cpt_operator.reconcile import child_key

        selector = f"{RUN_LABEL}={run}"
        api = self.core.api_client
        found: dict[str, dict[str, Any]] = {}
        for kind, items in (
            ("ConfigMap", self.core.list_namespaced_config_map(namespace, label_selector=selector).items),
            ("Job", self.batch.list_namespaced_job(namespace, label_selector=selector).items),
            ("ServiceAccount", self.core.list_namespaced_service_account(namespace, label_selector=selector).items),
            ("Role", self.rbac.list_namespaced_role(namespace, label_selector=selector).items),
            ("RoleBinding", self.rbac.list_namespaced_role_binding(namespace, label_selector=selector).items),
        ):
            for item in items:
                obj = {**api.sanitize_for_serialization(item), "kind": kind}
                found[child_key(obj)] = obj
        for pod in self.core.list_namespaced_pod(namespace, label_selector=selector).items:
            problem = _start_problem(pod)
            if problem:  # only pods that cannot start matter to the decision
                found[f"Pod:{pod.metadata.name}"] = {
                    "kind": "Pod",
                    "metadata": {"name": pod.metadata.name},
                    "problem": problem,
                }
        try:
            jobsets = self.custom.list_namespaced_custom_object(
                *JOBSET[:2], namespace, JOBSET[2], label_selector=selector
            )
        except ApiException as error:
            if error.status != 404:  # 404: the JobSet CRD is not installed (yet): no JobSet exists
                raise
            jobsets = {"items": []}
        for obj in jobsets["items"]:
            found[obj["metadata"]["name"]] = {**obj, "kind": "JobSet", CAUSE: self._failed_job_message(namespace, obj)}
        found.update(self._workloads(namespace, found))
        return found

    def _workloads(self, namespace: str, children: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Kueue's Workloads of queue-labelled children, keyed `Workload:<name>`, as workload_summary gives them."""
        from kubernetes.client.exceptions import ApiException

        owners = {
            obj["metadata"].get("uid"): name
            for name, obj in children.items()
            if obj.get("kind") in ("Job", "JobSet") and QUEUE_LABEL in obj["metadata"].get("labels", {})
        }
        if not owners:
            return {}
        try:
            items = self.custom.list_namespaced_custom_object(*WORKLOAD[:2], namespace, WORKLOAD[2])["items"]
        except ApiException as error:
            if error.status == 404:  # Kueue is not installed: the children wait suspended, Stalled says why
                return {}
            raise
        found = {}
        for workload in items:
            references = workload["metadata"].get("ownerReferences", [])
            owner = next((owners[r["uid"]] for r in references if r["uid"] in owners), None)
            if owner is not None:
                found[f"Workload:{workload['metadata']['name']}"] = workload_summary(workload, owner)
        return found

    def _failed_job_message(self, namespace: str, jobset: dict[str, Any]) -> str:
        """The Failed condition of the JobSet's first failed Job (the exit code or pod condition that ended
        it), which the JobSet's own message only names."""
        from kubernetes.client.exceptions import ApiException

        failed = [c for c in jobset.get("status", {}).get("conditions", []) if c["type"] == "Failed"]
        match = re.search(r"first failed job: ([a-z0-9.-]+)", failed[0].get("message", "")) if failed else None
        if match is None:
            return ""
        try:
            job = self.batch.read_namespaced_job(match.group(1), namespace)
        except ApiException:
            return ""
        reasons = [c.message or c.reason for c in (job.status.conditions or []) if c.type == "Failed"]
        return f"Job {match.group(1)}: {reasons[0]}" if reasons else ""

    def create(self, namespace: str, obj: dict[str, Any]) -> None:
        """Create a child; one that exists already (a concurrent pass created it) is fine."""
        from kubernetes.client.exceptions import ApiException

        try:
            kind = obj["kind"]
            if kind == "ConfigMap":
                self.core.create_namespaced_config_map(namespace, obj)
            elif kind == "ServiceAccount":
                self.core.create_namespaced_service_account(namespace, obj)
            elif kind == "Role":
                self.rbac.create_namespaced_role(namespace, obj)
            elif kind == "RoleBinding":
                self.rbac.create_namespaced_role_binding(namespace, obj)
            elif kind == "Job":
                self.batch.create_namespaced_job(namespace, obj)
            else:
                self.custom.create_namespaced_custom_object(*JOBSET[:2], namespace, JOBSET[2], obj)
        except ApiException as error:
            if error.status != 409:
                raise

    def delete(self, namespace: str, kind: str, name: str) -> None:
        """Delete a child and, in the background, its pods; one already gone is fine."""
        from kubernetes.client import V1DeleteOptions
        from kubernetes.client.exceptions import ApiException

        options = V1DeleteOptions(propagation_policy="Background")
        try:
            if kind == "Job":
                self.batch.delete_namespaced_job(name, namespace, body=options)
            else:
                self.custom.delete_namespaced_custom_object(*JOBSET[:2], namespace, JOBSET[2], name, body=options)
        except ApiException as error:
            if error.status != 404:
                raise

    def set_suspend(self, namespace: str, kind: str, name: str, suspend: bool) -> None:
        body = {"spec": {"suspend": suspend}}
        if kind == "Job":
            self.batch.patch_namespaced_job(name, namespace, body)
        else:
            self.custom.patch_namespaced_custom_object(*JOBSET[:2], namespace, JOBSET[2], name, body)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status}
        )
