"""Which budget a segment is prepared for: `work/preprocess/<segment>/started/` holds one marker per budget a
worker started the segment under, written before it reads. The least of them is the segment's budget, so a budget
grown while a segment is prepared becomes the next segment (docs/training.md, "Extending a run").

A marker names the run incarnation that wrote it (the run's UID, `KUBECPT_RUN_UID`, set by the operator). A run
deleted while preprocessing and applied again under the same name and storage is a new incarnation: the markers
of the old one do not bind it, else its first segment would be prepared for the old budget while the operator
records the new one. Outside a cluster (`cpt run`) there is no incarnation and every marker counts. A marker that
names no run (written outside a cluster, or by a pod of an operator from before markers named one: an upgrade
while a segment is prepared) counts for every incarnation.
"""

from __future__ import annotations

import os
import re

from cpt_pipeline.storage import Storage

STARTED = "started"
INCARNATION_ENV = "KUBECPT_RUN_UID"  # the ContinuedPretrain's metadata.uid, on every stage container
_NAME = re.compile(r"budget-(\d+)(?:-run-([0-9A-Za-z-]+))?\.json")


def incarnation() -> str | None:
    """This run's incarnation (its UID), or None outside a cluster."""
    return os.environ.get(INCARNATION_ENV) or None


def record_start(storage: Storage, folder: str, budget: int) -> None:
    """Record that a worker of this incarnation starts segment `folder` under `budget` (before it reads)."""
    run = incarnation()
    name = f"budget-{budget}-run-{run}.json" if run else f"budget-{budget}.json"
    storage.write_json({"budget": budget, "run": run}, "work", "preprocess", folder, STARTED, name)


def started_budget(storage: Storage, folder: str, budget: int) -> int:
    """The budget the segment's first worker of this incarnation (or of none named) started under (the least
    recorded), when the spec's grew since; else `budget` (the spec's)."""
    run = incarnation()
    recorded = []
    for name in storage.list("work", "preprocess", folder, STARTED):
        match = _NAME.fullmatch(name)
        if match and (run is None or match.group(2) in (None, run)):
            recorded.append(int(match.group(1)))
    return min([budget, *recorded])
