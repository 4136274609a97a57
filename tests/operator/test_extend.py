"""A grown spec.data.tokenBudget continues a run (docs/operator.md, "Extending a run"), pass by pass: a new segment
with children of its own, nothing already trained or evaluated redone, status.segments kept."""

from __future__ import annotations

from typing import Any

from cpt.api import ContinuedPretrain
from tests.cpt.test_spec import minimal
from tests.operator.test_reconcile import FIRST, LAST, Run

STEP = 320_000  # minimal(): tokens per optimizer step (1 process x 80 x 2 x 2000)
GROWN, GROWN_END = "tokens-0001500000000", "tokens-0002000000000"  # a milestone above the old budget, the new one
LATER = "2026-12-02T13:00:00Z"


def grown(budget: int = 2_000_000_000, milestones: tuple[int, ...] = (400_000_000, 1_500_000_000)) -> ContinuedPretrain:
    """minimal() after the edit the API server allows once the run has started."""
    doc = minimal()
    doc["spec"]["data"].update(tokenBudget=budget, milestones=list(milestones))
    return ContinuedPretrain.model_validate(doc)


def succeeded() -> Run:
    """minimal() run to Succeeded, its gang restarted twice on the way."""
    run = Run(ContinuedPretrain.model_validate(minimal()))
    for _ in range(8):
        run.step()
        for name, child in list(run.children.items()):
            if child["kind"] in ("Job", "JobSet") and "status" not in child:
                run.finish(name)
                if child["kind"] == "JobSet":
                    run.children[name]["status"]["restarts"] = 2
    assert run.status["phase"] == "Succeeded"
    return run


def condition(run: Run, kind: str) -> dict[str, Any]:
    return next(c for c in run.status["conditions"] if c["type"] == kind)


def test_a_succeeded_run_whose_budget_grew_trains_a_new_segment_and_redoes_nothing() -> None:
    run = succeeded()
    old = dict(run.children)
    run.run = grown()
    decision = run.step(now=LATER)
    assert run.created(decision) == ["t-preprocess-segment-01"]  # old Succeeded Job t-preprocess does not block it
    assert [obj["metadata"]["name"] for obj in decision.update] == ["t-spec"]  # mounted with the grown spec
    assert run.status["phase"] == "Preprocessing" and run.status["completionTime"] is None
    assert (condition(run, "Complete")["status"], condition(run, "Complete")["reason"]) == ("False", "BudgetExtended")
    assert condition(run, "Ready")["status"] == "False" and condition(run, "Reconciling")["status"] == "True"
    assert condition(run, "BaselineEvaluated")["status"] == "True"  # the base model is not evaluated again
    (extended,) = [e for e in decision.events if e[1] == "BudgetExtended"]
    assert extended[0] == "Normal" and "from 1000000000 to 2000000000 tokens" in extended[2]
    first, second = run.status["segments"]
    assert first == {
        "tokenBudget": 1_000_000_000,
        "startStep": 0,
        "endStep": 3125,
        "startTime": "2026-12-02T12:00:00Z",
        "completionTime": "2026-12-02T12:00:00Z",
        "restarts": 2,
    }
    assert second == {"tokenBudget": 2_000_000_000, "startStep": 3125, "endStep": 6250, "startTime": LATER}

    run.finish("t-preprocess-segment-01")
    assert run.created(run.step(now=LATER)) == ["t-dedup-segment-01"]
    run.finish("t-dedup-segment-01")
    decision = run.step(now=LATER)
    assert run.created(decision) == ["t-train-segment-01"] and run.status["phase"] == "Training"
    gang = decision.create[0]
    host = gang["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "PET_RUN_ID", "value": "t-train-segment-01"} in host  # its own rendezvous
    run.children["t-train-segment-01"]["status"] = {"restarts": 1}  # its own count: 2 + 1 for the run
    run.status["training"] = {"exports": [GROWN], "totalSteps": 6250}
    decision = run.step(now=LATER)
    assert run.created(decision) == [f"t-eval-{GROWN}"] and run.status["training"]["restarts"] == 3
    run.finish(f"t-eval-{GROWN}")
    run.finish("t-train-segment-01")
    run.children["t-train-segment-01"]["status"]["restarts"] = 1
    assert run.created(run.step(now=LATER)) == [f"t-eval-{GROWN_END}"]  # 400M and 1B were evaluated before
    run.finish(f"t-eval-{GROWN_END}")
    assert run.created(run.step(now=LATER)) == ["t-report-segment-01"]
    run.finish("t-report-segment-01")
    run.step(now="2026-12-02T14:00:00Z")
    assert run.status["phase"] == "Succeeded" and run.status["completionTime"] == "2026-12-02T14:00:00Z"
    assert run.status["evaluatedExports"] == [FIRST, LAST, GROWN, GROWN_END]
    assert run.status["segments"][1]["completionTime"] == LATER and run.status["segments"][1]["restarts"] == 1
    assert all(run.children[name] == child for name, child in old.items())  # the old children untouched
    assert run.created(run.step()) == []  # and nothing more: the budget did not grow again


def test_a_budget_grown_while_training_ran_starts_the_next_segment_once_the_training_finished() -> None:
    """The trainer stops at the budget its data was prepared for (1B: 3125 steps); once it finished, its exports
    are evaluated and the new segment starts, without a report of the old budget."""
    run = Run(ContinuedPretrain.model_validate(minimal()))
    run.step()
    for name in ("t-preprocess", "t-dedup", "t-eval-baseline"):
        run.finish(name)
        run.step()
    run.run = grown()
    assert run.created(run.step()) == [] and len(run.status["segments"]) == 1  # training goes on
    run.status["training"] = {"exports": [FIRST, LAST], "totalSteps": 3125}
    run.finish("t-train")
    assert run.created(run.step()) == [f"t-eval-{FIRST}", f"t-eval-{LAST}"]  # no Job for 1.5B and 2B
    decision = run.step()
    assert run.created(decision) == ["t-preprocess-segment-01"] and run.status["phase"] == "Preprocessing"
    run.finish(f"t-eval-{FIRST}")
    run.finish(f"t-eval-{LAST}")
    assert run.created(run.step()) == [] and run.status["evaluatedExports"] == [FIRST, LAST]  # evaluated meanwhile
    assert [s["endStep"] for s in run.status["segments"]] == [3125, 6250]


def test_a_run_whose_budget_did_not_grow_or_that_failed_does_not_continue() -> None:
    run = succeeded()
    run.run = ContinuedPretrain.model_validate(
        {**minimal(), "spec": {**minimal()["spec"], "runPolicy": {"backoffLimit": 5}}}
    )
    assert run.created(run.step()) == [] and run.status["phase"] == "Succeeded"  # another edit: nothing to train
    failed = Run(ContinuedPretrain.model_validate(minimal()))
    failed.step()
    failed.finish("t-preprocess", "Failed", "exit code 4")
    failed.step()
    failed.run = grown()
    assert failed.created(failed.step()) == [] and failed.status["phase"] == "Failed"


def test_a_run_trained_before_segments_were_kept_continues_from_the_steps_it_reported() -> None:
    """A Succeeded run without status.segments, whose budget grew under an operator that did not continue it."""
    run = succeeded()
    run.status.pop("segments")
    run.status["training"] = {"totalSteps": 3125, "restarts": 2}
    run.run = grown()
    assert run.created(run.step()) == ["t-preprocess-segment-01"]
    first, second = run.status["segments"]
    assert (first["tokenBudget"], first["endStep"], first["restarts"]) == (3125 * STEP, 3125, 2)
    assert (second["startStep"], second["endStep"]) == (3125, 6250)


def test_a_run_whose_guardrail_stopped_it_is_not_continued_by_a_grown_budget() -> None:
    """Under evaluation.guardrail.action stop, training past a breach is what the guardrail forbids: the grown budget
    fails the run with that reason (one Warning event) and nothing is created; under warn the run continues."""
    for action in ("stop", "warn"):
        guardrail = {"benchmarks": [{"task": "boolq", "maxDrop": "0.05"}], "action": action}
        doc = minimal()
        doc["spec"]["evaluation"] = {"guardrail": guardrail}
        run = Run(ContinuedPretrain.model_validate(doc))
        for _ in range(8):
            run.step()
            for name, child in list(run.children.items()):
                if child["kind"] in ("Job", "JobSet") and "status" not in child:
                    run.finish(name)
        breach = {"breached": True, "breachedAt": 1_000_000_000, "message": "forgetting budget exceeded at 1B"}
        run.status["evaluation"] = {"milestones": [], "guardrail": breach}  # at the final export: it only warned
        run.step()
        assert run.status["phase"] == "Succeeded"
        grown_doc = minimal()
        grown_doc["spec"]["data"].update(tokenBudget=2_000_000_000)
        grown_doc["spec"]["evaluation"] = {"guardrail": guardrail}
        run.run = ContinuedPretrain.model_validate(grown_doc)
        decision = run.step()
        if action == "warn":
            assert run.created(decision) == ["t-preprocess-segment-01"] and run.status["phase"] == "Preprocessing"
            continue
        assert run.created(decision) == [] and run.status["phase"] == "Failed"
        failed = condition(run, "Failed")
        assert failed["reason"] == "ForgettingBudgetExceeded" and "is not continued" in failed["message"]
        assert [e[1] for e in decision.events if e[0] == "Warning"] == ["ForgettingBudgetExceeded"]
        assert run.status["completionTime"] == "2026-12-02T12:00:00Z" and len(run.status["segments"]) == 1
