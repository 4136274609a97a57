"""One reconcile pass at a time: stage order, failures, sticky terminal states, suspend, kstatus conditions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from cpt import throughput
from cpt.api import ContinuedPretrain
from cpt_operator.config import OperatorConfig
from cpt_operator.reconcile import Decision, child_key, reconcile
from tests.cpt.test_spec import minimal

CONFIG = OperatorConfig()
FIRST, LAST = "tokens-0000400000000", "tokens-0001000000000"  # minimal(): a milestone at 400M, the budget 1B
NOW = "2026-12-02T12:00:00Z"


def resource(**spec: Any) -> ContinuedPretrain:
    doc = minimal()
    doc["spec"].update(spec)
    return ContinuedPretrain.model_validate(doc)


def finished(obj: dict[str, Any], kind: str = "Complete", message: str = "") -> dict[str, Any]:
    condition = "Completed" if obj["kind"] == "JobSet" and kind == "Complete" else kind
    return {**obj, "status": {"conditions": [{"type": condition, "status": "True", "reason": "R", "message": message}]}}


def merge_patch(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386: maps merge key by key, anything else replaces."""
    out = dict(current)
    for key, value in patch.items():
        out[key] = merge_patch(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


class Run:
    """A run driven pass by pass, with the created children kept as the 'cluster' state."""

    def __init__(self, run: ContinuedPretrain) -> None:
        self.run, self.children, self.status = run, {}, {}

    def step(self, now: str = NOW) -> Decision:
        decision = reconcile(self.run, self.children, self.status, 1, CONFIG, now)
        for obj in decision.create:
            self.children[child_key(obj)] = obj
        self.status = merge_patch(self.status, decision.status)  # as the API server applies the operator's patch
        return decision

    def created(self, decision: Decision) -> list[str]:
        return [obj["metadata"]["name"] for obj in decision.create]

    def finish(self, name: str, kind: str = "Complete", message: str = "") -> None:
        self.children[name] = finished(self.children[name], kind, message)

    def condition(self, kind: str) -> str | None:
        return next((c["status"] for c in self.status["conditions"] if c["type"] == kind), None)


def test_children_appear_in_stage_order_and_the_run_completes() -> None:
    run = Run(resource())
    assert run.created(run.step()) == ["t-spec", "t-status", "t-status", "t-status", "t-eval-baseline", "t-preprocess"]
    assert run.status["phase"] == "Preprocessing" and run.condition("Reconciling") == "True"
    assert run.created(run.step()) == []  # nothing new until a stage completes: no duplicates
    run.finish("t-preprocess")
    assert run.created(run.step()) == ["t-dedup"]
    run.finish("t-dedup")
    run.finish("t-eval-baseline")
    assert run.created(run.step()) == ["t-train"]
    assert run.condition("DataReady") == "True" and run.status["phase"] == "Training"
    run.status["training"] = {"exports": [FIRST]}  # the trainer pushed its first milestone export
    assert run.created(run.step()) == [f"t-eval-{FIRST}"] and run.status["phase"] == "Training"  # while it trains
    run.finish(f"t-eval-{FIRST}")
    run.finish("t-train")
    assert run.created(run.step()) == [f"t-eval-{LAST}"] and run.status["phase"] == "Evaluating"
    run.finish(f"t-eval-{LAST}")
    assert run.created(run.step()) == ["t-report"]
    run.finish("t-report")
    decision = run.step()
    assert run.status["phase"] == "Succeeded" and run.condition("Complete") == "True"
    assert run.condition("Ready") == "True" and run.condition("Reconciling") == "False"
    assert run.status["completionTime"] == NOW and ("Normal", "Complete", "the run completed") in decision.events


def test_the_first_pass_writes_the_plan_and_an_edit_before_the_start_updates_it() -> None:
    """status.plan (kubectl get cpt's Expected) is there from the first pass, before any pod runs, even suspended."""
    gpu = {"resources": {"limits": {"nvidia.com/gpu": 1}}}
    run = Run(resource(training=gpu, suspend=True))
    run.step()
    per_step = 1 * 80 * 2 * 2000  # minimal(): one process, the default micro-batch, accumulation and sequence
    steps = math.ceil(1_000_000_000 / per_step)
    seconds = steps * per_step / 12346  # the table's A100 figure (the paper's MobileLLM-125M at 2000: no scaling)
    plan = run.status["plan"]
    assert (plan["steps"], plan["tokensPerStep"], plan["gpu"]) == (steps, per_step, "A100-80GB")
    assert plan["expectedSeconds"] == round(seconds) and plan["expectedDuration"] == "22h29m (A100-80GB assumed)"
    assert run.step().status["plan"] == plan  # the same plan every pass: the handler sends no change
    run.run = resource(training=gpu, suspend=True, data={**minimal()["spec"]["data"], "tokenBudget": 2_000_000_000})
    run.step()
    assert run.status["plan"]["steps"] == math.ceil(2_000_000_000 / per_step)


def test_a_broken_throughput_table_puts_the_error_in_the_plan_and_the_pass_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """status.plan never fails a pass: a malformed cpt/throughput.yaml (a bench entry pasted wrong) is its note."""
    broken = tmp_path / "throughput.yaml"
    broken.write_text("gpus:\n  - name: A100-80GB\nfigures:\n  - gpu: A100-80GB\n    tokensPerSecond: [\n")
    monkeypatch.setattr(throughput, "TABLE", broken)
    throughput.load_table.cache_clear()  # (loaded once per process)
    request.addfinalizer(throughput.load_table.cache_clear)
    run = Run(resource(training={"resources": {"limits": {"nvidia.com/gpu": 1}}}))
    decision = run.step()
    plan = run.status["plan"]
    assert plan["expectedDuration"] is None and plan["note"].startswith("status.plan failed: ")
    assert "throughput.yaml" in plan["note"] and "\n" not in plan["note"]  # one line naming the file
    assert run.created(decision) and run.status["phase"] and run.condition("Reconciling") == "True"


def test_terminal_states_are_sticky_when_children_are_deleted() -> None:
    run = Run(resource())
    for _ in range(6):
        run.step()
        for name in list(run.children):
            if run.children[name]["kind"] in ("Job", "JobSet"):
                run.finish(name)
    assert run.condition("Complete") == "True"
    run.children = {}  # a TTL or a person deleted every child
    decision = run.step()
    assert decision.create == [] and run.condition("Complete") == "True"


def test_a_stage_failure_fails_the_run_with_the_cause_and_nothing_is_recreated() -> None:
    run = Run(resource())
    run.step()
    run.finish("t-preprocess", "Failed", "Container stage failed with exit code 4 matching FailJob rule at index 0")
    decision = run.step()
    assert run.status["phase"] == "Failed" and run.condition("Stalled") == "True"
    failed = next(c for c in run.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PreprocessFailed" and "exit code 4" in failed["message"]
    assert any(kind == "Warning" and reason == "PreprocessFailed" for kind, reason, _ in decision.events)
    del run.children["t-preprocess"]
    assert run.step().create == [] and run.condition("Failed") == "True"


def test_a_preprocess_job_deleted_by_its_ttl_is_not_run_again() -> None:
    run = Run(resource(runPolicy={"ttlSecondsAfterFinished": 0}))
    run.step()
    run.finish("t-preprocess")
    assert run.created(run.step()) == ["t-dedup"]
    del run.children["t-preprocess"]  # the TTL controller deleted it at once
    assert run.created(run.step()) == [] and run.condition("Preprocessed") == "True"


def test_a_finished_export_evaluation_deleted_by_its_ttl_is_not_run_again() -> None:
    run = Run(resource())
    run.step()
    for name in ("t-preprocess", "t-dedup", "t-eval-baseline"):
        run.finish(name)
        run.step()
    run.status["training"] = {"exports": [FIRST]}
    assert run.created(run.step()) == [f"t-eval-{FIRST}"]
    run.finish(f"t-eval-{FIRST}")
    run.step()
    assert run.status["evaluatedExports"] == [FIRST]
    del run.children[f"t-eval-{FIRST}"]  # its TTL
    assert run.created(run.step()) == []
    run.finish("t-train")
    assert run.created(run.step()) == [f"t-eval-{LAST}"]  # only the one not evaluated yet


def test_a_completed_stage_is_not_rerun_after_its_child_is_gone() -> None:
    run = Run(resource())
    run.step()
    run.finish("t-preprocess")
    run.step()
    run.finish("t-dedup")
    run.step()
    for name in ("t-preprocess", "t-dedup"):  # TTL-deleted
        del run.children[name]
    assert run.created(run.step()) == [] and run.condition("DataReady") == "True"


def test_suspend_and_resume_patch_the_running_children() -> None:
    run = Run(resource())
    run.step()
    run.run = resource(suspend=True)
    decision = run.step()
    assert sorted(decision.set_suspend) == [("Job", "t-eval-baseline", True), ("Job", "t-preprocess", True)]
    assert run.status["phase"] == "Suspended" and run.condition("Suspended") == "True"
    assert run.condition("Reconciling") == "False"
    for name in ("t-eval-baseline", "t-preprocess"):
        run.children[name]["spec"]["suspend"] = True
    run.run = resource()
    decision = run.step()
    assert sorted(decision.set_suspend) == [("Job", "t-eval-baseline", False), ("Job", "t-preprocess", False)]
    assert run.condition("Suspended") == "False" and run.status["phase"] == "Preprocessing"


def test_with_kueue_the_operator_never_touches_suspend() -> None:
    run = Run(resource(scheduling={"queueName": "gpu"}, suspend=True))
    run.step()
    assert all(obj["spec"]["suspend"] for obj in run.children.values() if obj["kind"] == "Job")
    run.run = resource(scheduling={"queueName": "gpu"})
    assert run.step().set_suspend == []


def test_the_deadline_fails_the_run() -> None:
    run = Run(resource(runPolicy={"activeDeadlineSeconds": 60}))
    run.step(now="2026-12-02T12:00:00Z")
    assert run.step(now="2026-12-02T12:00:59Z").requeue_after == 1.0  # a pass is due at the deadline
    assert run.condition("Failed") is None
    run.step(now="2026-12-02T12:01:01Z")
    failed = next(c for c in run.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds (60s)" in failed["message"]


def test_condition_times_change_only_with_their_status() -> None:
    run = Run(resource())
    run.step(now="2026-12-02T12:00:00Z")
    run.step(now="2026-12-02T12:05:00Z")
    ready = next(c for c in run.status["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-12-02T12:00:00Z" and ready["observedGeneration"] == 1


def test_stage_durations_are_read_in_both_time_formats() -> None:
    from cpt_operator.reconcile import _duration

    job = {"metadata": {"creationTimestamp": "2026-12-02T12:00:00Z"}, "status": {}}
    assert _duration({**job, "status": {"completionTime": "2026-12-02T12:01:30+00:00"}}, NOW) == 90.0
    assert _duration(job, "2026-12-02T12:00:10Z") == 10.0  # a JobSet has no completionTime: until now


def test_children_are_deleted_ttl_seconds_after_the_run_finished() -> None:
    run = Run(resource(runPolicy={"ttlSecondsAfterFinished": 600}))
    for _ in range(8):
        run.step(now="2026-12-02T12:00:00Z")
        for name, obj in run.children.items():
            if obj["kind"] in ("Job", "JobSet") and "status" not in obj:
                run.finish(name)
    assert run.condition("Complete") == "True" and run.status["completionTime"] == "2026-12-02T12:00:00Z"
    waiting = run.step(now="2026-12-02T12:09:00Z")
    assert waiting.delete == [] and waiting.requeue_after == 60.0
    due = run.step(now="2026-12-02T12:10:00Z")
    assert sorted(due.delete) == sorted(
        (obj["kind"], obj["metadata"]["name"]) for obj in run.children.values() if obj["kind"] in ("Job", "JobSet")
    )
    assert len(due.delete) == 7 and due.create == []


def test_a_pod_that_cannot_start_stalls_the_run_until_the_cause_is_fixed() -> None:
    run = Run(resource(storage={"uri": "s3://runs/t", "credentialsSecret": {"name": "creds"}}))
    run.step()
    problem = 'CreateContainerConfigError: secret "creds" not found'
    run.children["Pod:t-preprocess-0-abcde"] = {
        "kind": "Pod",
        "metadata": {"name": "t-preprocess-0-abcde"},
        "problem": problem,
    }
    decision = run.step()
    stalled = next(c for c in run.status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "PodCannotStart")
    assert stalled["message"] == f"pod t-preprocess-0-abcde: {problem}"
    assert ("Warning", "PodCannotStart", stalled["message"]) in decision.events
    assert run.condition("Failed") is None and run.status["phase"] == "Preprocessing"  # no failure, no retry loop
    assert ("Warning", "PodCannotStart", stalled["message"]) not in run.step().events  # told once
    del run.children["Pod:t-preprocess-0-abcde"]  # the Secret was created: the pod started
    run.step()
    assert run.condition("Stalled") == "False"


def workload(owner: str, admitted: bool, message: str = "", finished: bool = False) -> dict[str, Any]:
    """A Workload as Kube.children summarizes it (kube.workload_summary)."""
    return {
        "kind": "Workload",
        "metadata": {"name": f"jobset-{owner}-1a2b3"},
        "owner": owner,
        "queue": "gpu",
        "admitted": admitted,
        "tried": True,
        "finished": finished,
        "active": True,
        "message": message,
    }


def test_a_gang_kueue_has_not_admitted_is_queued_with_its_workload_named() -> None:
    run = running_gang(scheduling={"queueName": "gpu"})
    pending = "couldn't assign flavors to pod set node: insufficient quota for nvidia.com/gpu in flavor default"
    run.children["Workload:jobset-t-train-1a2b3"] = workload("t-train", admitted=False, message=pending)
    decision = run.step()
    assert run.condition("Queued") == "True" and run.status["phase"] == "Queued"
    queued = next(c for c in run.status["conditions"] if c["type"] == "Queued")
    assert "jobset-t-train-1a2b3" in queued["message"] and pending in queued["message"]
    assert ("Normal", "Queued", queued["message"]) in decision.events
    assert run.step().events == []  # said once
    run.children["Workload:jobset-t-train-1a2b3"] = workload("t-train", admitted=True)
    run.step()
    assert run.condition("Queued") == "False" and run.status["phase"] == "Training"


def test_a_finished_childs_workload_never_queues_the_run() -> None:
    run = Run(resource(scheduling={"queueName": "gpu"}))
    run.step()
    run.finish("t-preprocess")
    run.children["Workload:job-t-preprocess-1a2b3"] = workload("t-preprocess", admitted=False, finished=True)
    run.step()
    assert run.condition("Queued") in (None, "False")


def test_workload_summary_reads_kueues_conditions() -> None:
    from cpt_operator.kube import workload_summary

    pending = {
        "metadata": {"name": "jobset-t-train-1a2b3"},
        "spec": {"queueName": "gpu"},
        "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "message": "insufficient quota"}]},
    }
    assert workload_summary(pending, "t-train") == {
        "kind": "Workload",
        "metadata": {"name": "jobset-t-train-1a2b3"},
        "owner": "t-train",
        "queue": "gpu",
        "admitted": False,
        "tried": True,
        "finished": False,
        "active": True,
        "deactivatedByUs": False,
        "message": "insufficient quota",
        "gpuFlavor": None,
        "gpuProduct": None,
    }
    admitted = {**pending, "status": {"conditions": [{"type": "Admitted", "status": "True"}]}}
    assert workload_summary(admitted, "t-train")["admitted"] is True


def running_gang(**spec: Any) -> Run:
    """A run in training: preprocess, dedup and the baseline done, the JobSet created and running."""
    run = Run(resource(**spec))
    run.step()
    for name in ("t-preprocess", "t-eval-baseline"):
        run.finish(name)
    run.step()
    run.finish("t-dedup")
    run.step()
    assert "t-train" in run.children and run.status["phase"] == "Training"
    return run


def test_a_failed_run_stops_its_running_children_and_says_so() -> None:
    run = running_gang(runPolicy={"activeDeadlineSeconds": 60})
    run.status["training"] = {"exports": [FIRST]}
    run.step()  # the first milestone's evaluation Job starts while training goes on
    decision = run.step(now="2026-12-02T12:01:01Z")  # past the deadline
    assert run.condition("Failed") == "True"
    assert sorted(decision.set_suspend) == [("Job", f"t-eval-{FIRST}", True), ("JobSet", "t-train", True)]
    stopped = [m for kind, reason, m in decision.events if (kind, reason) == ("Warning", "Stopped")]
    assert stopped == [f"Job t-eval-{FIRST}, JobSet t-train: the run failed"]
    assert decision.delete == [] and "t-train" in run.children  # kept for inspection until the TTL
    for name in (f"t-eval-{FIRST}", "t-train"):
        run.children[name]["spec"]["suspend"] = True
    assert run.step(now="2026-12-02T12:01:05Z").set_suspend == []  # stopped once


def test_under_kueue_a_failed_run_deactivates_the_workloads_of_its_running_children() -> None:
    run = running_gang(scheduling={"queueName": "gpu"})
    run.children["t-train"]["spec"]["suspend"] = False  # Kueue admitted it
    run.children["Workload:jobset-t-train-1a2b3"] = {**workload("t-train", admitted=True), "active": True}
    run.finish("t-dedup", "Complete")
    run.run = resource(scheduling={"queueName": "gpu"}, runPolicy={"activeDeadlineSeconds": 1})
    decision = run.step(now="2026-12-02T12:00:05Z")
    assert run.condition("Failed") == "True"
    assert decision.set_workload_active == [("jobset-t-train-1a2b3", False)] and decision.set_suspend == []


def test_the_deadline_counts_running_time_not_suspended_or_queued_time() -> None:
    run = Run(resource(suspend=True, runPolicy={"activeDeadlineSeconds": 60}))
    run.step(now="2026-12-02T12:00:00Z")
    assert run.step(now="2026-12-02T13:00:00Z").requeue_after is None  # suspended an hour: no deadline pass
    assert run.condition("Failed") is None and run.status["runningSeconds"] == 0
    run.run = resource(runPolicy={"activeDeadlineSeconds": 60})
    decision = run.step(now="2026-12-02T13:00:00Z")
    assert decision.requeue_after == 60.0 and run.status["runningSince"] == "2026-12-02T13:00:00Z"
    run.run = resource(suspend=True, runPolicy={"activeDeadlineSeconds": 60})
    run.step(now="2026-12-02T13:00:40Z")  # suspended after 40 s of running
    assert run.status["runningSeconds"] == 40 and run.status["runningSince"] is None
    run.run = resource(runPolicy={"activeDeadlineSeconds": 60})
    assert run.step(now="2026-12-02T14:00:00Z").requeue_after == 20.0
    run.step(now="2026-12-02T14:00:21Z")
    failed = next(c for c in run.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded" and run.status["runningSeconds"] == 61


def test_time_queued_in_kueue_does_not_count_towards_the_deadline() -> None:
    run = running_gang(scheduling={"queueName": "gpu"}, runPolicy={"activeDeadlineSeconds": 60})
    run.children["Workload:jobset-t-train-1a2b3"] = workload("t-train", admitted=False, message="no quota")
    run.step(now="2026-12-02T12:00:10Z")
    assert run.status["phase"] == "Queued" and run.status["runningSeconds"] == 10
    run.step(now="2026-12-02T15:00:00Z")  # three hours in the queue
    assert run.condition("Failed") is None and run.status["runningSeconds"] == 10


def test_leftovers_of_an_earlier_run_are_deleted_and_never_taken_as_this_runs() -> None:
    run = Run(resource())
    leftovers = [("ConfigMap", "t-spec"), ("Job", "t-preprocess")]
    decision = reconcile(run.run, {}, {}, 1, CONFIG, NOW, leftovers=leftovers)
    assert decision.delete == leftovers and decision.requeue_after == 2.0
    created = [obj["metadata"]["name"] for obj in decision.create]
    assert "t-spec" not in created and "t-preprocess" not in created and "t-eval-baseline" in created
    assert decision.status["phase"] == "Preprocessing"
    assert any(reason == "Replacing" and "Job t-preprocess" in message for _, reason, message in decision.events)


def test_under_kueue_suspend_deactivates_the_workloads_and_creates_no_new_workload() -> None:
    run = running_gang(scheduling={"queueName": "gpu"})
    run.children["t-train"]["spec"]["suspend"] = False  # Kueue admitted it
    run.children["Workload:jobset-t-train-1a2b3"] = {**workload("t-train", admitted=True), "active": True}
    run.run = resource(scheduling={"queueName": "gpu"}, suspend=True)
    run.status["training"] = {"exports": [FIRST]}  # a milestone export is due for evaluation
    decision = run.step()
    assert decision.set_workload_active == [("jobset-t-train-1a2b3", False)] and decision.set_suspend == []
    assert decision.create == [] and run.status["phase"] == "Suspended"  # no new Job for Kueue to admit
    run.children["Workload:jobset-t-train-1a2b3"].update(active=False, deactivatedByUs=True)
    run.children["t-train"]["spec"]["suspend"] = True  # Kueue evicted it
    assert run.step().set_workload_active == []
    run.run = resource(scheduling={"queueName": "gpu"})
    decision = run.step()
    assert decision.set_workload_active == [("jobset-t-train-1a2b3", True)]
    assert [obj["metadata"]["name"] for obj in decision.create] == [f"t-eval-{FIRST}"]


def test_a_workload_kueue_or_an_admin_deactivated_is_never_activated_again() -> None:
    run = running_gang(scheduling={"queueName": "gpu"})
    run.children["t-train"]["spec"]["suspend"] = True  # evicted
    stopped = {**workload("t-train", admitted=False), "active": False}  # Kueue's backoff limit, or kueuectl stop
    run.children["Workload:jobset-t-train-1a2b3"] = stopped
    assert run.step().set_workload_active == []
    run.children["Workload:jobset-t-train-1a2b3"] = {**stopped, "deactivatedByUs": True}  # the run's own suspend
    assert run.step().set_workload_active == [("jobset-t-train-1a2b3", True)]


def test_workload_summary_knows_the_operators_own_deactivation() -> None:
    from cpt_operator.kube import workload_summary

    ours = {
        "metadata": {"name": "w", "annotations": {"cpt.kubecpt.dev/deactivated": "true"}},
        "spec": {"active": False},
    }
    assert workload_summary(ours, "t-train")["deactivatedByUs"] is True
    theirs = {"metadata": {"name": "w"}, "spec": {"active": False}}
    assert workload_summary(theirs, "t-train")["deactivatedByUs"] is False


def test_a_spec_edit_updates_the_spec_configmap_and_the_rolebinding_follows_the_service_account() -> None:
    run = Run(resource())
    run.step()
    assert run.step().update == []
    run.run = resource(runPolicy={"backoffLimit": 7}, scheduling={"serviceAccountName": "trainer"})
    decision = run.step()
    updated = {obj["kind"]: obj for obj in decision.update}
    assert sorted(updated) == ["ConfigMap", "RoleBinding"]
    assert '"backoffLimit": 7' in updated["ConfigMap"]["data"]["spec.json"]
    assert updated["RoleBinding"]["subjects"][0]["name"] == "trainer"
    assert decision.create == []


def test_a_workload_kueue_has_not_tried_yet_does_not_queue_the_run() -> None:
    run = running_gang(scheduling={"queueName": "gpu"})
    run.children["Workload:jobset-t-train-1a2b3"] = {**workload("t-train", admitted=False), "tried": False}
    run.step()
    assert run.condition("Queued") in (None, "False") and run.status["phase"] == "Training"


def test_the_clock_runs_while_the_gang_trains_even_if_an_evaluation_waits_in_the_queue() -> None:
    run = running_gang(scheduling={"queueName": "gpu"}, runPolicy={"activeDeadlineSeconds": 60})
    run.children["t-train"]["spec"]["suspend"] = False  # admitted, training
    run.children["Workload:job-t-eval-x-1a2b3"] = workload("t-eval-x", admitted=False, message="no GPU left")
    run.children["t-eval-x"] = {"kind": "Job", "metadata": {"name": "t-eval-x"}, "spec": {"suspend": True}}
    run.step(now="2026-12-02T12:00:30Z")
    run.step(now="2026-12-02T12:01:01Z")
    assert run.condition("Failed") == "True"  # the deadline fired although a Workload waits


def test_a_failed_runs_queued_child_has_its_workload_deactivated_even_before_admission() -> None:
    run = running_gang(scheduling={"queueName": "gpu"}, runPolicy={"activeDeadlineSeconds": 1})
    run.children["Workload:jobset-t-train-1a2b3"] = workload("t-train", admitted=False, message="no quota")
    decision = run.step(now="2026-12-02T12:00:05Z")  # t-train is still suspended, waiting for Kueue
    assert run.condition("Failed") == "True"
    assert decision.set_workload_active == [("jobset-t-train-1a2b3", False)] and decision.set_suspend == []


def test_only_the_operators_objects_of_an_earlier_run_are_leftovers() -> None:
    from cpt_operator.ownership import is_leftover

    def obj(labels: dict[str, str], owners: list[dict[str, Any]]) -> dict[str, Any]:
        return {"metadata": {"name": "t-spec", "labels": labels, "ownerReferences": owners}}

    ours = {"app.kubernetes.io/managed-by": "kubecpt-operator", "cpt.kubecpt.dev/run": "t"}
    old = {"kind": "ContinuedPretrain", "uid": "old", "controller": True}
    assert is_leftover(obj(ours, []), "new") and is_leftover(obj(ours, [old]), "new")
    assert not is_leftover(obj(ours, [{**old, "uid": "new"}]), "new")  # this run's own
    assert not is_leftover(obj({"cpt.kubecpt.dev/run": "t"}, []), "new")  # a user's object with the label
    assert not is_leftover(obj(ours, [{"kind": "JobSet", "uid": "x", "controller": True}]), "new")


H100 = "NVIDIA-H100-80GB-HBM3"


def test_the_plan_follows_the_gpu_of_the_flavor_kueue_admitted_the_training_to() -> None:
    """On Kueue the GPU comes from the admitted ResourceFlavor's node labels, not the spec: once the training's
    Workload is admitted to an H100 flavor, status.plan is re-planned on H100s and no longer says 'assumed'."""
    run = running_gang(scheduling={"queueName": "gpu"}, training={"resources": {"limits": {"nvidia.com/gpu": 1}}})
    run.children["Workload:jobset-t-train-1a2b3"] = workload("t-train", admitted=False)
    run.step()
    assumed = run.status["plan"]
    assert assumed["gpu"] == "A100-80GB" and assumed["expectedDuration"].endswith("(A100-80GB assumed)")
    other = {**workload("t-eval-0", admitted=True), "gpuFlavor": "l4", "gpuProduct": "NVIDIA-L4"}
    run.children["Workload:job-t-eval-0-1a2b3"] = other  # an evaluation's flavor does not plan the training
    run.children["Workload:jobset-t-train-1a2b3"] = {
        **workload("t-train", admitted=True),
        "gpuFlavor": "h100",
        "gpuProduct": H100,
    }
    run.step()
    plan = run.status["plan"]
    assert plan["gpu"] == "H100-80GB" and plan["gpuFrom"] == f"Kueue ResourceFlavor h100: nvidia.com/gpu.product {H100}"
    assert "assumed" not in plan["expectedDuration"] and plan["expectedSeconds"] < assumed["expectedSeconds"]
    run.children["Workload:jobset-t-train-1a2b3"] = {
        **workload("t-train", admitted=True),
        "gpuFlavor": "l4",
        "gpuProduct": "NVIDIA-L4",
    }
    run.step()
    plan = run.status["plan"]
    assert plan["gpu"] is None and plan["expectedDuration"] is None
    assert (
        plan["note"]
        == "Kueue ResourceFlavor l4: nvidia.com/gpu.product NVIDIA-L4 is no GPU type of the throughput table"
    )


def test_the_cache_keeps_the_admitted_flavors_and_the_summary_names_the_gpu_flavor() -> None:
    """cache.cpt_workloads keeps status.admission's flavors, cache.cpt_resourceflavors each flavor's GPU product
    label, and workload_summary joins them: the flavor of nvidia.com/gpu first."""
    from cpt_operator.cache import cpt_resourceflavors, cpt_workloads
    from cpt_operator.kube import workload_summary

    flavors = {}
    for name, labels in (("default", {}), ("h100", {"nvidia.com/gpu.product": H100, "zone": "a"})):
        flavors.update(
            cpt_resourceflavors(name=name, body={"metadata": {"name": name}, "spec": {"nodeLabels": labels}})
        )
    assert flavors == {"h100": H100}
    body = {
        "metadata": {"name": "jobset-t-train-1a2b3", "ownerReferences": [{"uid": "u1", "controller": True}]},
        "spec": {"queueName": "gpu"},
        "status": {
            "conditions": [{"type": "Admitted", "status": "True"}],
            "admission": {
                "clusterQueue": "cq",
                "podSetAssignments": [
                    {"name": "node", "flavors": {"cpu": "default", "nvidia.com/gpu": "h100"}, "count": 1}
                ],
            },
        },
    }
    ((key, kept),) = cpt_workloads(namespace="ns", body=body).items()
    assert key == ("ns", "u1")
    summary = workload_summary(kept, "t-train", flavors)
    assert (summary["admitted"], summary["gpuFlavor"], summary["gpuProduct"]) == (True, "h100", H100)
    assert workload_summary(kept, "t-train")["gpuProduct"] is None  # no flavor seen (yet): the spec plans


def test_without_the_resource_flavor_index_the_cache_knows_no_flavor() -> None:
    """Without the permission to read ResourceFlavors the operator registers no cpt_resourceflavors index
    (cache.register_resource_flavors): kopf hands the handlers the other indices, and no flavor names a GPU."""
    from cpt_operator.cache import CHILD_INDICES, OWNER_INDICES, Cache

    cache = Cache()
    cache.bind({name: {} for name in (*CHILD_INDICES, *OWNER_INDICES, "cpt_runs", "cpt_pods", "cpt_workloads")})
    assert cache.ready
    assert cache.flavor_products() == {}


def test_an_api_server_that_does_not_answer_at_start_skips_the_flavor_watch_instead_of_crashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The access review before kopf starts goes to an API server that refuses connections (a control-plane
    upgrade): asked ASK_ATTEMPTS times with backoff, then one warning and no index; the operator starts."""
    import socket

    import yaml

    from cpt_operator.cache import ASK_ATTEMPTS, register_resource_flavors
    from cpt_operator.kube import Kube

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    cluster = {"server": f"http://127.0.0.1:{port}"}
    config = {"clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "u", "user": {"token": "t"}}]}
    config |= {"contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}], "current-context": "c"}
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    from kubernetes.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    pauses: list[float] = []
    assert register_resource_flavors(Kube.connect(), pause=pauses.append) is False
    assert pauses == [2.0**n for n in range(ASK_ATTEMPTS - 1)]
    warnings = [r.getMessage() for r in caplog.records if "cannot read Kueue ResourceFlavors" in r.getMessage()]
    assert len(warnings) == 1 and "could not ask whether it may" in warnings[0], warnings
