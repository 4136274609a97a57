"""A child's final state that only its event showed (a Job deleted the moment it finished, by a TTL a platform
policy injected) still counts when its event arrives while the run's passes back off after an error, or when the
pass it started fails: the next pass sees it (issue 21 review), else the stage would run again."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import kopf
import pytest

from cpt_operator import handlers

KEY = ("ns", "t")
DONE = {"kind": "Job", "metadata": {"name": "t-preprocess", "uid": "j1"}, "status": {"succeeded": 1}}


class Cache:
    def run(self, namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": namespace, "uid": "u1", "generation": 1}, "status": {}}


@pytest.fixture
def memo(monkeypatch: pytest.MonkeyPatch) -> kopf.Memo:
    memo = kopf.Memo(cache=Cache(), written={}, held={}, failures={}, checked={})
    memo.requeue = lambda *args: None
    memo.config = SimpleNamespace(reconcile_seconds=60)
    return memo


def test_a_child_seen_during_a_backoff_is_seen_by_the_next_pass(memo: kopf.Memo, monkeypatch) -> None:
    passes: list[dict[str, Any]] = []
    monkeypatch.setattr(handlers, "run_pass", lambda memo, body, seen: passes.append(seen))
    memo.failures[KEY] = (1, "denied", time.monotonic() + 60, 1)  # backing off after a failed pass
    handlers._pass(memo, KEY, {"Job:t-preprocess": DONE}, timer=False)
    assert passes == []  # no pass during the backoff
    memo.failures[KEY] = (1, "denied", time.monotonic() - 1, 1)  # the retry is due
    handlers._pass(memo, KEY, {}, timer=False)
    assert passes == [{"Job:t-preprocess": DONE}]


def test_what_a_failed_pass_saw_counts_in_its_retry(memo: kopf.Memo, monkeypatch) -> None:
    passes: list[dict[str, Any]] = []

    def failing_then_recording(memo: kopf.Memo, body: dict[str, Any], seen: dict[str, Any]) -> None:
        passes.append(seen)
        if len(passes) == 1:
            raise RuntimeError("the API server refused")

    monkeypatch.setattr(handlers, "run_pass", failing_then_recording)
    monkeypatch.setattr(handlers, "_failed", lambda memo, body, status, message: status)
    handlers._pass(memo, KEY, {"Job:t-preprocess": DONE}, timer=False)
    handlers._pass(memo, KEY, {}, timer=True)  # the retry
    assert passes == [{"Job:t-preprocess": DONE}, {"Job:t-preprocess": DONE}]
