"""kopf handlers: every event on a ContinuedPretrain or on one of its children runs one reconcile pass.

Only event handlers: they are level-triggered (the operator lists the run's children and decides from
what it sees, so a restart changes nothing: kopf replays every object as an event when it starts), they
keep no progress or diff-base state, and they need no finalizer, so deleting a run never waits for the
operator. Children carry ownerReferences, so the garbage collector deletes them with the run.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Any

import kopf

from cpt import API_GROUP, API_VERSION, PLURAL
from cpt.api import ContinuedPretrain
from cpt_operator import metrics
from cpt_operator.config import OperatorConfig
from cpt_operator.kube import Kube
from cpt_operator.names import RUN_LABEL
from cpt_operator.reconcile import child_key, reconcile

log = logging.getLogger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP)
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"  # never added: no handler needs one
    settings.watching.inactivity_timeout = 300  # a silently stalled watch is restarted
    settings.watching.server_timeout = 270
    settings.posting.level = logging.WARNING
    memo.kube = Kube.connect()
    memo.config = OperatorConfig.from_env()
    metrics.serve()

    memo.requeue = Requeue(memo)


class Requeue:
    """Passes due after some seconds with no event to trigger them (the deadline, the TTL). Kept in memory: a
    restarted operator recomputes them from the run's times on its first pass. A sooner request replaces a
    later one; a firing timer frees its slot, so its own pass may ask for the next."""

    def __init__(self, memo: kopf.Memo) -> None:
        self.memo = memo
        self.pending: dict[tuple[str, str], tuple[float, threading.Timer]] = {}

    def __call__(self, namespace: str, run: str, seconds: float) -> None:
        due = time.monotonic() + seconds
        with _LOCKS_GUARD:
            current = self.pending.get((namespace, run))
            if current is not None and current[1].is_alive() and current[0] <= due:
                return
            if current is not None:
                current[1].cancel()
            # kopf's context (for posting events) travels with the timer: it fires outside kopf's threads
            context = contextvars.copy_context()

            def fire() -> None:
                with _LOCKS_GUARD:
                    self.pending.pop((namespace, run), None)
                context.run(serialized_pass, self.memo, namespace, run)

            timer = threading.Timer(seconds + 1.0, fire)  # + 1 s: the run's times have a resolution of 1 s
            timer.daemon = True
            self.pending[(namespace, run)] = (due, timer)
        log.info("a pass for %s/%s is due in %.1fs", namespace, run, seconds)
        timer.start()


def run_pass(memo: kopf.Memo, body: dict[str, Any], seen: dict[str, Any] | None = None) -> None:
    """Observe, decide, act: create children, (un)suspend them, post events, write the owned status.

    `seen` is the child whose event started this pass, as that event last showed it: a Job or JobSet that a
    TTL of 0 deleted the moment it finished is gone from the listing, but its final state still counts
    (else the stage would run again)."""
    kube: Kube = memo.kube
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    resource = ContinuedPretrain.model_validate(
        {"metadata": {"name": name, "namespace": namespace}, "spec": body.get("spec", {})}
    )
    children = kube.children(namespace, name)
    if seen is not None:
        children.setdefault(child_key(seen), seen)
    status = dict(body.get("status") or {})
    metrics.PASSES.inc()
    decision = reconcile(resource, children, status, int(meta.get("generation", 1)), memo.config)
    metrics.PHASES.set(namespace, name, decision.status["phase"])
    for stage, seconds in decision.completed:
        metrics.STAGE_SECONDS.labels(stage).observe(seconds)
    restarts = decision.status.get("training", {}).get("restarts")
    if restarts is not None:
        metrics.RESTARTS.labels(namespace, name).set(restarts)
    for obj in decision.create:
        kopf.adopt(obj, owner=body)
        kube.create(namespace, obj)
    for kind, child, suspend in decision.set_suspend:
        kube.set_suspend(namespace, kind, child, suspend)
    for kind, child in decision.delete:
        kube.delete(namespace, kind, child)
        kopf.event(body, type="Normal", reason="Expired", message=f"{kind} {child} deleted (ttlSecondsAfterFinished)")
    if decision.requeue_after is not None:
        memo.requeue(namespace, name, decision.requeue_after)
    for kind, reason, message in decision.events:
        kopf.event(body, type=kind, reason=reason, message=message)
    if differs(status, decision.status):
        kube.patch_status(namespace, name, decision.status)


def differs(current: Any, wanted: Any) -> bool:
    """Would a merge patch of `wanted` change `current`? (Status writes trigger events: patch only changes.)"""
    if isinstance(wanted, dict) and isinstance(current, dict):
        return any(differs(current.get(key), value) for key, value in wanted.items())
    return current != wanted


_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def serialized_pass(memo: kopf.Memo, namespace: str, run: str, seen: dict[str, Any] | None = None) -> None:
    """One pass at a time per run, on the run as it is now. kopf serializes events per object, but a run's
    own events and its children's arrive concurrently; two passes on the same stale status would both take
    the same transition (two events, two stage timings)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault((namespace, run), threading.Lock())
    with lock, metrics.ERRORS.count_exceptions():
        body = memo.kube.get_run(namespace, run)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            run_pass(memo, body, seen)


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
def on_run(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    meta = body["metadata"]
    if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
        metrics.PHASES.forget(meta["namespace"], meta["name"])
        with _LOCKS_GUARD:
            _LOCKS.pop((meta["namespace"], meta["name"]), None)
        return
    serialized_pass(memo, meta["namespace"], meta["name"])


def _owner_pass(body: kopf.Body, kind: str, memo: kopf.Memo) -> None:
    run = body["metadata"].get("labels", {}).get(RUN_LABEL)
    namespace = body["metadata"].get("namespace")
    if run and namespace:
        serialized_pass(memo, namespace, run, seen={**dict(body), "kind": kind})


@kopf.on.event("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
def on_job(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _owner_pass(body, "Job", memo)


@kopf.on.event("jobset.x-k8s.io", "v1alpha2", "jobsets", labels={RUN_LABEL: kopf.PRESENT})
def on_jobset(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _owner_pass(body, "JobSet", memo)
