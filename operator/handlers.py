"""kopf handlers: every event on a ContinuedPretrain or on one of its children runs one reconcile pass.

Only event handlers: they are level-triggered (the operator lists the run's children and decides from
what it sees, so a restart changes nothing: kopf replays every object as an event when it starts), they
keep no progress or diff-base state, and they need no finalizer, so deleting a run never waits for the
operator. Children carry ownerReferences, so the garbage collector deletes them with the run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import kopf

from cpt import API_GROUP, API_VERSION, PLURAL
from cpt.api import ContinuedPretrain
from cpt_operator import actions, api_errors, metrics
from cpt_operator.cache import Cache, trimmed, trimmed_run
from cpt_operator.config import OperatorConfig
from cpt_operator.kube import JOBSET, STARTUP_GRACE, WORKERS, WORKLOAD, Kube, start_problem
from cpt_operator.names import RUN_LABEL
from cpt_operator.ownership import owned_by
from cpt_operator.reconcile import Decision, child_key, reconcile
from cpt_operator.requeue import Requeue
from cpt_operator.serial import Serializer

log = logging.getLogger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP)
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"  # never added: no handler needs one
    settings.watching.inactivity_timeout = 300  # a silently stalled watch is restarted
    settings.watching.server_timeout = 270
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = WORKERS  # passes wait on the API server, not on the CPU
    memo.kube = Kube.connect()
    memo.config = OperatorConfig.from_env()
    metrics.serve()

    memo.failures = {}  # (namespace, run) -> failed passes in a row, the last message, retry time, generation
    memo.cache = Cache()  # the watch caches (kopf indices), bound on the first handler call
    memo.written = {}  # (namespace, run) -> the run as the operator's last status write returned it
    memo.held = {}  # (namespace, run) -> children as events showed them during a backoff, for the next pass
    memo.pod_problems = {}  # (namespace, pod) -> why it cannot start, for the run's pods that cannot
    memo.checked = {}  # (namespace, run) -> when a timer's pass last checked that the run still exists
    memo.requeue = Requeue(lambda namespace, run: serialized_pass(memo, namespace, run, timer=True))


@kopf.on.cleanup()
def shutdown(memo: kopf.Memo, **_: Any) -> None:
    memo.requeue.stop()


def run_pass(memo: kopf.Memo, body: dict[str, Any], seen: dict[str, dict[str, Any]] | None = None) -> None:
    """Observe, decide, act: create children, stop or (un)suspend them, post events, write the owned status.

    `seen` are the children whose events started this pass, as those events last showed them: a Job or JobSet that a
    TTL of 0 deleted the moment it finished is gone from the listing, but its final state still counts
    (else the stage would run again). Any API call that fails is retried with backoff; its cause is put in
    the status."""
    kube: Kube = memo.kube
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    resource = _resource(body)
    observed = kube.observe(memo.cache, namespace, name, meta["uid"])
    for key, child in (seen or {}).items():
        if owned_by(child, meta["uid"]):
            observed.children.setdefault(key, child)
    status = dict(body.get("status") or {})
    metrics.PASSES.inc()
    generation = int(meta.get("generation", 1))
    decision = reconcile(resource, observed.children, status, generation, memo.config, leftovers=observed.leftovers)
    _observe(namespace, name, decision)

    def post(kind: str, reason: str, message: str) -> None:
        metrics.EVENTS.inc()
        kopf.event(body, type=kind, reason=reason, message=message)

    failures = actions.apply(kube, body, decision, post)
    for kind, reason, message in decision.events:
        post(kind, reason, message)
    wanted = decision.status
    if failures:  # the new generation is observed only once every change it asked for was made
        wanted = _failed(memo, body, wanted, "; ".join(failures))
        wanted["observedGeneration"] = status.get("observedGeneration")
    else:
        memo.failures.pop((namespace, name), None)
        if not _finished(wanted):  # a periodic resync, whatever happens (or fails to happen) in between
            decision.requeue(memo.config.reconcile_seconds)
        if decision.requeue_after is not None:
            memo.requeue(namespace, name, decision.requeue_after)
    if differs(status, wanted):
        memo.written[(namespace, name)] = trimmed_run(kube.patch_status(namespace, name, changes(status, wanted)))


_RESOURCES: OrderedDict[tuple[str, int], ContinuedPretrain] = OrderedDict()  # (uid, generation) -> validated spec
_RESOURCES_KEPT = 256  # the runs pushing progress; a validated spec holds ~25 KB, a validation takes ~0.3 ms
_RESOURCES_LOCK = threading.Lock()


def _resource(body: dict[str, Any]) -> ContinuedPretrain:
    """The run's spec, validated once per generation (a status push brings a pass, not a new spec); only the most
    recently used are kept, so memory does not grow with the number of runs."""
    meta = body["metadata"]
    key = (meta["uid"], int(meta.get("generation", 1)))
    with _RESOURCES_LOCK:
        resource = _RESOURCES.get(key)
        if resource is not None:
            _RESOURCES.move_to_end(key)
            return resource
    resource = ContinuedPretrain.model_validate(
        {
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "spec": body.get("spec", {}),
        }
    )
    with _RESOURCES_LOCK:
        _RESOURCES[key] = resource
        while len(_RESOURCES) > _RESOURCES_KEPT:
            _RESOURCES.popitem(last=False)
    return resource


def _observe(namespace: str, name: str, decision: Decision) -> None:
    """The run's metrics, from the decision."""
    metrics.PHASES.set(namespace, name, decision.status["phase"])
    for stage, seconds in decision.completed:
        metrics.STAGE_SECONDS.labels(stage).observe(seconds)
    restarts = decision.status.get("training", {}).get("restarts")
    if restarts is not None:
        metrics.RESTARTS.labels(namespace, name).set(restarts)


def _finished(status: dict[str, Any]) -> bool:
    return status.get("phase") in ("Succeeded", "Failed")


def _failed(memo: kopf.Memo, body: dict[str, Any], status: dict[str, Any], message: str) -> dict[str, Any]:
    """A pass that could not finish: count it, say why (status and, once per cause, a Warning Event), retry."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    attempts, last, _, _ = memo.failures.get(key, (0, "", 0.0, 0))
    attempts += 1
    generation = int(meta.get("generation", 1))
    memo.failures[key] = (attempts, message, time.monotonic() + api_errors.backoff(attempts), generation)
    metrics.ERRORS.inc()
    log.warning("pass for %s/%s failed (attempt %d): %s", *key, attempts, message)
    if message != last:
        kopf.event(body, type="Warning", reason="ApiError", message=message)
    memo.requeue(*key, api_errors.backoff(attempts))
    return api_errors.error_status(status, message, attempts, generation, _now())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def changes(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that brings `current` to `wanted`'s fields: only what differs. A field the pass did not
    change is not sent, so a list the pods pushed after the cache was read (evaluation results, exports) is never
    replaced by the pass's older copy of it."""
    return {
        key: changes(current[key], value) if isinstance(value, dict) and isinstance(current.get(key), dict) else value
        for key, value in wanted.items()
        if differs(current.get(key), value)
    }


def differs(current: Any, wanted: Any) -> bool:
    """Would a merge patch of `wanted` change `current`? (Status writes trigger events: patch only changes.)"""
    if isinstance(wanted, dict) and isinstance(current, dict):
        return any(differs(current.get(key), value) for key, value in wanted.items())
    return current != wanted


SERIAL = Serializer()


def serialized_pass(
    memo: kopf.Memo, namespace: str, run: str, seen: dict[str, Any] | None = None, timer: bool = False
) -> None:
    """One pass at a time per run, on the run as it is now (two passes on the same stale status would both take
    the same transition); a burst of events while a pass runs makes one more pass (serial.py). While a run waits
    out its backoff after a failed pass, events (a child's, a status push) do not bring the failing call back
    early; a spec edit does. A pass brought by the timer first checks that the run still exists (a watch that
    missed its deletion would keep it cached)."""
    key = (namespace, run)
    SERIAL.run(key, {child_key(seen): seen} if seen else {}, lambda children: _pass(memo, key, children, timer))


def _pass(memo: kopf.Memo, key: tuple[str, str], seen: dict[str, dict[str, Any]], timer: bool) -> None:
    body = None
    try:
        body = _current(memo, *key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        if _backing_off(memo, key, body, timer):
            memo.held.setdefault(key, {}).update(seen)  # a child's last state only its event showed (a TTL of 0)
            return
        seen = {**memo.held.pop(key, {}), **seen}
        if timer and _check_due(memo, key) and not memo.kube.run_exists(*key, body["metadata"]["uid"]):
            _forget(memo, key)
            return
        run_pass(memo, body, seen)
    except Exception as error:  # reported in the status and retried, never lost in a log
        message = api_errors.describe(f"reconcile {key[0]}/{key[1]}", error)
        if body is None:
            log.warning("%s", message)
            memo.requeue(*key, api_errors.backoff(memo.failures.get(key, (0, "", 0.0, 0))[0] + 1))
            return
        memo.held.setdefault(key, {}).update(seen)  # what this pass saw counts in the retry
        current = body.get("status") or {}
        status = _failed(memo, body, dict(current), message)
        if differs(current, status):
            with contextlib.suppress(Exception):  # the status write may fail for the same cause
                memo.kube.patch_status(*key, changes(current, status))


def _check_due(memo: kopf.Memo, key: tuple[str, str]) -> bool:
    """Is it time to check that the run still exists (at most once per reconcileSeconds per run)?"""
    now = time.monotonic()
    last = memo.checked.setdefault(key, now)
    if now - last < memo.config.reconcile_seconds:
        return False
    memo.checked[key] = now
    return True


def _backing_off(memo: kopf.Memo, key: tuple[str, str], body: dict[str, Any], timer: bool) -> bool:
    """Is this an event's pass during the backoff of a failed one, for the same generation?"""
    failure = memo.failures.get(key)
    if failure is None or timer:
        return False
    _, _, retry_at, generation = failure
    return time.monotonic() < retry_at and int(body["metadata"].get("generation", 1)) == generation


def _forget(memo: kopf.Memo, key: tuple[str, str]) -> None:
    """Drop what the operator keeps in memory for a run that is gone."""
    metrics.PHASES.forget(*key)
    memo.requeue.forget(*key)
    memo.failures.pop(key, None)
    memo.written.pop(key, None)
    memo.checked.pop(key, None)
    memo.held.pop(key, None)
    SERIAL.forget(key)


def _current(memo: kopf.Memo, namespace: str, run: str) -> dict[str, Any] | None:
    """The run from the watch cache, or as the operator's own last status write returned it while the watch has
    not caught up with that write (a pass on the older status would take the same transition twice)."""
    cached = memo.cache.run(namespace, run)
    written = memo.written.get((namespace, run))
    if cached is None or written is None:
        return cached
    if written["metadata"].get("uid") == cached["metadata"].get("uid") and _version(written) > _version(cached):
        return written
    memo.written.pop((namespace, run), None)
    return cached


def _version(obj: dict[str, Any]) -> int:
    """resourceVersion as a number (etcd's revision; an opaque one counts as oldest)."""
    try:
        return int(obj["metadata"].get("resourceVersion", "0"))
    except ValueError:
        return 0


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
def on_run(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    memo.cache.bind(kwargs)
    meta = body["metadata"]
    if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
        _forget(memo, (meta["namespace"], meta["name"]))
        return
    serialized_pass(memo, meta["namespace"], meta["name"])


def _owner_pass(event: dict[str, Any], body: kopf.Body, kind: str, memo: kopf.Memo, kwargs: dict[str, Any]) -> None:
    memo.cache.bind(kwargs)
    run = body["metadata"].get("labels", {}).get(RUN_LABEL)
    namespace = body["metadata"].get("namespace")
    if not (run and namespace):
        return
    if event.get("type") == "ADDED" and not body.get("status"):
        # Just created (by a pass that already decided on it): nothing to decide until its controller acts, which
        # brings an event; if the controller cannot make its pods, the pass due here asks why (STARTUP_GRACE).
        memo.requeue(namespace, run, STARTUP_GRACE + 1.0)
        return
    serialized_pass(memo, namespace, run, seen=trimmed(body, kind))


@kopf.on.event("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
def on_job(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    _owner_pass(event, body, "Job", memo, kwargs)


@kopf.on.event(*JOBSET, labels={RUN_LABEL: kopf.PRESENT})
def on_jobset(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    _owner_pass(event, body, "JobSet", memo, kwargs)


@kopf.on.event(*WORKLOAD)
def on_workload(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A pass for the run whose Job or JobSet owns the Workload (admitted, pending, evicted: Queued follows)."""
    memo.cache.bind(kwargs)
    for reference in body["metadata"].get("ownerReferences", []):
        owner = memo.cache.owner_run(reference.get("uid", ""))
        if owner is not None:
            serialized_pass(memo, *owner)
            return


@kopf.on.event("", "v1", "pods", labels={RUN_LABEL: kopf.PRESENT})
def on_pod(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A pass when one of the run's pods cannot start, and when it no longer has that problem (the rest of a
    pod's life shows in its Job's status)."""
    memo.cache.bind(kwargs)
    key = (body["metadata"].get("namespace"), body["metadata"].get("name"))
    problem = "" if event.get("type") == "DELETED" else start_problem(body)
    if problem == memo.pod_problems.get(key, ""):
        return
    if problem:
        memo.pod_problems[key] = problem
    else:
        memo.pod_problems.pop(key, None)
    run = body["metadata"].get("labels", {}).get(RUN_LABEL)
    if run and key[0]:
        serialized_pass(memo, key[0], run)
