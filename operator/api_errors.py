"""A pass whose API call failed: the cause goes into the run's status and a Warning Event, and the pass is
retried with backoff until the cause goes (a webhook that timed out or denied, a policy engine, a quota).

Reconciling=True (reason `RetryingAfterError`) from the first failure; from the third failed pass in a row also
Stalled=True (reason `ApiError`), which Argo CD and Flux show as degraded. The next successful pass clears both.
"""

from __future__ import annotations

import json
from typing import Any

STALLED_AFTER = 3  # failed passes in a row before the run reports Stalled
MAX_BACKOFF = 300.0  # seconds


def describe(action: str, error: BaseException) -> str:
    """One line: what was tried and what the API server (or the client) said."""
    status = getattr(error, "status", None)
    if status is None:
        return f"{action}: {type(error).__name__}: {error}"
    message = getattr(error, "reason", "") or ""
    body = getattr(error, "body", None)
    if body:
        try:
            message = json.loads(body).get("message") or message
        except (ValueError, AttributeError):
            message = str(body)[:500]
    return f"{action}: HTTP {status}: {message}".strip()


def backoff(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed passes in a row: 1, 2, 4, ... up to MAX_BACKOFF."""
    return min(MAX_BACKOFF, 2.0 ** max(0, attempts - 1))


def error_status(status: dict[str, Any], message: str, attempts: int, generation: int, now: str) -> dict[str, Any]:
    """`status` with the error in Reconciling (and Stalled once it persists); Failed runs keep their Stalled."""
    from cpt_operator.reconcile import FAILED, READY, RECONCILING, STALLED, Conditions

    conditions = Conditions(status.get("conditions", []), generation, now)
    retry = f"{message} (retrying with backoff)"  # no attempt count: the status changes only with the cause
    conditions.set(RECONCILING, True, "RetryingAfterError", retry)
    if not conditions.true(FAILED):
        conditions.set(READY, False, "RetryingAfterError", retry)
        if attempts >= STALLED_AFTER:
            conditions.set(STALLED, True, "ApiError", retry)
    return {**status, "conditions": conditions.listed()}
