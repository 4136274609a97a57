"""One level-triggered pass over a run: from the resource and its observed children, what to create, which
children to (un)suspend, and the status the operator owns (conditions, phase, times, and status.plan: steps,
memory and expected training time from the spec, cpt/plan.py).

Pure: no API calls, so every transition is unit-tested and a restarted operator takes the same decision.
Stage conditions (`Preprocessed`, `DataReady`, `BaselineEvaluated`, `Trained`, `Evaluated`, `Reported`) are sticky: once
True, that stage's children are never recreated, even if a TTL or a person deleted them. `Complete` and
`Failed` are terminal: nothing is created after them. A breach of the forgetting guardrail (pushed by an evaluation
Job) sets `ForgettingBudgetExceeded`, and under action stop fails the run with that reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cpt.api import ContinuedPretrain, ContinuedPretrainSpec
from cpt.api.status import ConditionType, Phase
from cpt.exit_codes import EXIT_FORGETTING
from cpt.plan import failed_plan, status_plan
from cpt.stages import Stage
from cpt_operator.children import (
    evaluation_job,
    milestone_exports,
    spec_configmap,
    stage_job,
    status_writer,
    training_jobset,
)
from cpt_operator.config import OperatorConfig
from cpt_operator.kube import CAUSE
from cpt_operator.names import QUEUE_LABEL, STAGE_LABEL, child_name, segment_suffix
from cpt_operator.segments import Segments, extend, finish
from cpt_operator.segments import observed as segments_of

# The condition types of the API (cpt/api/status.py), under short names
READY, RECONCILING, STALLED = ConditionType.READY, ConditionType.RECONCILING, ConditionType.STALLED
COMPLETE, FAILED, SUSPENDED = ConditionType.COMPLETE, ConditionType.FAILED, ConditionType.SUSPENDED
QUEUED = ConditionType.QUEUED
PREPROCESSED, DATA_READY, BASELINE_EVALUATED = (
    ConditionType.PREPROCESSED,
    ConditionType.DATA_READY,
    ConditionType.BASELINE_EVALUATED,
)
TRAINED, EVALUATED, REPORTED = ConditionType.TRAINED, ConditionType.EVALUATED, ConditionType.REPORTED
FORGETTING = ConditionType.FORGETTING_BUDGET_EXCEEDED


@dataclass
class Decision:
    """What one pass decided."""

    create: list[dict[str, Any]] = field(default_factory=list)
    set_suspend: list[tuple[str, str, bool]] = field(default_factory=list)  # (kind, name, suspend)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type Normal|Warning, reason, message)
    completed: list[tuple[str, float]] = field(default_factory=list)  # (stage, seconds) that finished now
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name): past the TTL, or leftovers
    set_workload_active: list[tuple[str, bool]] = field(default_factory=list)  # (Kueue Workload, active)
    update: list[dict[str, Any]] = field(default_factory=list)  # the spec ConfigMap, the RoleBinding after an edit
    requeue_after: float | None = None  # seconds until a pass is due without any event (the deadline, the TTL)

    def requeue(self, seconds: float | None) -> None:
        """Ask for a pass in `seconds` (the sooner request wins)."""
        if seconds is not None and (self.requeue_after is None or seconds < self.requeue_after):
            self.requeue_after = seconds


def child_key(obj: dict[str, Any]) -> str:
    """How observed children are keyed: workloads by name; the RBAC objects (which share one name) by kind too."""
    name = obj["metadata"]["name"]
    return name if obj["kind"] in ("ConfigMap", "Job", "JobSet") else f"{obj['kind']}:{name}"


def child_state(obj: dict[str, Any] | None) -> tuple[str, str]:
    """(missing|running|suspended|complete|failed, message) of a Job or a JobSet."""
    if obj is None:
        return "missing", ""
    conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", []) if c.get("status") == "True"}
    for kind in ("Complete", "Completed"):
        if kind in conditions:
            return "complete", conditions[kind].get("message", "")
    if "Failed" in conditions:
        cond = conditions["Failed"]
        message = f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
        cause = obj.get(CAUSE)
        return "failed", f"{message}; {cause}" if cause else message
    if obj.get("spec", {}).get("suspend"):
        return "suspended", ""
    return "running", ""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Conditions:
    """metav1 conditions by type; lastTransitionTime changes only when the status does."""

    def __init__(self, existing: list[dict[str, Any]], generation: int, now: str) -> None:
        self.by_type = {c["type"]: dict(c) for c in existing}
        self.generation, self.now = generation, now

    def true(self, kind: str) -> bool:
        return self.by_type.get(kind, {}).get("status") == "True"

    def set(self, kind: str, status: bool, reason: str, message: str = "") -> bool:
        """Set a condition; True when its status changed (an event is due)."""
        value = "True" if status else "False"
        old = self.by_type.get(kind)
        changed = old is None or old.get("status") != value
        self.by_type[kind] = {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message[:32768],
            "observedGeneration": self.generation,
            "lastTransitionTime": self.now if changed else old.get("lastTransitionTime", self.now),
        }
        return changed and status

    def finished(self) -> bool:
        """Complete or Failed: terminal, nothing is created any more."""
        return self.true(COMPLETE) or self.true(FAILED)

    def listed(self) -> list[dict[str, Any]]:
        return [self.by_type[k] for k in sorted(self.by_type)]


def reconcile(
    resource: ContinuedPretrain,
    children: dict[str, dict[str, Any]],
    status: dict[str, Any],
    generation: int,
    config: OperatorConfig,
    now: str | None = None,
    leftovers: Sequence[tuple[str, str]] = (),
) -> Decision:
    """The decision of one pass. `children` maps child keys to this run's observed objects; `leftovers` are
    (kind, name) of objects an earlier run of the same name left."""
    now = now or _now()
    spec = resource.spec
    conditions = Conditions(status.get("conditions", []), generation, now)
    decision = Decision()
    total_steps = (status.get("training") or {}).get("totalSteps")
    segments = segments_of(spec, status, conditions.true(TRAINED), now)
    gang_name = child_name(resource.metadata["name"], segment_suffix("train", segments.index))
    out: dict[str, Any] = {"observedGeneration": generation, "plan": _plan(spec, _admitted_gpu(children, gang_name))}
    if not status.get("startTime"):
        out["startTime"] = now

    def fail(reason: str, message: str) -> None:
        if conditions.set(FAILED, True, reason, message):
            decision.events.append(("Warning", reason, message))

    if conditions.true(TRAINED) and not conditions.true(FAILED):
        _finish_segment(segments, spec, conditions, children.get(gang_name), status)
        breach = _guardrail_stop_breach(spec, status)
        if segments.grows(spec, total_steps) and breach:  # "stop" forbids training past a breach
            fail("ForgettingBudgetExceeded", f"spec.data.tokenBudget grew to {spec.data.token_budget}, but {breach}")
        elif segments.grows(spec, total_steps):  # a grown budget: the run continues with a new segment
            try:
                _extend(segments, spec, total_steps, conditions, decision, out, status)
            except ValueError as error:
                fail("TooManySegments", str(error))
            gang_name = child_name(resource.metadata["name"], segment_suffix("train", segments.index))

    def stage(obj: dict[str, Any], condition: str | None, reason: str) -> str:
        """Create a missing child, and report its state (a failure fails the run)."""
        state, message = child_state(children.get(obj["metadata"]["name"]))
        if state == "missing":
            decision.create.append(obj)
        elif state == "failed":
            why = f"{obj['kind']} {obj['metadata']['name']} failed: {message}"
            if reason == "TrainingFailed" and _stopped_by_guardrail(spec.evaluation.guardrail, message):
                reason = "ForgettingBudgetExceeded"  # the trainer's breach exit; the verdict's push is missing
                conditions.set(FORGETTING, True, reason, why)
            fail(reason, why)
        elif state == "complete" and condition and conditions.set(condition, True, "Succeeded"):
            decision.events.append(("Normal", condition, f"{obj['kind']} {obj['metadata']['name']} completed"))
            observed = children[obj["metadata"]["name"]]
            stage_name = obj["metadata"]["labels"].get(STAGE_LABEL, obj["kind"])
            decision.completed.append((stage_name, _duration(observed, now)))
        return state

    working = any(o.get("kind") in ("Job", "JobSet") and child_state(o)[0] == "running" for o in children.values())
    running = not conditions.finished() and not spec.suspend and (working or not _waiting(children))
    out.update(_running_time(status, running, now))
    if not conditions.finished():
        left = _deadline(spec.run_policy.active_deadline_seconds, _ran(out, now), fail)
        decision.requeue(left if running else None)  # a pass at the deadline, even if no event comes
    if running and conditions.finished():  # (the deadline has just failed the run: its clock stops)
        out.update(_running_time(status, False, now))
    if not conditions.finished():
        _guardrail(spec, status, conditions, decision, fail)
    if not conditions.finished():  # (the deadline or the guardrail may have just failed the run)
        _suspend_children(spec.suspend, children, decision)
        if spec.suspend:
            conditions.set(SUSPENDED, True, "SuspendedBySpec", "spec.suspend is true: pods stopped, progress kept")
        elif conditions.true(SUSPENDED):
            conditions.set(SUSPENDED, False, "Resumed", "resumed from the latest checkpoint")
        _support_objects(resource, children, decision)
        evaluated = list(status.get("evaluatedExports") or [])
        pushed = list((status.get("training") or {}).get("exports") or [])
        _stages(resource, config, conditions, stage, pushed, evaluated, segments, total_steps)
        if spec.suspend and spec.scheduling.queue_name is not None:  # Kueue would admit a new workload at once
            decision.create = [obj for obj in decision.create if obj["kind"] not in ("Job", "JobSet")]
        if evaluated != list(status.get("evaluatedExports") or []):
            out["evaluatedExports"] = evaluated
        if conditions.true(REPORTED):
            conditions.set(COMPLETE, True, "Succeeded", "every stage completed")
            decision.events.append(("Normal", COMPLETE, "the run completed"))
    if conditions.finished():
        decision.create = []
        decision.set_suspend = []
        _stop_active(children, conditions.true(FAILED), decision)
        out.setdefault("completionTime", status.get("completionTime") or now)
        _expire(spec.run_policy.ttl_seconds_after_finished, out["completionTime"], now, children, decision)
    if conditions.true(TRAINED) and not conditions.true(FAILED):  # (just trained in this pass)
        _finish_segment(segments, spec, conditions, children.get(gang_name), status)
    if segments.entries != list(status.get("segments") or []):
        out["segments"] = segments.entries  # the operator's own list: no pod writes it
    gang = children.get(gang_name)
    if gang is not None:  # gang restarts, as the JobSet controller counts them (preemptions included)
        earlier = sum(int(entry.get("restarts") or 0) for entry in segments.entries[:-1])
        restarts = earlier + int(gang.get("status", {}).get("restarts", 0))
        if (status.get("training") or {}).get("restarts") != restarts:
            out["training"] = {"restarts": restarts}  # a merge patch: the trainer's fields stay
    blocked = sorted(  # pods that cannot start, Jobs that cannot create their pods
        f"{obj.get('what') or 'pod ' + obj['metadata']['name']}: {obj['problem']}"
        for obj in children.values()
        if obj.get("kind") == "Pod"
    )
    if not conditions.finished() and not spec.suspend and _starting(children):
        decision.requeue(STARTING_RECHECK)  # a Job's failed pod creation changes nothing a watch would see
    if blocked and not conditions.finished():
        message = "; ".join(blocked)
        if conditions.by_type.get(STALLED, {}).get("message") != message:
            decision.events.append(("Warning", "PodCannotStart", message))
    _queued(conditions, children, decision, active=not conditions.finished() and not spec.suspend)
    _summary_conditions(conditions, spec.suspend, blocked)
    out["conditions"] = conditions.listed()
    out["phase"] = str(phase(conditions))
    decision.status = out
    _replace_leftovers(leftovers, decision)
    return decision


SEGMENT_STAGES = (PREPROCESSED, DATA_READY, TRAINED, EVALUATED, REPORTED, COMPLETE)  # what a new segment runs again


def _finish_segment(
    segments: Segments,
    spec: ContinuedPretrainSpec,
    conditions: Conditions,
    gang: dict[str, Any] | None,
    status: dict[str, Any],
) -> None:
    """The current segment's training finished: record its end (steps, when, the gang's restarts)."""
    earlier = sum(int(entry.get("restarts") or 0) for entry in segments.entries[:-1])
    if gang is not None:
        restarts = int(gang.get("status", {}).get("restarts", 0))
    else:  # (a gang deleted since, by the TTL: its count is in the status)
        restarts = max(0, int((status.get("training") or {}).get("restarts") or 0) - earlier)
    when = conditions.by_type[TRAINED].get("lastTransitionTime") or conditions.now
    finish(segments, spec, (status.get("training") or {}).get("totalSteps"), when, restarts)


def _extend(
    segments: Segments,
    spec: ContinuedPretrainSpec,
    total_steps: int | None,
    conditions: Conditions,
    decision: Decision,
    out: dict[str, Any],
    status: dict[str, Any],
) -> None:
    """A grown budget continues a run whose training finished (Succeeded, or still evaluating or reporting): a new
    segment, and the stage conditions it runs again set back to False, so the phase and kstatus say it goes on."""
    message = extend(segments, spec, total_steps, conditions.now)
    for kind in SEGMENT_STAGES:
        if kind in conditions.by_type:
            conditions.set(kind, False, "BudgetExtended", message)
    decision.events.append(("Normal", "BudgetExtended", message))
    if status.get("completionTime"):
        out["completionTime"] = None  # a merge patch removes it; the run's end is yet to come


def _admitted_gpu(children: dict[str, dict[str, Any]], gang: str) -> tuple[str, str] | None:
    """(ResourceFlavor, GPU product) Kueue admitted the training child (`gang`) to; None before admission or without
    Kueue."""
    workload = _workloads_by_owner(children).get(gang)
    if workload is None or not workload.get("gpuProduct"):
        return None
    return workload["gpuFlavor"], workload["gpuProduct"]


def _plan(spec: ContinuedPretrainSpec, flavor: tuple[str, str] | None) -> dict[str, Any]:
    """status.plan from the spec (on the admitted flavor's GPU, if any); never fails the pass (an error, e.g. a
    malformed throughput table, is its note)."""
    try:
        return status_plan(spec, flavor=flavor)
    except Exception as error:  # the plan is advice: the run goes on without it
        return failed_plan(error)


STARTING_RECHECK = 10.0  # seconds between passes while a Job or JobSet runs without a pod


def _starting(children: dict[str, dict[str, Any]]) -> bool:
    """Does a running Job or JobSet have no active pod (just created, or its pods cannot be created)?"""
    for obj in children.values():
        if obj.get("kind") not in ("Job", "JobSet") or child_state(obj)[0] != "running":
            continue
        status = obj.get("status") or {}
        active = (
            status.get("active")
            if obj["kind"] == "Job"
            else sum(r.get("active", 0) for r in status.get("replicatedJobsStatus") or [])
        )
        if not active:
            return True
    return False


UPDATED = {"ConfigMap": ("data",), "RoleBinding": ("subjects",)}  # what a spec edit changes in place


def _support_objects(resource: ContinuedPretrain, children: dict[str, dict[str, Any]], decision: Decision) -> None:
    """The spec ConfigMap and the status writer (ServiceAccount, Role, RoleBinding): created when missing, and
    brought up to date after a spec edit (children created afterwards mount the new spec; the RoleBinding follows
    scheduling.serviceAccountName)."""
    for obj in (spec_configmap(resource), *status_writer(resource)):
        observed = children.get(child_key(obj))
        if observed is None:
            decision.create.append(obj)
        elif any(observed.get(key) != obj[key] for key in UPDATED.get(obj["kind"], ())):
            decision.update.append(obj)


def _workloads_by_owner(children: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The observed Kueue Workloads, by the name of the child that owns each."""
    return {obj["owner"]: obj for obj in children.values() if obj.get("kind") == "Workload"}


def _kueues(obj: dict[str, Any]) -> bool:
    """Is this child Kueue's (its own queue label, whatever the spec says now)?"""
    return QUEUE_LABEL in (obj.get("metadata") or {}).get("labels", {})


def _suspend_children(suspend: bool, children: dict[str, dict[str, Any]], decision: Decision) -> None:
    """spec.suspend for the unfinished children: their own `suspend` without Kueue; under Kueue, which owns that
    field, their Workloads' `active` (an inactive Workload is evicted: pods stop; active again, it is re-queued).
    Only a Workload the operator deactivated (its annotation says so) is activated again: one Kueue deactivated
    itself (waitForPodsReady's backoff limit, a maximum execution time) or an admin stopped stays stopped."""
    workloads = _workloads_by_owner(children)
    for name, obj in sorted(children.items()):
        if obj.get("kind") not in ("Job", "JobSet") or child_state(obj)[0] not in ("running", "suspended"):
            continue
        if not _kueues(obj):
            if bool(obj.get("spec", {}).get("suspend")) != suspend:
                decision.set_suspend.append((obj["kind"], name, suspend))
        elif (
            name in workloads
            and workloads[name].get("active", True) == suspend
            and (suspend or workloads[name].get("deactivatedByUs"))  # never undo Kueue's or an admin's own stop
        ):
            decision.set_workload_active.append((workloads[name]["metadata"]["name"], not suspend))


def _replace_leftovers(leftovers: Sequence[tuple[str, str]], decision: Decision) -> None:
    """Objects of an earlier run of the same name are deleted, never taken as this run's; a child that would
    take the name of one still there is created on a later pass, once it is gone."""
    if not leftovers:
        return
    decision.delete += list(leftovers)
    names = {(kind, name) for kind, name in leftovers}
    decision.create = [o for o in decision.create if (o["kind"], o["metadata"]["name"]) not in names]
    listed = ", ".join(f"{kind} {name}" for kind, name in leftovers)
    decision.events.append(("Normal", "Replacing", f"deleting {listed}: left by an earlier run of the same name"))
    decision.requeue(2.0)


def _stop_active(children: dict[str, dict[str, Any]], failed: bool, decision: Decision) -> None:
    """A finished run leaves no pod behind: its running Jobs and JobSet are suspended (under Kueue, their
    Workload is deactivated: Kueue would admit a Job suspended behind its back again) and kept for inspection
    until the TTL."""
    workloads = _workloads_by_owner(children)
    stopped = []
    for name, obj in sorted(children.items()):
        state = child_state(obj)[0] if obj.get("kind") in ("Job", "JobSet") else "other"
        if state not in ("running", "suspended"):
            continue
        workload = workloads.get(name)
        if _kueues(obj) and workload is not None:  # queued or admitted: Kueue must not (re)admit it
            if workload.get("active", True):
                decision.set_workload_active.append((workload["metadata"]["name"], False))
                stopped.append(f"{obj['kind']} {name}")
        elif state == "running":  # (a queued child whose Workload is not seen yet: stopped now, deactivated later)
            decision.set_suspend.append((obj["kind"], name, True))
            stopped.append(f"{obj['kind']} {name}")
    if stopped:
        why = "the run failed" if failed else "the run finished"
        decision.events.append(("Warning" if failed else "Normal", "Stopped", f"{', '.join(stopped)}: {why}"))


def _stages(
    resource: ContinuedPretrain,
    config: OperatorConfig,
    conditions: Conditions,
    stage: Any,
    pushed: list[str],
    evaluated: list[str],
    segments: Segments,
    total_steps: int | None,
) -> None:
    """Preprocess -> dedup -> train -> report, for the current segment (`segments.index`: its children's names).
    The baseline evaluation runs alongside from the start, and each milestone export is evaluated as soon as the
    trainer reports it (`pushed`), while training goes on (an earlier segment's too, while the next one is
    prepared); once it has finished, every export of the steps it trained (`Segments.trained_end`)."""
    spec = resource.spec
    index = segments.index
    wants_baseline = spec.evaluation.baseline and spec.model.uri is not None
    if wants_baseline and not conditions.true(BASELINE_EVALUATED):
        stage(evaluation_job(resource, config, "baseline"), BASELINE_EVALUATED, "BaselineEvaluationFailed")
    if not conditions.true(DATA_READY):
        if not conditions.true(PREPROCESSED):  # sticky: a TTL-deleted preprocess Job is not run again
            stage(stage_job(resource, Stage.PREPROCESS, config, segment=index), PREPROCESSED, "PreprocessFailed")
        if conditions.true(PREPROCESSED):
            stage(stage_job(resource, Stage.DEDUP, config, segment=index), DATA_READY, "DedupFailed")
    if conditions.true(DATA_READY) and not conditions.true(TRAINED):
        stage(training_jobset(resource, config, segment=index), TRAINED, "TrainingFailed")
    if not conditions.true(EVALUATED):
        trained = conditions.true(TRAINED)
        # and every export the trainer reported: a grown budget's old end (no longer a milestone) has one
        reached = segments.trained_end(total_steps) if trained else None
        expected = sorted({*milestone_exports(resource, reached), *pushed})
        due = expected if trained else [e for e in expected if e in pushed]
        for export in due:
            if export not in evaluated:  # sticky: a TTL-deleted evaluation Job is not run again
                job = evaluation_job(resource, config, export)
                if stage(job, None, "EvaluationFailed") == "complete":
                    evaluated.append(export)
        done = all(export in evaluated for export in expected)
        if conditions.true(TRAINED) and done and (conditions.true(BASELINE_EVALUATED) or not wants_baseline):
            conditions.set(EVALUATED, True, "Succeeded")
    if not conditions.true(EVALUATED) or segments.grows(spec, total_steps):  # (a grown budget: its segment reports)
        return
    if not conditions.true(REPORTED):
        stage(stage_job(resource, Stage.REPORT, config, segment=index), REPORTED, "ReportFailed")


def _guardrail(
    spec: ContinuedPretrainSpec, status: dict[str, Any], conditions: Conditions, decision: Decision, fail: Any
) -> None:
    """The forgetting guardrail's verdict, as the evaluation Jobs pushed it into status.evaluation.guardrail: over
    the budget, the ForgettingBudgetExceeded condition and a Warning Event (action warn), or the run fails with that
    reason and its gang is stopped in this same pass (action stop, while there is training left to stop: a breach
    at the final export, or seen once training completed, only warns, and the report still runs)."""
    guardrail = spec.evaluation.guardrail
    found = ((status.get("evaluation") or {}).get("guardrail")) or {}
    if guardrail is None or not found.get("breached"):
        return
    message = str(found.get("message") or "the forgetting budget is exceeded")
    trained = conditions.true(TRAINED) or int(found.get("breachedAt") or 0) >= spec.data.token_budget
    if guardrail.action == "stop" and not trained:
        conditions.set(FORGETTING, True, "ForgettingBudgetExceeded", message)
        fail("ForgettingBudgetExceeded", f"{message}; training stopped (evaluation.guardrail.action: stop)")
    elif conditions.set(FORGETTING, True, "ForgettingBudgetExceeded", message):
        how = "training goes on (action: warn)" if guardrail.action == "warn" else "training had already completed"
        decision.events.append(("Warning", "ForgettingBudgetExceeded", f"{message}; {how}"))


def _guardrail_stop_breach(spec: ContinuedPretrainSpec, status: dict[str, Any]) -> str | None:
    """Why a grown budget cannot continue the run: its guardrail, under action stop, was exceeded (None if not)."""
    guardrail = spec.evaluation.guardrail
    found = ((status.get("evaluation") or {}).get("guardrail")) or {}
    if guardrail is None or guardrail.action != "stop" or not found.get("breached"):
        return None
    message = str(found.get("message") or "the forgetting budget is exceeded")
    return f"{message}: the run is not continued (evaluation.guardrail.action: stop)"


def _stopped_by_guardrail(guardrail: Any, message: str) -> bool:
    """Did the gang fail with the trainer's breach exit (a guardrail under action stop)?"""
    return guardrail is not None and re.search(rf"\bexit code {EXIT_FORGETTING}\b", message) is not None


def _duration(obj: dict[str, Any], now: str) -> float:
    """Seconds from the child's creation to its completion (or now)."""
    created = obj.get("metadata", {}).get("creationTimestamp")
    ended = obj.get("status", {}).get("completionTime") or now
    if not created:
        return 0.0
    return max(0.0, (_parse(ended) - _parse(created)).total_seconds())


def _parse(text: str) -> datetime:
    """RFC 3339 as the API serves it ("Z") or as the Python client renders it ("+00:00")."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _expire(ttl: int | None, finished: str, now: str, children: dict[str, dict[str, Any]], decision: Decision) -> None:
    """runPolicy.ttlSecondsAfterFinished counts from the run's end, not each child's: the Jobs and the JobSet
    of a finished run are deleted once it elapsed (a child deleted while the run goes on could make its
    stage run again, the bug Trainer had with JobSet TTLs)."""
    if ttl is None:
        return
    left = ttl - (_parse(now) - _parse(finished)).total_seconds()
    workloads = [
        (obj["kind"], obj["metadata"]["name"]) for obj in children.values() if obj.get("kind") in ("Job", "JobSet")
    ]
    if left > 0:
        decision.requeue(left if workloads else None)
    else:
        decision.delete = workloads
        for kind, name in workloads:
            decision.events.append(("Normal", "Expired", f"{kind} {name} deleted (ttlSecondsAfterFinished)"))


def _running_time(status: dict[str, Any], running: bool, now: str) -> dict[str, Any]:
    """status.runningSeconds and runningSince: the time the run has been running, not queued in Kueue, not
    suspended, not finished (what activeDeadlineSeconds counts). A run from before these fields counts from
    its startTime."""
    since = status.get("runningSince")
    if since is None and "runningSeconds" not in status and status.get("startTime"):
        since = status["startTime"]
    seconds = int(status.get("runningSeconds") or 0)
    if running:
        return {"runningSeconds": seconds, "runningSince": since or now}
    if since is not None:
        seconds += max(0, round((_parse(now) - _parse(since)).total_seconds()))
    return {"runningSeconds": seconds, "runningSince": None}  # None: a merge patch removes the field


def _ran(out: dict[str, Any], now: str) -> float:
    """Seconds of running time so far."""
    since = out.get("runningSince")
    return out["runningSeconds"] + ((_parse(now) - _parse(since)).total_seconds() if since else 0.0)


def _deadline(seconds: int | None, ran: float, fail: Any) -> float | None:
    """Fail the run once it ran activeDeadlineSeconds; else the seconds left (None: no deadline)."""
    if seconds is None:
        return None
    left = seconds - ran
    if left <= 0:
        fail("DeadlineExceeded", f"the run ran longer than spec.runPolicy.activeDeadlineSeconds ({seconds}s)")
        return None
    return left


def _waiting(children: dict[str, Any]) -> list[dict[str, Any]]:
    """Kueue Workloads of unfinished children that wait for admission, by name."""
    return sorted(
        (
            obj
            for obj in children.values()
            if obj.get("kind") == "Workload"
            and not obj["admitted"]
            and obj.get("tried", True)
            and not obj["finished"]
            and obj.get("active", True)
            and child_state(children.get(obj["owner"]))[0] not in ("complete", "failed")
        ),
        key=lambda obj: obj["metadata"]["name"],
    )


def _queued(conditions: Conditions, children: dict[str, Any], decision: Decision, active: bool) -> None:
    """Queued while Kueue holds a workload of an unfinished child without admitting it; the message names it."""
    waiting = _waiting(children)
    if active and waiting:
        first = waiting[0]
        message = f"Workload {first['metadata']['name']} ({first['owner']}) waits for admission in {first['queue']}"
        if first["message"]:
            message += f": {first['message']}"
        if conditions.set(QUEUED, True, "WaitingForAdmission", message):
            decision.events.append(("Normal", "Queued", message))
    elif conditions.true(QUEUED):
        conditions.set(QUEUED, False, "Admitted", "Kueue admitted the run's workloads")


def _summary_conditions(conditions: Conditions, suspended: bool, blocked: list[str]) -> None:
    """kstatus: Ready when complete, Reconciling while work goes on, Stalled when it cannot go on (failed, or
    a pod that cannot start, e.g. a missing Secret: no retry loop, it goes on once the cause is fixed)."""
    if conditions.true(FAILED):
        message = conditions.by_type[FAILED]["message"]
        conditions.set(STALLED, True, conditions.by_type[FAILED]["reason"], message)
        conditions.set(RECONCILING, False, "Failed", message)
        conditions.set(READY, False, "Failed", message)
    elif conditions.true(COMPLETE):
        conditions.set(READY, True, "Succeeded", "every stage completed")
        conditions.set(RECONCILING, False, "Succeeded")
        conditions.set(STALLED, False, "Succeeded")
    else:
        current = phase(conditions)
        conditions.set(READY, False, str(current), f"the run is {str(current).lower()}")
        conditions.set(RECONCILING, not suspended, str(current), f"the run is {str(current).lower()}")
        if blocked:
            conditions.set(STALLED, True, "PodCannotStart", "; ".join(blocked))
        else:
            conditions.set(STALLED, False, str(current))


def phase(conditions: Conditions) -> Phase:
    """The display phase, from the conditions only."""
    if conditions.true(FAILED):
        return Phase.FAILED
    if conditions.true(COMPLETE):
        return Phase.SUCCEEDED
    if conditions.true(SUSPENDED):
        return Phase.SUSPENDED
    if conditions.true(QUEUED):
        return Phase.QUEUED
    for condition, current in (
        (DATA_READY, Phase.PREPROCESSING),
        (TRAINED, Phase.TRAINING),
        (EVALUATED, Phase.EVALUATING),
        (REPORTED, Phase.REPORTING),
    ):
        if not conditions.true(condition):
            return current
    return Phase.REPORTING
