"""Carry out one pass's decision with the API: every call is tried, each failure is described (not raised), so
one refused create never hides the others or the status write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cpt_operator.api_errors import describe
from cpt_operator.kube import Kube
from cpt_operator.ownership import adopt
from cpt_operator.reconcile import Decision

FAILED = object()  # what `attempt` returns for a call that raised
Post = Callable[[str, str, str], None]  # (type, reason, message): posts an Event on the run


def apply(kube: Kube, run: dict[str, Any], decision: Decision, post: Post) -> list[str]:
    """Deletes, stops, (un)suspends, updates, then creates; returns one line per API call that failed."""
    namespace = run["metadata"]["namespace"]
    failures: list[str] = []

    def attempt(action: str, call: Callable[[], Any]) -> Any:
        """The call's result (None from most calls), or FAILED."""
        try:
            return call()
        except Exception as error:  # an API refusal or a lost connection: reported, retried
            failures.append(describe(action, error))
            return FAILED

    for kind, name in decision.delete:
        attempt(f"delete {kind} {name}", lambda k=kind, n=name: kube.delete(namespace, k, n))
    for workload, active in decision.set_workload_active:
        verb = "activate" if active else "deactivate"
        attempt(f"{verb} Workload {workload}", lambda w=workload, a=active: kube.set_workload_active(namespace, w, a))
    for kind, name, suspend in decision.set_suspend:
        verb = "suspend" if suspend else "resume"
        attempt(f"{verb} {kind} {name}", lambda k=kind, n=name, s=suspend: kube.set_suspend(namespace, k, n, s))
    for obj in decision.update:
        what = f"{obj['kind']} {obj['metadata']['name']}"
        if attempt(f"update {what}", lambda o=obj: kube.update(namespace, adopt(o, run))) is not FAILED:
            post("Normal", "Updated", f"{what}: the spec changed")
    created = []
    for obj in decision.create:
        what = f"{obj['kind']} {obj['metadata']['name']}"
        if attempt(f"create {what}", lambda o=obj: kube.create(namespace, adopt(o, run))) is True:
            created.append(what)
    if created:  # one Event per pass (best effort: an operator killed right here never posts it)
        post("Normal", "Created", ", ".join(created))
    return failures
