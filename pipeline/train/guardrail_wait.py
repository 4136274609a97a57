"""Training under `evaluation.guardrail.action: stop`: after each milestone export (but the last), every rank
waits for that milestone's verdict (`eval/<export>/guardrail.json`, written by its evaluation) before the next
optimizer step, and stops on a breach. So no step is taken after the breaching milestone's evaluation.

Per node, local rank 0 polls storage (every 2 s at first, backing off to every 15 s) and hands the outcome to the
node's other ranks through a file in the node's scratch folder: no collective runs while waiting, so an
evaluation longer than the process group's timeout does not break the gang. The evaluation writes the verdict
after pushing it into status, so the operator knows the reason before the gang exits. The wait is bounded by
`verdictTimeoutSeconds`: past it training goes on (nodes decide alone: one that saw a breach just before another
timed out exits 6, and the operator, which has the breach in status, stops the rest of the gang).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from cpt.api import ContinuedPretrainSpec
from cpt.api.evaluation import Guardrail
from cpt.guardrail import judged_under
from cpt.stages import export_name, verdict_path
from cpt_pipeline.storage import Storage

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0  # local rank 0's first pause between storage polls, growing by BACKOFF up to MAX_POLL_SECONDS
BACKOFF, MAX_POLL_SECONDS = 1.5, 15.0
NODE_POLL_SECONDS = 0.5  # the node's other ranks, polling local rank 0's file


def waits_at(spec: ContinuedPretrainSpec, done: int, milestones: dict[int, int], total_steps: int) -> str | None:
    """The export whose verdict training waits for after step `done`, if any."""
    guardrail = spec.evaluation.guardrail
    if guardrail is None or guardrail.action != "stop" or done not in milestones or done >= total_steps:
        return None
    return export_name(milestones[done])


def handoff_dir(scratch: Path) -> Path:
    """Where a node's local rank 0 hands verdicts to the node's other ranks: beside the node's scratch folder (which
    local rank 0 removes on a breach, perhaps before the others have read it) and, as it, one per gang attempt."""
    return scratch.with_name(f"{scratch.name}-guardrail")


def wait_for_verdict(
    storage: Storage,
    name: str,
    guardrail: Guardrail,
    stop: dict[str, int],
    rank: int,
    local_rank: int = 0,
    node_dir: Path | None = None,
) -> dict[str, Any] | None:
    """The verdict on export `name` under this budget (a file judged under another is not one yet: its evaluation
    judges it again); a within-budget one marked `timedOut` when none came within `verdictTimeoutSeconds`
    (training goes on); None when SIGTERM came first (the milestone's checkpoint is saved). Local rank 0 polls
    storage and writes the outcome to `node_dir` (node-local, one per gang attempt), where the node's other ranks
    read it."""
    handoff = None if node_dir is None else node_dir / f"guardrail-{name}.json"
    if local_rank != 0:
        if handoff is None:
            raise ValueError("wait_for_verdict: a local rank other than 0 needs the node's folder (node_dir)")
        return _from_node(handoff, stop)
    if rank == 0:
        log.info("guardrail: waiting for the evaluation of %s (%s)", name, storage.url(*verdict_path(name)))
    found = _poll_storage(storage, name, guardrail, stop, rank)
    if found is not None and handoff is not None:
        handoff.parent.mkdir(parents=True, exist_ok=True)
        partial = handoff.with_suffix(".partial")
        partial.write_text(json.dumps(found))
        os.replace(partial, handoff)  # whole or absent for the node's other ranks
    return found


def _from_node(handoff: Path, stop: dict[str, int]) -> dict[str, Any] | None:
    """The outcome local rank 0 handed to this node; None on SIGTERM."""
    while not stop["signal"]:
        if handoff.exists():
            return json.loads(handoff.read_text())
        time.sleep(NODE_POLL_SECONDS)
    return None


def _poll_storage(
    storage: Storage, name: str, guardrail: Guardrail, stop: dict[str, int], rank: int
) -> dict[str, Any] | None:
    began, pause = time.monotonic(), POLL_SECONDS
    while not stop["signal"]:
        verdict = storage.read_json(*verdict_path(name)) if storage.exists(*verdict_path(name)) else None
        waited = time.monotonic() - began
        if verdict is None or not judged_under(verdict, guardrail):
            if waited < guardrail.verdict_timeout_seconds:
                time.sleep(pause)
                pause = min(pause * BACKOFF, MAX_POLL_SECONDS)
                continue
            verdict = {"breached": False, "timedOut": True, "message": timed_out(name, guardrail)}
        if rank == 0:
            if verdict.get("timedOut"):
                log.warning("guardrail: %s", verdict["message"])
            else:
                log.info("guardrail: verdict on %s after %.0f s: %s", name, waited, verdict.get("message", ""))
            event = {"event": "guardrail-verdict", "name": name, "waitedSeconds": round(waited, 1)}
            timed = "timedOut" in verdict
            print(json.dumps({**event, "breached": bool(verdict.get("breached")), "timedOut": timed}), flush=True)
        return verdict
    return None


def timed_out(name: str, guardrail: Guardrail) -> str:
    return (
        f"no verdict on {name} within {guardrail.verdict_timeout_seconds} s "
        "(evaluation.guardrail.verdictTimeoutSeconds; can its evaluation pod start?): training goes on, and a breach "
        "found later still ends the run"
    )
