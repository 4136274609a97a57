"""The evaluation stage's side of the forgetting guardrail: the verdict in `status.evaluation.guardrail` (a
function of the merged set of evaluated models, as the rest of it), `status.recommendedExport`, and the verdict
file per milestone that training under action stop waits for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cpt.api.evaluation import Guardrail
from cpt.api.status import ContinuedPretrainStatus
from cpt_pipeline.evaluate import results
from cpt_pipeline.evaluate.results import status_summary, summaries_from_status, write_verdicts
from cpt_pipeline.storage import Storage

GUARD = Guardrail.model_validate({"general": {"maxIncrease": "0.10"}, "action": "stop"})


def summary(tokens: int, general: float) -> dict[str, Any]:
    name = "baseline" if tokens == 0 else f"tokens-{tokens:013d}"
    return {
        "name": name,
        "tokens": tokens,
        "model": f"/runs/x/exports/{name}",
        "scores": [{"task": "story_quiz", "metric": "acc", "score": 1.0, "stderr": 0.0}],
        "average": 1.0,
        "perplexity": {"general": {"perplexity": general, "documents": 3}},
        "resultsUri": f"/runs/x/eval/{name}/results.json",
    }


SUMMARIES = [summary(0, 2.0), summary(400, 2.1), summary(800, 2.4)]


def test_the_status_carries_the_verdict_and_survives_the_merge() -> None:
    status = status_summary(SUMMARIES, GUARD)
    assert status["guardrail"]["breached"] is True and status["guardrail"]["breachedAt"] == 800
    assert [m.get("export") for m in status["milestones"]] == [None, "tokens-0000000000400", "tokens-0000000000800"]
    assert status_summary(summaries_from_status(status), GUARD) == status  # what a later Job merges into
    assert "guardrail" not in status_summary(SUMMARIES) and "guardrail" not in status_summary(SUMMARIES[1:], GUARD)
    ContinuedPretrainStatus.model_validate({"evaluation": status, "recommendedExport": "tokens-0000000000400"})


def test_the_push_names_the_last_export_within_budget(monkeypatch: Any) -> None:
    pushed = {}

    def push(manager: str, merge: Any) -> bool:
        pushed.update(merge({"evaluation": status_summary(SUMMARIES[:2])}))  # an older Job's view on the server
        return True

    monkeypatch.setattr(results, "push_merged_status", push)
    results.push_evaluation([SUMMARIES[2]], "tokens-0000000000800", GUARD)
    assert pushed["recommendedExport"] == "tokens-0000000000400"
    assert pushed["evaluation"]["guardrail"]["breachedAt"] == 800


def test_each_milestone_gets_its_verdict_as_of_itself(tmp_path: Path) -> None:
    storage = Storage.open_uri(str(tmp_path))
    for s in SUMMARIES:
        storage.write_json(s, "eval", s["name"], "summary.json")
    write_verdicts(storage, SUMMARIES, GUARD)
    first = storage.read_json("eval", "tokens-0000000000400", "guardrail.json")
    second = storage.read_json("eval", "tokens-0000000000800", "guardrail.json")
    assert first["breached"] is False and first["recommendedExport"] == "tokens-0000000000400"
    assert second["breached"] is True and second["recommendedExport"] == "tokens-0000000000400"
    assert second["action"] == "stop" and "+20.0%" in second["message"]
    assert not storage.exists("eval", "baseline", "guardrail.json") and results.unjudged(storage, GUARD) == []


def test_a_milestone_pushed_without_its_export_name_is_named_by_its_tokens() -> None:
    old = status_summary(SUMMARIES[:2], GUARD)
    for milestone in old["milestones"]:
        milestone.pop("export", None)  # pushed before status entries named their export
    merged = [*summaries_from_status(old), SUMMARIES[2]]
    found = results.guardrail_verdict(merged, GUARD)
    assert found is not None and found.recommended == "tokens-0000000000400"


def test_a_verdict_under_another_budget_is_judged_again(tmp_path: Path) -> None:
    storage = Storage.open_uri(str(tmp_path))
    for s in SUMMARIES:
        storage.write_json(s, "eval", s["name"], "summary.json")
    write_verdicts(storage, SUMMARIES, GUARD)
    looser = Guardrail.model_validate({"general": {"maxIncrease": "0.25"}, "action": "stop"})
    write_verdicts(storage, SUMMARIES, looser)  # the run re-created on the same storage with a looser budget
    again = storage.read_json("eval", "tokens-0000000000800", "guardrail.json")
    assert again["breached"] is False and again["recommendedExport"] == "tokens-0000000000800"
    assert results.unjudged(storage, looser) == [] and results.unjudged(storage, GUARD) != []


def test_a_failed_status_push_fails_the_job_before_any_verdict_file(tmp_path: Path, monkeypatch: Any) -> None:
    """On a cluster the operator acts on the pushed verdict: a verdict file the trainer reads before the status
    has it would stop training with no reason in status. Real push path, to an API server that is not there."""
    from cpt.api import ContinuedPretrainSpec
    from cpt_pipeline.errors import exit_code_for

    storage = Storage.open_uri(str(tmp_path / "run"))
    for s in SUMMARIES:
        storage.write_json(s, "eval", s["name"], "summary.json")
    spec = ContinuedPretrainSpec.model_validate(
        {
            "model": {"uri": "facebook/MobileLLM-125M"},
            "data": {"sources": [{"name": "d", "uri": "/d"}], "tokenBudget": 8 * 10**8, "milestones": [4 * 10**8]},
            "storage": {"uri": str(tmp_path / "run")},
            "evaluation": {"tasks": [], "perplexity": {"general": {"uri": "/g.jsonl"}}, "guardrail": GUARD.to_api()},
        }
    )
    (tmp_path / "token").write_text("t")
    for key, value in {
        "KUBECPT_RUN": "ns/t",
        "KUBECPT_API_SERVER": "https://127.0.0.1:9",
        "KUBECPT_TOKEN_FILE": str(tmp_path / "token"),
    }.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConnectionError, match="status push failed") as failed:
        results.evaluate_run(spec, storage)
    assert exit_code_for(failed.value) == 5  # unavailable: the Job retries
    assert not storage.exists("eval", "tokens-0000000000800", "guardrail.json")
