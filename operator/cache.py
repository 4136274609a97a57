"""Watch caches of the runs, their children, their pods and Kueue's Workloads (kopf indices), so a pass makes no
LIST or GET: with hundreds of runs pushing progress every few seconds, a pass costs API requests only for what it
changes. kopf holds every handler back until each index is filled by its initial listing, so the first passes
after a start already see every child; so the one optional index, Kueue's ResourceFlavors, is registered only when
the operator may list and watch them (register_resource_flavors).

Only what a pass reads is kept of each object (no pod templates), which bounds the operator's memory.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import kopf

from cpt import API_GROUP, API_VERSION, PLURAL
from cpt.throughput import GPU_PRODUCT_LABEL
from cpt_operator.kube import (
    JOB_UID_LABEL,
    JOBSET,
    JOBSET_UID_LABEL,
    RESOURCE_FLAVOR,
    WORKLOAD,
    Kube,
    start_problem,
)
from cpt_operator.names import DEACTIVATED, RUN_LABEL
from cpt_operator.ownership import controller_uid

log = logging.getLogger(__name__)

KEPT_META = ("name", "namespace", "uid", "resourceVersion", "generation", "labels", "ownerReferences")
KEPT_META += ("creationTimestamp", "deletionTimestamp")


def trimmed(body: Any, kind: str) -> dict[str, Any]:
    """What a pass reads of a child: identity, owners, times, `spec.suspend`, status, ConfigMap data, RoleBinding
    subjects."""
    meta = body.get("metadata", {})
    out: dict[str, Any] = {"kind": kind, "metadata": {k: copy.deepcopy(meta[k]) for k in KEPT_META if k in meta}}
    if "suspend" in (body.get("spec") or {}):
        out["spec"] = {"suspend": body["spec"]["suspend"]}
    for key in ("status", "data", "subjects"):
        if key in body:
            out[key] = copy.deepcopy(body[key])
    return out


def _run_key(namespace: str | None, labels: dict[str, str]) -> tuple[str | None, str]:
    return namespace, labels[RUN_LABEL]


def _register_child_index(group: str, version: str, plural: str, kind: str) -> None:
    def index(namespace: str | None, labels: dict[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {_run_key(namespace, labels): trimmed(body, kind)}

    index.__name__ = index.__qualname__ = f"cpt_{kind.lower()}s"
    kopf.index(group, version, plural, labels={RUN_LABEL: kopf.PRESENT}, id=index.__name__)(index)


CHILD_RESOURCES = (
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "serviceaccounts", "ServiceAccount"),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ("batch", "v1", "jobs", "Job"),
    (*JOBSET, "JobSet"),
)
for _resource in CHILD_RESOURCES:
    _register_child_index(*_resource)
CHILD_INDICES = tuple(f"cpt_{kind.lower()}s" for *_, kind in CHILD_RESOURCES)


def _register_owner_index(group: str, version: str, plural: str) -> None:
    def index(namespace: str | None, labels: dict[str, str], uid: str | None, **_: Any) -> dict[Any, Any]:
        return {uid: _run_key(namespace, labels)}

    index.__name__ = index.__qualname__ = f"cpt_{plural}_by_uid"
    kopf.index(group, version, plural, labels={RUN_LABEL: kopf.PRESENT}, id=index.__name__)(index)


for _resource in (("batch", "v1", "jobs"), JOBSET):  # what Kueue's Workloads are owned by
    _register_owner_index(*_resource)
OWNER_INDICES = ("cpt_jobs_by_uid", "cpt_jobsets_by_uid")


RUN_META = ("name", "namespace", "uid", "resourceVersion", "generation", "labels", "deletionTimestamp")


def trimmed_run(body: Any) -> dict[str, Any]:
    """A run as a pass reads it: no managedFields, no annotations (a last-applied copy of the spec)."""
    meta = body.get("metadata", {})
    out = {key: copy.deepcopy(body[key]) for key in ("apiVersion", "kind", "spec", "status") if key in body}
    out["metadata"] = {key: copy.deepcopy(meta[key]) for key in RUN_META if key in meta}
    return out


@kopf.index(API_GROUP, API_VERSION, PLURAL, id="cpt_runs")
def cpt_runs(namespace: str | None, name: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Every run, as a pass reads it."""
    return {(namespace, name): trimmed_run(body)}


@kopf.index("", "v1", "pods", labels={RUN_LABEL: kopf.PRESENT}, id="cpt_pods")
def cpt_pods(namespace: str | None, labels: dict[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """The run's pods: their name, owners' UIDs and why they cannot start (kube.start_problem)."""
    summary = {
        "name": body["metadata"]["name"],
        "owners": {labels.get(JOB_UID_LABEL), labels.get(JOBSET_UID_LABEL)} - {None},
        "problem": start_problem(body),
    }
    return {_run_key(namespace, labels): summary}


@kopf.index(*WORKLOAD, id="cpt_workloads")
def cpt_workloads(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Kueue's Workloads, by (namespace, owner UID): what kube.workload_summary reads (no pod sets)."""
    owner = controller_uid(body) or next((r.get("uid") for r in body["metadata"].get("ownerReferences", [])), None)
    spec = body.get("spec") or {}
    kept = {
        "metadata": {
            "name": body["metadata"]["name"],
            "annotations": {k: v for k, v in (body["metadata"].get("annotations") or {}).items() if k == DEACTIVATED},
        },
        "spec": {key: spec[key] for key in ("queueName", "active") if key in spec},
        "status": {"conditions": copy.deepcopy((body.get("status") or {}).get("conditions", []))},
    }
    admission = (body.get("status") or {}).get("admission")
    if admission:  # the flavors Kueue assigned (status.plan's GPU type): no resource usage, no counts
        assignments = admission.get("podSetAssignments") or []
        kept["status"]["admission"] = {
            "podSetAssignments": [{"flavors": dict(a.get("flavors") or {})} for a in assignments]
        }
    return {(namespace, owner): kept} if owner else {}


def cpt_resourceflavors(name: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Kueue's ResourceFlavors whose node labels name a GPU product: flavor name -> product (status.plan's GPU)."""
    product = ((body.get("spec") or {}).get("nodeLabels") or {}).get(GPU_PRODUCT_LABEL)
    return {name: product} if name and product else {}


ASK_ATTEMPTS = 5  # SelfSubjectAccessReviews at start, 1, 2, 4, 8 s apart, before the watch is skipped


def register_resource_flavors(kube: Kube, pause: Callable[[float], None] = time.sleep) -> bool:
    """Register the cpt_resourceflavors index, before kopf starts, only if the operator may list and watch
    ResourceFlavors: kopf holds every handler back until each index has its first listing, and a forbidden one
    never comes. Without the permission, or with no answer after ASK_ATTEMPTS (the API server unreachable, a 503
    during an upgrade): one warning, and status.plan assumes the default GPU; the operator starts either way."""
    reason = _why_not_readable(kube, pause)
    if reason:
        log.warning(
            "cannot read Kueue ResourceFlavors: %s (the chart's -discovery ClusterRole grants it); status.plan "
            "assumes the default GPU, not the admitted flavor's",
            reason,
        )
        return False
    kopf.index(*RESOURCE_FLAVOR, id="cpt_resourceflavors")(cpt_resourceflavors)
    return True


def _why_not_readable(kube: Kube, pause: Callable[[float], None]) -> str | None:
    """None when the operator may list and watch ResourceFlavors; else why it may not, or why it could not ask."""
    group, _, plural = RESOURCE_FLAVOR
    for attempt in range(ASK_ATTEMPTS):
        try:
            missing = [verb for verb in ("list", "watch") if not kube.may(verb, group, plural)]
        except Exception as error:  # any failure to ask is retried, then the watch is skipped
            if attempt + 1 == ASK_ATTEMPTS:
                return f"could not ask whether it may ({str(error).split(chr(10))[0]})"
            pause(2.0**attempt)
            continue
        return f"the operator's account may not {' or '.join(missing)} {plural}.{group}" if missing else None
    return None


class Cache:
    """Reads the indices (filled by kopf in its event loop) from the pass threads."""

    def __init__(self) -> None:
        self.indices: dict[str, Any] = {}

    def bind(self, kwargs: dict[str, Any]) -> None:
        """Take the indices from a handler's kwargs (kopf hands them to handlers only)."""
        if not self.indices:
            names = (*CHILD_INDICES, *OWNER_INDICES, "cpt_runs", "cpt_pods", "cpt_workloads")
            optional = ("cpt_resourceflavors",)  # only with the permission (register_resource_flavors)
            self.indices = {name: kwargs[name] for name in names} | {n: kwargs[n] for n in optional if n in kwargs}

    @property
    def ready(self) -> bool:
        return bool(self.indices)

    def values(self, index: str, key: Any) -> list[Any]:
        """A consistent copy of the values under `key` (the event loop may be updating the store)."""
        store = self.indices[index].get(key)
        for _ in range(5):
            try:
                return list(store or ())
            except RuntimeError:  # changed size during iteration: read again
                continue
        return list(store or ())

    def run(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.values("cpt_runs", (namespace, name))
        return found[0] if found else None

    def children(self, namespace: str, run: str) -> Iterable[dict[str, Any]]:
        for index in CHILD_INDICES:
            yield from self.values(index, (namespace, run))

    def pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        return self.values("cpt_pods", (namespace, run))

    def owner_run(self, uid: str) -> tuple[str, str] | None:
        """(namespace, run) of the Job or JobSet with this UID."""
        for index in OWNER_INDICES:
            found = self.values(index, uid)
            if found:
                return found[0]
        return None

    def workloads(self, namespace: str, owner_uid: str) -> list[dict[str, Any]]:
        return self.values("cpt_workloads", (namespace, owner_uid))

    def flavor_products(self) -> dict[str, str]:
        """Each ResourceFlavor's GPU product label, by flavor name (none without the index)."""
        if "cpt_resourceflavors" not in self.indices:
            return {}
        for _ in range(5):
            try:
                names = list(self.indices["cpt_resourceflavors"])
                break
            except RuntimeError:  # changed size during iteration: read again
                continue
        else:
            return {}
        found = {name: self.values("cpt_resourceflavors", name) for name in names}
        return {name: products[0] for name, products in found.items() if products}
