"""Training under guardrail action stop waits for each milestone's verdict in storage: only one judged under the
spec's budget counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cpt.api.evaluation import Guardrail
from cpt.guardrail import budget_digest
from cpt.stages import verdict_path
from cpt_pipeline.storage import Storage
from cpt_pipeline.train import guardrail_wait

GUARD = Guardrail.model_validate({"general": {"maxIncrease": "0.10"}, "action": "stop"})
OLD = Guardrail.model_validate({"general": {"maxIncrease": "0.01"}, "action": "stop"})
NAME = "tokens-0000000000400"


def sigterm_on_sleep(monkeypatch: Any, stop: dict[str, int]) -> None:
    """Each poll's pause: SIGTERM arrives during the first (so a wait that would go on returns None)."""
    monkeypatch.setattr(guardrail_wait.time, "sleep", lambda seconds: stop.update(signal=15))


def test_a_verdict_judged_under_another_budget_is_not_awaited_one(tmp_path: Path, monkeypatch: Any) -> None:
    storage, stop = Storage.open_uri(str(tmp_path)), {"signal": 0}
    storage.write_json({"breached": True, "message": "old", "budgetDigest": budget_digest(OLD)}, *verdict_path(NAME))
    sigterm_on_sleep(monkeypatch, stop)
    assert guardrail_wait.wait_for_verdict(storage, NAME, guardrail=GUARD, stop=stop, rank=0) is None
    current = {"breached": False, "message": "within", "budgetDigest": budget_digest(GUARD)}
    storage.write_json(current, *verdict_path(NAME))
    stop["signal"] = 0
    assert guardrail_wait.wait_for_verdict(storage, NAME, guardrail=GUARD, stop=stop, rank=0) == current


class Clock:
    """time.monotonic and time.sleep for the wait: each pause moves the clock on (no real waiting)."""

    def __init__(self) -> None:
        self.now, self.pauses = 1000.0, 0

    def sleep(self, seconds: float) -> None:
        self.pauses += 1
        assert self.pauses < 10_000, "still waiting after 10,000 polls"
        self.now += seconds


def test_without_a_verdict_training_goes_on_after_verdict_timeout_seconds(tmp_path: Path, monkeypatch: Any) -> None:
    """An evaluation pod that cannot start (a quota that fits only the gang) must not hold the GPUs forever."""
    clock = Clock()
    monkeypatch.setattr(guardrail_wait.time, "sleep", clock.sleep)
    monkeypatch.setattr(guardrail_wait.time, "monotonic", lambda: clock.now)
    short = Guardrail.model_validate({**GUARD.to_api(), "verdictTimeoutSeconds": 60})
    storage, stop = Storage.open_uri(str(tmp_path)), {"signal": 0}
    found = guardrail_wait.wait_for_verdict(storage, NAME, guardrail=short, stop=stop, rank=0)
    assert found is not None and found["breached"] is False and found["timedOut"] is True
    assert "verdictTimeoutSeconds" in found["message"] and 60 <= clock.now - 1000.0 < 60 + 15


class CountingStorage(Storage):
    """A local Storage that counts the polls (exists) made of it."""

    polls = 0

    def exists(self, *parts: str) -> bool:
        type(self).polls += 1
        return super().exists(*parts)


def test_the_poller_backs_off_to_one_poll_every_15_seconds(tmp_path: Path, monkeypatch: Any) -> None:
    clock = Clock()
    monkeypatch.setattr(guardrail_wait.time, "sleep", clock.sleep)
    monkeypatch.setattr(guardrail_wait.time, "monotonic", lambda: clock.now)
    found = guardrail_wait.wait_for_verdict(
        Storage.open_uri(str(tmp_path)), NAME, guardrail=GUARD, stop={"signal": 0}, rank=0
    )
    assert found is not None and found["timedOut"] is True
    assert clock.pauses <= 3600 / 15 + 10  # an hour's wait: ~250 storage polls, not 1,800


def test_only_local_rank_0_polls_storage_and_hands_the_verdict_to_its_node(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(CountingStorage, "polls", 0)
    plain = Storage.open_uri(str(tmp_path / "run"))
    storage, node = CountingStorage(plain.root, plain.fs), tmp_path / "scratch"
    node.mkdir()
    current = {"breached": True, "message": "over", "budgetDigest": budget_digest(GUARD)}
    storage.write_json(current, *verdict_path(NAME))
    ranks = {"signal": 0}
    first = guardrail_wait.wait_for_verdict(
        storage, NAME, guardrail=GUARD, stop=ranks, rank=0, local_rank=0, node_dir=node
    )
    polled = CountingStorage.polls
    other = guardrail_wait.wait_for_verdict(
        storage, NAME, guardrail=GUARD, stop=ranks, rank=1, local_rank=1, node_dir=node
    )
    assert first == other == current and polled > 0 and CountingStorage.polls == polled  # rank 1: the node's file
