"""Which incarnation of a run a child belongs to.

A run deleted and applied again under the same name (an Argo CD Replace, `kubectl delete --cascade=orphan`
then `apply`) is a new object with a new UID; the old incarnation's children carry the same names and the same
run label. Children are therefore matched by their controller owner's UID, never by label alone: another
incarnation's objects are leftovers, deleted before the run creates its own.
"""

from __future__ import annotations

import copy
from typing import Any

from cpt import API_GROUP, API_VERSION, KIND


def owner_reference(run: dict[str, Any]) -> dict[str, Any]:
    """The controller ownerReference a child of `run` carries (the garbage collector deletes it with the run)."""
    meta = run["metadata"]
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def adopt(child: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """`child` owned by `run`, in its namespace. Unlike kopf.adopt, the run's own labels are not copied: a child
    carries only the labels the operator means (a `kueue.x-k8s.io/queue-name` on the run must not make Kueue
    manage children the operator does not queue)."""
    child = copy.deepcopy(child)
    child["metadata"]["namespace"] = run["metadata"]["namespace"]
    child["metadata"]["ownerReferences"] = [owner_reference(run)]
    return child


def controller_uid(obj: dict[str, Any]) -> str | None:
    """The UID of the object's controller owner, if any."""
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r.get("uid") for r in references if r.get("controller")), None)


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    return controller_uid(obj) == uid


def is_leftover(obj: dict[str, Any], uid: str) -> bool:
    """An object with the run's label that an earlier incarnation of the run left: made by the operator
    (`app.kubernetes.io/managed-by`), controlled by another ContinuedPretrain or by nothing (orphaned). Anything
    else with the label (a user's own ServiceAccount, say) is neither this run's nor the operator's to delete."""
    from cpt_operator.names import MANAGED_BY

    if (
        owned_by(obj, uid)
        or (obj.get("metadata") or {}).get("labels", {}).get("app.kubernetes.io/managed-by") != MANAGED_BY
    ):
        return False
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    controller = next((r for r in references if r.get("controller")), None)
    return controller is None or controller.get("kind") == KIND
