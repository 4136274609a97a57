"""The operator validates a run's spec once per generation and keeps only the most recently used: with thousands of
runs its memory does not grow by a validated spec (~25 KB) per run (issue 21 item 13)."""

from __future__ import annotations

from typing import Any

import pytest

from cpt_operator import handlers


def run_body(uid: str, generation: int = 1, budget: int = 10**9) -> dict[str, Any]:
    return {
        "metadata": {"name": f"run-{uid}", "namespace": "ns", "uid": uid, "generation": generation},
        "spec": {
            "model": {"uri": "facebook/MobileLLM-125M"},
            "data": {"sources": [{"name": "edu", "uri": "s3://b/edu/*.jsonl"}], "tokenBudget": budget},
            "storage": {"uri": f"s3://runs/{uid}"},
        },
    }


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "_RESOURCES", type(handlers._RESOURCES)())
    monkeypatch.setattr(handlers, "_RESOURCES_KEPT", 3)


def test_a_spec_is_validated_once_per_generation() -> None:
    first = handlers._resource(run_body("a"))
    assert handlers._resource(run_body("a")) is first  # a status push: no new validation
    edited = handlers._resource(run_body("a", generation=2, budget=2 * 10**9))
    assert edited is not first and edited.spec.data.token_budget == 2 * 10**9


def test_only_the_most_recently_used_specs_are_kept() -> None:
    kept = {uid: handlers._resource(run_body(uid)) for uid in "abc"}
    handlers._resource(run_body("a"))  # used again: now the most recent
    handlers._resource(run_body("d"))  # evicts the least recently used, b
    assert [key[0] for key in handlers._RESOURCES] == ["c", "a", "d"]
    assert handlers._resource(run_body("a")) is kept["a"]
    assert handlers._resource(run_body("b")) is not kept["b"]  # validated again, still correct
    assert handlers._resource(run_body("b")).spec.storage.uri == "s3://runs/b"


def test_the_validated_run_keeps_its_uid_for_its_pods() -> None:
    """Stage pods name the run's incarnation (KUBECPT_RUN_UID, pipeline/preprocess/started.py): the run the handler
    passes to the builders must keep metadata.uid (review of b8611e2: it kept only the name and namespace)."""
    from cpt.stages import Stage
    from cpt_operator.children import stage_job
    from cpt_operator.config import OperatorConfig

    run = handlers._resource(run_body("0f1e2d3c-0000-0000-0000-00000000000b"))
    pod = stage_job(run, Stage.PREPROCESS, OperatorConfig(worker_image="w:1"))["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KUBECPT_RUN_UID"] == "0f1e2d3c-0000-0000-0000-00000000000b"
