"""Segments of a prepared set: the shards made for each budget a run has grown to (docs/training.md,
"Extending a run").

Segment 0 is `data/<set>/`, as for a run that never grew; segment j >= 1 is `data/<set>-segment-NN/` (work in
`work/preprocess/<set>-segment-NN/`). Each manifest records the `budget` (spec.data.tokenBudget) it was made
for (one made before budgets were recorded: `budgets`). A segment is prepared for the budget its first worker
started under (runner.pending_segment): a budget grown while it is prepared is the next segment. A grown budget
adds a segment under the identity of segment 0 (its spec fields, tokenizer and tokens needed): the tokens the
growth needs, read in each work unit from where the segment before stopped (its workers' `next_positions`), so no
document of an earlier segment is read into it again, and exact duplicates of earlier segments' documents are
dropped. Training reads segment j for the steps between the budgets.
"""

from __future__ import annotations

import math
from typing import Any

from cpt.api import ContinuedPretrainSpec
from cpt_pipeline.preprocess.identity import PreparedUnderAnotherSpec
from cpt_pipeline.storage import Storage

MANIFEST = "manifest.json"


def segment_dir(set_name: str, index: int) -> str:
    """The folder (under data/ and work/preprocess/) of a set's segment."""
    return set_name if index == 0 else f"{set_name}-segment-{index:02d}"


def set_share(spec: ContinuedPretrainSpec, set_name: str) -> float:
    """The share of the training tokens a set gives (the replay fraction, or the rest)."""
    replay = spec.data.active_replay
    fraction = float(replay.fraction) if replay else 0.0
    return fraction if set_name == "replay" else 1 - fraction


def tokens_for(spec: ContinuedPretrainSpec, set_name: str, budget: int) -> int:
    """The tokens a set must give for `budget` training tokens."""
    return math.ceil(budget * set_share(spec, set_name))


def manifests(storage: Storage, set_name: str) -> list[dict[str, Any]]:
    """The manifests of a set's segments, in order (empty when nothing is packed yet)."""
    found = []
    while storage.exists("data", segment_dir(set_name, len(found)), MANIFEST):
        found.append(storage.read_json("data", segment_dir(set_name, len(found)), MANIFEST))
    return found


def budgets(storage: Storage, spec: ContinuedPretrainSpec, set_name: str, found: list[dict[str, Any]]) -> list[int]:
    """The budget of each segment (`found`: its manifests). A manifest made before budgets were recorded counts as
    the spec's budget only when its tokens_needed are that budget's (the budget reaches preparation only through
    them: preparing for the spec's budget gives the same data); else one line names it."""
    out = []
    for index, manifest in enumerate(found):
        if "budget" in manifest:
            out.append(int(manifest["budget"]))
            continue
        budget, needed = spec.data.token_budget, manifest.get("tokens_needed")
        if index > 0 or needed != tokens_for(spec, set_name, budget):
            path = storage.path("data", segment_dir(set_name, index), MANIFEST)
            raise PreparedUnderAnotherSpec(
                f"{path} records no budget (packed by an older version) and its tokens_needed {needed} are not "
                f'those of spec.data.tokenBudget {budget} ({tokens_for(spec, set_name, budget)}): add "budget": '
                "<the spec.data.tokenBudget it was prepared for> to it, or delete the run's data/ and "
                "work/preprocess/ to prepare again"
            )
        out.append(budget)
    return out
