"""status.segments: each budget a run has trained to, and when a grown `spec.data.tokenBudget` continues the run
(docs/training.md, "Extending a run"; docs/operator.md, "Extending a run").

Pure, as reconcile.py: from the spec, the status and whether the current segment's training finished. Segment 0
is the first budget; once a segment's training finished (`Trained`), a spec budget past the steps it trained
starts the next segment: its own preprocess, dedup, training (resuming from the latest checkpoint), evaluation of
the new exports and report, under names of its own (`names.segment_suffix`). The list is the operator's record,
kept across passes: its entries are only appended to, and the last one completed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cpt.api import ContinuedPretrainSpec
from cpt.api.base import MAX_LIST


@dataclass
class Segments:
    """The run's segments as this pass sees them (entries as status.segments holds them)."""

    entries: list[dict[str, Any]]
    per_step: int

    @property
    def index(self) -> int:
        """The segment the run is in (its children's names: `names.segment_suffix`)."""
        return len(self.entries) - 1

    @property
    def current(self) -> dict[str, Any]:
        return self.entries[-1]

    def steps(self, budget: int) -> int:
        """Optimizer steps of a budget (whole steps, as the trainer counts them)."""
        return max(1, math.ceil(budget / self.per_step))

    def trained_end(self, total_steps: int | None) -> int:
        """The steps the current segment's finished training reached: what the trainer reported
        (status.training.totalSteps: the budget its data covered), unless that is still the segment before's."""
        current = self.current
        if total_steps and total_steps > current["startStep"]:
            return int(total_steps)
        return int(current["endStep"])

    def grows(self, spec: ContinuedPretrainSpec, total_steps: int | None) -> bool:
        """Does the spec's budget go past the current segment's, and past the steps it trained (a next segment is
        due)? (Both: a trainer counting steps otherwise than the spec never starts a segment by itself.)"""
        budget = spec.data.token_budget
        return budget > self.current["tokenBudget"] and self.steps(budget) > self.trained_end(total_steps)


def observed(spec: ContinuedPretrainSpec, status: dict[str, Any], trained: bool, now: str) -> Segments:
    """status.segments, or segment 0 for a run that has none yet: the spec's budget (for a run that trained
    before segments were kept and whose budget grew since, the steps it reported)."""
    per_step = spec.training.tokens_per_step(spec.data.sequence_length)
    entries = [dict(entry) for entry in status.get("segments") or []]
    segments = Segments(entries, per_step)
    if not entries:
        budget = spec.data.token_budget
        total = (status.get("training") or {}).get("totalSteps")
        if trained and total and total < segments.steps(budget):
            budget = int(total) * per_step
        start = status.get("startTime") or now
        entries.append({"tokenBudget": budget, "startStep": 0, "endStep": segments.steps(budget), "startTime": start})
    return segments


def finish(segments: Segments, spec: ContinuedPretrainSpec, total_steps: int | None, when: str, restarts: int) -> None:
    """Record the end of the current segment's training: the steps it reached, when, its gang's restarts."""
    current = segments.current
    end = segments.trained_end(total_steps)
    if end != current["endStep"]:  # its data covered another budget than the one it started for
        current["endStep"] = end
        if segments.steps(spec.data.token_budget) == end:
            current["tokenBudget"] = spec.data.token_budget
    current.setdefault("completionTime", when)
    current.setdefault("restarts", restarts)


def extend(segments: Segments, spec: ContinuedPretrainSpec, total_steps: int | None, now: str) -> str:
    """Start the next segment (the current one's training finished, the budget grew); returns the event's message,
    or raises ValueError when the run already has MAX_LIST segments."""
    if len(segments.entries) >= MAX_LIST:
        raise ValueError(
            f"spec.data.tokenBudget grew again, but a run keeps at most {MAX_LIST} segments: create a new run"
        )
    old, start = segments.current["tokenBudget"], segments.trained_end(total_steps)
    budget = spec.data.token_budget
    entry = {"tokenBudget": budget, "startStep": start, "endStep": segments.steps(budget), "startTime": now}
    segments.entries.append(entry)
    return (
        f"spec.data.tokenBudget grew from {old} to {budget} tokens: segment {segments.index} prepares the new "
        f"tokens and trains steps {start + 1}..{entry['endStep']} from the latest checkpoint"
    )
