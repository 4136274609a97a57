"""The few Kubernetes API calls the operator makes, on the official client."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cpt import API_GROUP, API_VERSION, PLURAL
from cpt_operator.names import DEACTIVATED, PRIORITY_LABEL, QUEUE_LABEL
from cpt_operator.ownership import is_leftover, owned_by

if TYPE_CHECKING:
    from cpt_operator.cache import Cache

JOBSET = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
WORKLOAD = ("kueue.x-k8s.io", "v1beta2", "workloads")
RESOURCE_FLAVOR = ("kueue.x-k8s.io", "v1beta2", "resourceflavors")
GPU_RESOURCE = "nvidia.com/gpu"
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"  # on a Job's pods: the Job's UID
JOBSET_UID_LABEL = "jobset.sigs.k8s.io/jobset-uid"  # on a JobSet's pods: the JobSet's UID
CAUSE = "kubecpt.dev/failedJobMessage"  # added to an observed JobSet: why its first failed Job failed


CANNOT_START = {
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
    "ErrImagePull",
    "ImagePullBackOff",
}


def admitted_gpu(workload: dict[str, Any], products: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(flavor, GPU product) of the ResourceFlavor Kueue admitted the Workload to, from `products` (flavor name ->
    its nodeLabels' nvidia.com/gpu.product): the flavor of nvidia.com/gpu first; (None, None) when none is known."""
    assignments = ((workload.get("status") or {}).get("admission") or {}).get("podSetAssignments") or []
    pairs = [pair for assignment in assignments for pair in (assignment.get("flavors") or {}).items()]
    for _, flavor in sorted(pairs, key=lambda pair: pair[0] != GPU_RESOURCE):
        if flavor in products:
            return flavor, products[flavor]
    return None, None


def workload_summary(workload: dict[str, Any], owner: str, products: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What a pass needs of a Kueue Workload: its owner child, whether it holds quota, Kueue's message, and the GPU
    of the flavor it was admitted to (`admitted_gpu`)."""
    conditions = {c["type"]: c for c in workload.get("status", {}).get("conditions", [])}
    admitted = conditions.get("Admitted", {}).get("status") == "True"
    pending = conditions.get("QuotaReserved", {})
    return {
        "kind": "Workload",
        "metadata": {"name": workload["metadata"]["name"]},
        "owner": owner,
        "queue": workload.get("spec", {}).get("queueName", ""),
        "admitted": admitted,
        "tried": pending.get("status") == "False",  # Kueue tried to admit it (a new Workload has no condition yet)
        "finished": conditions.get("Finished", {}).get("status") == "True",
        "active": workload.get("spec", {}).get("active", True) is not False,
        "deactivatedByUs": DEACTIVATED in (workload["metadata"].get("annotations") or {}),
        "message": pending.get("message", "") if not admitted else "",
        **dict(zip(("gpuFlavor", "gpuProduct"), admitted_gpu(workload, products or {}), strict=True)),
    }


def start_problem(pod: dict[str, Any]) -> str:
    """Why a pod cannot start: no node can take it, or its containers cannot start (a missing Secret or
    ConfigMap, an image that cannot be pulled)."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending":
        return ""
    for condition in status.get("conditions") or []:
        if (condition.get("type"), condition.get("status"), condition.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            return f"Unschedulable: {condition.get('message') or ''}".strip(": ")
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in CANNOT_START:
            return f"{waiting['reason']}: {waiting.get('message') or ''}".strip(": ")
    return ""


FAILED_CREATE_WINDOW = 600  # seconds: an older FailedCreate Event is taken as resolved
STARTUP_GRACE = 5  # seconds a new Job or JobSet has to make its pods before the operator asks why not


def _podless_jobs(children: dict[str, dict[str, Any]]) -> list[str]:
    """Names of running, unsuspended Jobs without an active pod; a JobSet's Jobs (`<jobset>-<replicatedJob>-0`)
    when it has none."""
    found = []
    for name, obj in children.items():
        status = obj.get("status") or {}
        if obj.get("kind") not in ("Job", "JobSet") or obj.get("spec", {}).get("suspend"):
            continue
        if any(c.get("status") == "True" for c in status.get("conditions") or []):
            continue  # finished (or failing)
        created = _created(obj)
        if created is not None and created > _recent(STARTUP_GRACE):
            continue  # its controller may not have made its pods yet
        if obj["kind"] == "Job" and not status.get("active"):
            found.append(name)
        elif obj["kind"] == "JobSet":
            found += [f"{name}-{r['name']}-0" for r in status.get("replicatedJobsStatus") or [] if not r.get("active")]
    return found


def _created(obj: dict[str, Any]) -> datetime | None:
    """The object's creationTimestamp, if it has one."""
    created = obj["metadata"].get("creationTimestamp")
    return datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None


def _event_time(event: Any) -> datetime:
    return event.last_timestamp or event.event_time or event.metadata.creation_timestamp


def _recent(seconds: float = FAILED_CREATE_WINDOW) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


WORKERS = 16  # threads running passes (kopf's executor), and API connections
REQUEST_TIMEOUT = (5, 30)  # seconds to connect, to read: a half-open connection never holds a pass


def _counting_client(api: Any) -> Any:
    """The API client, with every request it makes counted in kubecpt_api_requests_total{verb} and bounded in
    time (REQUEST_TIMEOUT, unless a call sets its own)."""
    from cpt_operator import metrics

    request = api.request

    def counted(method: str, *args: Any, **kwargs: Any) -> Any:
        metrics.API_REQUESTS.labels(method).inc()
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = REQUEST_TIMEOUT
        return request(method, *args, **kwargs)

    api.request = counted
    return api


@dataclass
class Observed:
    """What one pass sees: this incarnation's children by key, and other incarnations' leftovers (kind, name)."""

    children: dict[str, dict[str, Any]] = field(default_factory=dict)
    leftovers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Kube:
    """API clients (in-cluster config, else the kubeconfig)."""

    core: Any
    batch: Any
    custom: Any
    rbac: Any
    causes: dict[str, str] = field(default_factory=dict)  # JobSet UID -> its failed Job's message

    @classmethod
    def connect(cls) -> Kube:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = WORKERS  # one connection per pass thread, reused
        api = _counting_client(client.ApiClient(configuration))
        return cls(
            client.CoreV1Api(api),
            client.BatchV1Api(api),
            client.CustomObjectsApi(api),
            client.RbacAuthorizationV1Api(api),
        )

    def may(self, verb: str, group: str, plural: str) -> bool:
        """May the operator's account `verb` this cluster-scoped resource? (A SelfSubjectAccessReview, which every
        authenticated account may create.)"""
        from kubernetes import client

        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(group=group, resource=plural, verb=verb)
            )
        )
        answer = client.AuthorizationV1Api(self.core.api_client).create_self_subject_access_review(review)
        return bool(answer.status.allowed)

    def observe(self, cache: Cache, namespace: str, run: str, uid: str) -> Observed:
        """This incarnation's children (controller owner UID `uid`) by key, from the watch caches, with what a pass
        needs of their pods and Kueue Workloads. Objects with the run's label but another owner are leftovers of
        an earlier incarnation. API calls only for what no watch shows: why a failed JobSet's Job failed, and
        why a Job has no pod (its FailedCreate Events)."""
        from cpt_operator.reconcile import child_key

        observed = Observed()
        for obj in cache.children(namespace, run):
            if not owned_by(obj, uid):
                if is_leftover(obj, uid):
                    observed.leftovers.append((obj["kind"], obj["metadata"]["name"]))
                continue
            if obj["kind"] == "JobSet":
                obj = {**obj, CAUSE: self._failed_job_message(namespace, obj)}
            observed.children[child_key(obj)] = obj
        owners = {o["metadata"].get("uid") for o in observed.children.values() if o["kind"] in ("Job", "JobSet")}
        for pod in cache.pods(namespace, run):
            if pod["problem"] and owners & pod["owners"]:  # (another incarnation's pods do not count)
                observed.children[f"Pod:{pod['name']}"] = {
                    "kind": "Pod",
                    "metadata": {"name": pod["name"]},
                    "problem": pod["problem"],
                }
        observed.children.update(self._creation_problems(namespace, observed.children))
        for name, obj in list(observed.children.items()):
            if obj["kind"] in ("Job", "JobSet") and QUEUE_LABEL in obj["metadata"].get("labels", {}):
                for workload in cache.workloads(namespace, obj["metadata"]["uid"]):
                    summary = workload_summary(workload, name, cache.flavor_products())
                    observed.children[f"Workload:{summary['metadata']['name']}"] = summary
        observed.children.update(self._unqueueable(observed.children))
        observed.children = dict(sorted(observed.children.items()))
        observed.leftovers.sort()
        return observed

    def _creation_problems(self, namespace: str, children: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Jobs that run without a pod because the API server refuses to create them (a missing ServiceAccount,
        a ResourceQuota, Pod Security admission): the Job controller's latest FailedCreate Event says why. Asked
        only of running Jobs (and the JobSet's Jobs) with no active pod."""

        found = {}
        for job in _podless_jobs(children):
            selector = f"involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate"
            try:
                events = self.core.list_namespaced_event(namespace, field_selector=selector).items
            except Exception:  # best effort (also urllib3's timeouts): without the cause, the run does not say why
                continue
            latest = max(events, key=_event_time, default=None)
            if latest is not None and _event_time(latest) >= _recent():
                found[f"Pod:job/{job}"] = {
                    "kind": "Pod",
                    "metadata": {"name": job},
                    "what": f"Job {job}",
                    "problem": f"FailedCreate: {latest.message}",
                }
        return found

    def _unqueueable(self, children: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Queued children that still have no Workload STARTUP_GRACE after their creation because the
        WorkloadPriorityClass their `kueue.x-k8s.io/priority-class` label names does not exist (Kueue then only
        logs it): reported like a pod that cannot start."""
        with_workload = {obj["owner"] for obj in children.values() if obj.get("kind") == "Workload"}
        found = {}
        for name, obj in children.items():
            priority = (obj.get("metadata") or {}).get("labels", {}).get(PRIORITY_LABEL)
            if obj.get("kind") not in ("Job", "JobSet") or not priority or name in with_workload:
                continue
            created = _created(obj)
            if created is None or created > _recent(STARTUP_GRACE):
                continue
            if self._workload_priority_class_missing(priority):
                found[f"Pod:kueue/{name}"] = {
                    "kind": "Pod",
                    "metadata": {"name": name},
                    "what": f"{obj['kind']} {name}",
                    "problem": f"WorkloadPriorityClass {priority} not found: Kueue cannot queue it "
                    "(spec.scheduling.priorityClassName names the PriorityClass and the WorkloadPriorityClass)",
                }
        return found

    def _workload_priority_class_missing(self, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.get_cluster_custom_object(WORKLOAD[0], WORKLOAD[1], "workloadpriorityclasses", name)
        except ApiException as error:
            return error.status == 404
        return False

    def _failed_job_message(self, namespace: str, jobset: dict[str, Any]) -> str:
        """The Failed condition of the JobSet's first failed Job (the exit code or pod condition that ended
        it), which the JobSet's own message only names. Read once per JobSet."""
        uid = jobset["metadata"].get("uid", "")
        if not any(c.get("type") == "Failed" for c in jobset.get("status", {}).get("conditions", [])):
            return ""
        if uid not in self.causes:
            cause = self._read_failed_job_message(namespace, jobset)
            if not cause:  # not readable now (or no message): asked again on the next pass, never cached empty
                return ""
            self.causes[uid] = cause
            if len(self.causes) > 10000:
                self.causes.pop(next(iter(self.causes)))
        return self.causes[uid]

    def _read_failed_job_message(self, namespace: str, jobset: dict[str, Any]) -> str:

        failed = [c for c in jobset.get("status", {}).get("conditions", []) if c["type"] == "Failed"]
        match = re.search(r"first failed job: ([a-z0-9.-]+)", failed[0].get("message", "")) if failed else None
        if match is None:
            return ""
        try:
            job = self.batch.read_namespaced_job(match.group(1), namespace)
        except Exception:  # best effort (an ApiException, or a timeout the client raises as urllib3's own)
            return ""
        reasons = [c.message or c.reason for c in (job.status.conditions or []) if c.type == "Failed"]
        return f"Job {match.group(1)}: {reasons[0]}" if reasons else ""

    def run_exists(self, namespace: str, name: str, uid: str) -> bool:
        """Is this incarnation of the run still there (a watch that missed its deletion keeps it cached)?"""
        from kubernetes.client.exceptions import ApiException

        try:
            found = self.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return found["metadata"].get("uid") == uid

    def _verbs(self, kind: str) -> tuple[Any, Any, Any]:
        """(create(namespace, body), read(name, namespace), delete(name, namespace, body)) of a child kind."""
        if kind == "JobSet":
            group, version, plural = JOBSET
            return (
                lambda ns, body: self.custom.create_namespaced_custom_object(group, version, ns, plural, body),
                lambda name, ns: self.custom.get_namespaced_custom_object(group, version, ns, plural, name),
                lambda name, ns, body: self.custom.delete_namespaced_custom_object(
                    group, version, ns, plural, name, body=body
                ),
            )
        api, suffix = {
            "ConfigMap": (self.core, "config_map"),
            "ServiceAccount": (self.core, "service_account"),
            "Role": (self.rbac, "role"),
            "RoleBinding": (self.rbac, "role_binding"),
            "Job": (self.batch, "job"),
        }[kind]
        read = getattr(api, f"read_namespaced_{suffix}")
        return (
            getattr(api, f"create_namespaced_{suffix}"),
            lambda name, ns: api.api_client.sanitize_for_serialization(read(name, ns)),
            lambda name, ns, body: getattr(api, f"delete_namespaced_{suffix}")(name, ns, body=body),
        )

    def create(self, namespace: str, obj: dict[str, Any]) -> bool:
        """Create a child; False when it exists already and is this run's (the watch cache had not shown it yet).
        An object of another incarnation, or one being deleted, raises (the pass is retried)."""
        from kubernetes.client.exceptions import ApiException

        create, read, _ = self._verbs(obj["kind"])
        try:
            create(namespace, obj)
            return True
        except ApiException as error:
            if error.status != 409:
                raise
            uid = obj["metadata"]["ownerReferences"][0]["uid"]
            existing = read(obj["metadata"]["name"], namespace)
            if not owned_by(existing, uid) or existing["metadata"].get("deletionTimestamp"):
                raise ApiException(
                    status=409,
                    reason=f"{obj['kind']} {obj['metadata']['name']} exists from an earlier run of "
                    "the same name and is being deleted",
                ) from error
            return False

    def update(self, namespace: str, obj: dict[str, Any]) -> None:
        """Bring a ConfigMap's data or a RoleBinding's subjects to `obj`'s (a merge patch: lists are replaced)."""
        name = obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap":
            self.core.patch_namespaced_config_map(name, namespace, {"data": obj["data"]})
        else:
            self.rbac.patch_namespaced_role_binding(name, namespace, {"subjects": obj["subjects"]})

    def delete(self, namespace: str, kind: str, name: str) -> None:
        """Delete a child and, in the background, its pods; one already gone is fine."""
        from kubernetes.client import V1DeleteOptions
        from kubernetes.client.exceptions import ApiException

        try:
            self._verbs(kind)[2](name, namespace, V1DeleteOptions(propagation_policy="Background"))
        except ApiException as error:
            if error.status != 404:
                raise

    def set_suspend(self, namespace: str, kind: str, name: str, suspend: bool) -> None:
        body = {"spec": {"suspend": suspend}}
        if kind == "Job":
            self.batch.patch_namespaced_job(name, namespace, body)
        else:
            self.custom.patch_namespaced_custom_object(*JOBSET[:2], namespace, JOBSET[2], name, body)

    def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        """Kueue's own stop: an inactive Workload is evicted (its Job suspended, its pods gone) and not re-queued
        until it is active again."""
        body = {"spec": {"active": active}, "metadata": {"annotations": {DEACTIVATED: None if active else "true"}}}
        self.custom.patch_namespaced_custom_object(*WORKLOAD[:2], namespace, WORKLOAD[2], name, body)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the run's status; returns the run as written."""
        return self.custom.patch_namespaced_custom_object_status(
            API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status}
        )
