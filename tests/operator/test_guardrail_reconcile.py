"""The operator acts on the forgetting guardrail's verdict that an evaluation Job pushed into status: under action
stop the run fails with reason ForgettingBudgetExceeded and its gang is stopped in that same pass; under warn a
condition and one Warning Event, and training goes on."""

from __future__ import annotations

from typing import Any

from tests.operator.test_reconcile import FIRST, running_gang

BREACH = {"breached": True, "breachedAt": 400_000_000, "message": "forgetting budget exceeded at 400000000 tokens"}


def guarded(action: str) -> Any:
    run = running_gang(
        evaluation={"guardrail": {"benchmarks": [{"task": "boolq", "maxDrop": "0.05"}], "action": action}}
    )
    run.status["training"] = {"exports": [FIRST]}
    run.step()  # the milestone's evaluation Job starts while training goes on
    return run


def warnings(decision: Any, reason: str) -> list[str]:
    return [message for kind, why, message in decision.events if (kind, why) == ("Warning", reason)]


def test_a_breach_under_stop_fails_the_run_and_stops_the_gang_in_one_pass() -> None:
    run = guarded("stop")
    run.status["evaluation"] = {"milestones": [], "guardrail": BREACH}
    decision = run.step()
    failed = next(c for c in run.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ForgettingBudgetExceeded" and BREACH["message"] in failed["message"]
    assert run.condition("ForgettingBudgetExceeded") == "True" and run.status["phase"] == "Failed"
    assert ("JobSet", "t-train", True) in decision.set_suspend and decision.create == []
    assert warnings(decision, "ForgettingBudgetExceeded") and warnings(decision, "Stopped")


def test_a_breach_under_warn_sets_the_condition_and_one_event_and_training_goes_on() -> None:
    run = guarded("warn")
    run.status["evaluation"] = {"milestones": [], "guardrail": BREACH}
    decision = run.step()
    assert run.condition("ForgettingBudgetExceeded") == "True" and run.condition("Failed") is None
    assert warnings(decision, "ForgettingBudgetExceeded") == [f"{BREACH['message']}; training goes on (action: warn)"]
    assert decision.set_suspend == [] and run.status["phase"] == "Training"
    assert warnings(run.step(), "ForgettingBudgetExceeded") == []  # said once


def test_within_budget_or_without_a_guardrail_nothing_happens() -> None:
    run = guarded("stop")
    run.status["evaluation"] = {"milestones": [], "guardrail": {"breached": False, "message": "within"}}
    run.step()
    assert run.condition("ForgettingBudgetExceeded") is None and run.condition("Failed") is None
    plain = running_gang()
    plain.status["evaluation"] = {"milestones": [], "guardrail": BREACH}
    plain.step()
    assert plain.condition("Failed") is None and plain.condition("ForgettingBudgetExceeded") is None


def test_a_gang_that_exits_6_before_any_verdict_reached_status_fails_for_the_guardrail() -> None:
    """The trainer's breach exit (code 6, permanent) tells the reason even when the verdict's push is missing."""
    from cpt_operator.kube import CAUSE

    run = guarded("stop")
    run.finish("t-train", "Failed", "jobset failed due to FailJob, first failed job: t-train-node-0")
    cause = "Container trainer for pod ns/t-train-node-0-0-x failed with exit code 6 matching FailJob rule at index 0"
    run.children["t-train"][CAUSE] = f"Job t-train-node-0: {cause}"
    decision = run.step()
    failed = next(c for c in run.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ForgettingBudgetExceeded" and "exit code 6" in failed["message"]
    assert run.condition("ForgettingBudgetExceeded") == "True" and warnings(decision, "ForgettingBudgetExceeded")


def test_a_breach_at_the_final_export_under_stop_warns_and_the_run_completes_with_its_report() -> None:
    """Training had nothing left to stop: the condition and one Warning Event, the report still runs."""
    from tests.operator.test_reconcile import LAST

    run = guarded("stop")
    run.status["training"] = {"exports": [FIRST, LAST], "totalSteps": 3125}
    final = {**BREACH, "breachedAt": 1_000_000_000, "message": "forgetting budget exceeded at 1000000000 tokens"}
    run.status["evaluation"] = {"milestones": [], "guardrail": final}  # pushed before the gang's completion is seen
    decision = run.step()
    assert run.condition("Failed") is None and run.condition("ForgettingBudgetExceeded") == "True"
    assert len(warnings(decision, "ForgettingBudgetExceeded")) == 1 and decision.set_suspend == []
    run.finish("t-train")
    run.step()
    for name in (f"t-eval-{FIRST}", f"t-eval-{LAST}"):
        run.finish(name)
    assert run.created(run.step()) == ["t-report"] and run.condition("Failed") is None
    run.finish("t-report")
    run.step()
    assert run.status["phase"] == "Succeeded" and run.condition("ForgettingBudgetExceeded") == "True"


def test_a_breach_seen_after_training_completed_under_stop_does_not_fail_the_trained_run() -> None:
    run = guarded("stop")
    run.finish("t-train")
    run.step()
    assert run.condition("Trained") == "True"
    run.status["evaluation"] = {"milestones": [], "guardrail": BREACH}  # a verdict that came after training ended
    decision = run.step()
    assert run.condition("Failed") is None and run.condition("ForgettingBudgetExceeded") == "True"
    assert warnings(decision, "ForgettingBudgetExceeded") == [f"{BREACH['message']}; training had already completed"]
