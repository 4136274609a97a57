"""The forgetting guardrail: the spec's rules, and the verdict over a base model and its milestones."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cpt.api import ContinuedPretrain
from cpt.api.evaluation import Guardrail
from cpt.guardrail import GuardrailError, Measures, breaches, verdict
from tests.cpt.test_spec import minimal

GENERAL = Guardrail.model_validate({"general": {"maxIncrease": "0.10"}, "action": "stop"})
QUIZ = Guardrail.model_validate({"benchmarks": [{"task": "story_quiz", "maxDrop": "0.05"}]})


def model(tokens: int, general: float, quiz: float = 1.0) -> Measures:
    return Measures("baseline" if tokens == 0 else f"tokens-{tokens:013d}", tokens, general, {"story_quiz": quiz})


def test_general_perplexity_may_rise_up_to_its_share_of_the_base() -> None:
    assert breaches(GENERAL, model(0, 2.0), model(100, 2.2)) == []  # exactly +10%
    assert breaches(GENERAL, model(0, 2.0), model(100, 1.5)) == []  # improved
    (found,) = breaches(GENERAL, model(0, 2.0), model(100, 2.21))
    assert found == "general perplexity 2 -> 2.21 (+10.5%, budget +10.0%)"
    (found,) = breaches(GENERAL, model(0, 2.015), model(100, 1541.7))
    assert found == "general perplexity 2.015 -> 1,542 (765x the base, budget +10.0%)"


def test_a_benchmark_may_drop_by_its_margin() -> None:
    assert breaches(QUIZ, model(0, 2.0, quiz=0.9), model(100, 9.0, quiz=0.86)) == []
    (found,) = breaches(QUIZ, model(0, 2.0, quiz=0.9), model(100, 2.0, quiz=0.8))
    assert found.startswith("story_quiz 0.9 -> 0.8 (drop 0.1")


def test_the_verdict_names_the_first_breach_and_the_last_export_within_budget() -> None:
    assert verdict(GENERAL, [model(100, 2.1)]) is None  # no base model yet
    within = verdict(GENERAL, [model(200, 2.1), model(0, 2.0), model(100, 2.05)])
    assert not within.breached and within.recommended == "tokens-0000000000200"
    over = verdict(GENERAL, [model(0, 2.0), model(100, 2.1), model(200, 2.5), model(300, 2.9)])
    assert over.breached_at == 200 and over.recommended == "tokens-0000000000100"
    assert over.to_status() == {
        "breached": True,
        "breachedAt": 200,
        "message": over.message,
        "recommendedExport": "tokens-0000000000100",
    }
    assert "at 200 tokens" in over.message and "tokens-0000000000100" in over.message
    first = verdict(GENERAL, [model(0, 2.0), model(100, 3.0)])
    assert first.recommended is None and "no export is within it" in first.message


def test_a_missing_measure_is_an_error_naming_the_field() -> None:
    with pytest.raises(GuardrailError, match=r"evaluation\.guardrail\.general: no general perplexity for 100 tokens"):
        breaches(GENERAL, model(0, 2.0), Measures("tokens-0000000000100", 100))


def spec_with(evaluation: dict) -> dict:
    doc = minimal()
    doc["spec"]["evaluation"] = evaluation
    return doc


@pytest.mark.parametrize(
    ("evaluation", "message"),
    [
        ({"guardrail": {}}, "give a general budget, benchmarks, or both"),
        ({"guardrail": {"general": {"maxIncrease": "0.1"}}}, "needs the general perplexity set"),
        ({"guardrail": {"benchmarks": [{"task": "nope", "maxDrop": "0.1"}]}}, "must be a task of evaluation.tasks"),
        ({"baseline": False, "guardrail": {"benchmarks": [{"task": "boolq", "maxDrop": "0.1"}]}}, "needs baseline"),
        ({"guardrail": {"benchmarks": [{"task": "boolq", "maxDrop": "0.1"}], "action": "halt"}}, "'warn' or 'stop'"),
        ({"guardrail": {"benchmarks": [{"task": "boolq", "maxDrop": 0.1}]}}, "valid string"),
        (
            {"guardrail": {"benchmarks": [{"task": "boolq", "maxDrop": "0.1"}], "verdictTimeoutSeconds": 59}},
            "greater than or equal to 60",
        ),
    ],
)
def test_the_spec_refuses_a_guardrail_it_cannot_check(evaluation: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ContinuedPretrain.model_validate(spec_with(evaluation))


def test_a_model_built_from_an_architecture_has_no_base_to_guard() -> None:
    doc = spec_with({"guardrail": {"benchmarks": [{"task": "boolq", "maxDrop": "0.1"}]}})
    doc["spec"]["model"] = {"architecture": {"preset": "tiny"}, "tokenizer": "t"}
    with pytest.raises(ValidationError, match="a model built from an architecture has none"):
        ContinuedPretrain.model_validate(doc)
