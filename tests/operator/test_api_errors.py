"""A pass whose API call failed: one line naming the call and the server's message, backoff, the conditions."""

from __future__ import annotations

import json
import threading
import time

from kubernetes.client.exceptions import ApiException

from cpt_operator.api_errors import STALLED_AFTER, backoff, describe, error_status
from cpt_operator.requeue import Requeue

NOW = "2026-12-02T12:00:00Z"


def denied() -> ApiException:
    error = ApiException(status=403, reason="Forbidden")
    error.body = json.dumps({"message": 'admission webhook "deny.example" denied the request: no GPUs today'})
    return error


def test_the_message_names_the_call_and_the_servers_reason() -> None:
    assert describe("create JobSet t-train", denied()) == (
        'create JobSet t-train: HTTP 403: admission webhook "deny.example" denied the request: no GPUs today'
    )
    assert describe("list Jobs", ConnectionError("refused")) == "list Jobs: ConnectionError: refused"


def test_backoff_doubles_up_to_five_minutes() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0] and backoff(50) == 300.0


def condition(status: dict, kind: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_reconciling_at_once_and_stalled_once_the_error_persists() -> None:
    status = {"phase": "Training", "conditions": []}
    first = error_status(status, "create JobSet t-train: HTTP 403: no", 1, 2, NOW)
    assert condition(first, "Reconciling")["status"] == "True"
    assert condition(first, "Reconciling")["reason"] == "RetryingAfterError"
    assert condition(first, "Reconciling")["message"] == "create JobSet t-train: HTTP 403: no (retrying with backoff)"
    assert all(c["type"] != "Stalled" for c in first["conditions"]) and first["phase"] == "Training"
    later = error_status(first, "create JobSet t-train: HTTP 403: no", STALLED_AFTER, 2, NOW)
    assert (condition(later, "Stalled")["status"], condition(later, "Stalled")["reason"]) == ("True", "ApiError")


def test_a_failed_run_keeps_its_stalled_reason() -> None:
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "TrainingFailed", "message": "x"}]}
    failed["conditions"].append({"type": "Stalled", "status": "True", "reason": "TrainingFailed", "message": "x"})
    out = error_status(failed, "patch JobSet t-train: HTTP 500: boom", 5, 1, NOW)
    assert condition(out, "Stalled")["reason"] == "TrainingFailed"


def test_the_scheduler_runs_the_soonest_request_once_per_run() -> None:
    ran: list[tuple[str, str]] = []
    done = threading.Event()

    def run_pass(namespace: str, run: str) -> None:
        ran.append((namespace, run))
        if len(ran) == 2:
            done.set()

    requeue = Requeue(run_pass)
    requeue("ns", "a", 30.0)
    requeue("ns", "a", 0.05)  # sooner: replaces the later one
    requeue("ns", "a", 10.0)  # later than the one due: ignored
    requeue("ns", "b", 0.1)
    requeue("ns", "c", 0.05)
    requeue.forget("ns", "c")
    assert done.wait(5)
    time.sleep(0.3)
    requeue.stop()
    assert sorted(ran) == [("ns", "a"), ("ns", "b")]


def test_passes_asked_for_while_one_runs_coalesce_into_one_more() -> None:
    from cpt_operator.serial import Serializer

    serial = Serializer()
    started, release = threading.Event(), threading.Event()
    calls: list[dict] = []

    def slow(seen: dict) -> None:
        calls.append(seen)
        if len(calls) == 1:
            started.set()
            release.wait(5)

    first = threading.Thread(target=serial.run, args=(("ns", "r"), {}, slow))
    first.start()
    assert started.wait(5)
    left = [serial.run(("ns", "r"), {f"job-{i}": {"i": i}}, slow) for i in range(5)]  # none waits
    release.set()
    first.join(5)
    assert left == [False] * 5 and len(calls) == 2  # one more pass, with every child state the events brought
    assert sorted(calls[1]) == [f"job-{i}" for i in range(5)]
    assert serial.run(("ns", "r"), {}, slow) is True and len(calls) == 3  # the run is free again
