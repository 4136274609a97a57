"""`status.evaluation` is a function of the set of evaluated models: an evaluation Job merges its own view into
the status it reads, so the set only grows (the cluster test pushes two views in the bad order)."""

from __future__ import annotations

from typing import Any

from cpt.api.status import EvaluationStatus
from cpt_pipeline.evaluate.results import merge_summaries, status_summary, summaries_from_status


def summary(tokens: int, score: float, domain: float | None = None) -> dict[str, Any]:
    name = "baseline" if tokens == 0 else f"tokens-{tokens:013d}"
    perplexity = {"domain": {"perplexity": domain, "documents": 3}} if domain is not None else {}
    return {
        "name": name,
        "tokens": tokens,
        "model": f"s3://runs/x/exports/{name}",
        "scores": [{"task": "piqa", "metric": "acc_norm", "score": score, "stderr": 0.01}],
        "average": score,
        "perplexity": perplexity,
        "resultsUri": f"s3://runs/x/eval/{name}/results.json",
    }


SUMMARIES = [summary(0, 0.6, domain=30.0), summary(400, 0.62, domain=20.0), summary(1000, 0.65)]


def test_a_status_gives_back_the_summaries_it_was_made_from() -> None:
    status = status_summary(SUMMARIES)
    EvaluationStatus.model_validate(status)
    assert status_summary(summaries_from_status(status)) == status
    assert summaries_from_status(None) == []


def test_an_older_view_merged_into_a_newer_status_changes_nothing() -> None:
    newer = status_summary(SUMMARIES)
    older_view = [SUMMARIES[1]]  # listed before the baseline and the 1000-token export were written
    assert status_summary(merge_summaries(summaries_from_status(newer), older_view)) == newer


def test_a_newer_view_adds_its_models_and_fills_the_deltas() -> None:
    older = status_summary([SUMMARIES[1]])  # no baseline yet: no deltas
    assert older["milestones"][0]["averageDelta"] is None
    merged = status_summary(merge_summaries(summaries_from_status(older), [SUMMARIES[0], SUMMARIES[2]]))
    assert merged == status_summary(SUMMARIES)
    assert [m["tokens"] for m in merged["milestones"]] == [0, 400, 1000] and merged["latestAverage"] == 0.65


def test_the_latest_perplexity_changes_are_in_status_for_kubectl_get() -> None:
    """`kubectl get cpt` shows domain and general perplexity change (printer columns read these two fields)."""
    status = status_summary(SUMMARIES)
    assert status["latestDomainPerplexityChange"] == round((20.0 - 30.0) / 30.0, 6)  # the latest model with one
    assert status["latestGeneralPerplexityChange"] is None  # no general set: nothing to show
    assert status_summary([SUMMARIES[1]])["latestDomainPerplexityChange"] is None  # no base model yet
    from cpt.crd import PRINTER_COLUMNS

    paths = {column["jsonPath"] for column in PRINTER_COLUMNS}
    assert {
        ".status.evaluation.latestDomainPerplexityChange",
        ".status.evaluation.latestGeneralPerplexityChange",
    } <= paths
