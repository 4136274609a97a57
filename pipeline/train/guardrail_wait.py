"""Training under `evaluation.guardrail.action: stop`: after each milestone export (but the last), every rank
waits for that milestone's verdict (`eval/<export>/guardrail.json`, written by its evaluation) before the next
optimizer step, and stops on a breach. So no step is taken after the breaching milestone's evaluation.

Every rank polls storage itself: no collective runs while waiting, so an evaluation longer than the process
group's timeout does not break the gang. The evaluation writes the verdict after pushing it into status, so the
operator knows the reason before the gang exits.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from cpt.api import ContinuedPretrainSpec
from cpt.api.evaluation import Guardrail
from cpt.guardrail import judged_under
from cpt.stages import export_name, verdict_path
from cpt_pipeline.storage import Storage

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0


def waits_at(spec: ContinuedPretrainSpec, done: int, milestones: dict[int, int], total_steps: int) -> str | None:
    """The export whose verdict training waits for after step `done`, if any."""
    guardrail = spec.evaluation.guardrail
    if guardrail is None or guardrail.action != "stop" or done not in milestones or done >= total_steps:
        return None
    return export_name(milestones[done])


def wait_for_verdict(
    storage: Storage, name: str, guardrail: Guardrail, stop: dict[str, int], rank: int
) -> dict[str, Any] | None:
    """The verdict on export `name` under this budget (a file judged under another is not one yet: its evaluation
    judges it again); a within-budget one marked `timedOut` when none came within `verdictTimeoutSeconds`
    (training goes on); None when SIGTERM came first (the milestone's checkpoint is saved)."""
    if rank == 0:
        log.info("guardrail: waiting for the evaluation of %s (%s)", name, storage.url(*verdict_path(name)))
    began = time.monotonic()
    while not stop["signal"]:
        verdict = storage.read_json(*verdict_path(name)) if storage.exists(*verdict_path(name)) else None
        waited = time.monotonic() - began
        if verdict is None or not judged_under(verdict, guardrail):
            if waited < guardrail.verdict_timeout_seconds:
                time.sleep(POLL_SECONDS)
                continue
            verdict = {"breached": False, "timedOut": True, "message": timed_out(name, guardrail)}
        if rank == 0:
            if verdict.get("timedOut"):
                log.warning("guardrail: %s", verdict["message"])
            else:
                log.info("guardrail: verdict on %s after %.0f s: %s", name, waited, verdict.get("message", ""))
            event = {"event": "guardrail-verdict", "name": name, "waitedSeconds": round(waited, 1)}
            print(
                json.dumps({**event, "breached": bool(verdict.get("breached")), "timedOut": "timedOut" in verdict}),
                flush=True,
            )
        return verdict
    return None


def timed_out(name: str, guardrail: Guardrail) -> str:
    return (
        f"no verdict on {name} within {guardrail.verdict_timeout_seconds} s "
        "(evaluation.guardrail.verdictTimeoutSeconds; can its evaluation pod start?): training goes on, and a breach "
        "found later still ends the run"
    )
