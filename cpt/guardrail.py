"""The forgetting guardrail's verdict: each milestone's measures against the base model's and the budget.

Pure (no I/O), shared by the evaluation stage (which computes it and pushes it into status), the trainer (which,
under `action: stop`, waits for a milestone's verdict before its next step) and the tests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cpt.api.evaluation import Guardrail


@dataclass(frozen=True)
class Measures:
    """What the guardrail reads of one evaluated model."""

    name: str  # the export's name (exports/<name>); "baseline" for the base model
    tokens: int  # 0: the base model
    general_perplexity: float | None = None
    scores: Mapping[str, float] = field(default_factory=dict)  # task -> score


class GuardrailError(ValueError):
    """A measure the guardrail needs was not evaluated."""


def breaches(guardrail: Guardrail, base: Measures, trained: Measures) -> list[str]:
    """What of `trained` exceeds the budget against `base`, one phrase each; empty when within it."""
    found = []
    if guardrail.general is not None:
        before, after = base.general_perplexity, trained.general_perplexity
        if before is None or after is None:
            missing = "the base model" if before is None else f"{trained.tokens} tokens"
            raise GuardrailError(f"evaluation.guardrail.general: no general perplexity for {missing}")
        limit = float(guardrail.general.max_increase)
        rise = (after - before) / before
        if round(rise, 9) > limit:  # (rounded: exactly at the budget is within it)
            change = f"{after / before:,.0f}x the base" if rise > 10 else f"+{rise:.1%}"  # a factor, past 11x
            found.append(f"general perplexity {before:.4g} -> {after:,.4g} ({change}, budget +{limit:.1%})")
    for budget in guardrail.benchmarks:
        if budget.task not in base.scores or budget.task not in trained.scores:
            missing = "the base model" if budget.task not in base.scores else f"{trained.tokens} tokens"
            raise GuardrailError(f"evaluation.guardrail.benchmarks: no {budget.task} score for {missing}")
        before, after = base.scores[budget.task], trained.scores[budget.task]
        drop = before - after
        if round(drop, 9) > float(budget.max_drop):
            found.append(f"{budget.task} {before:.4g} -> {after:.4g} (drop {drop:.4g}, budget {budget.max_drop})")
    return found


@dataclass(frozen=True)
class Verdict:
    """The guardrail over every milestone evaluated so far."""

    breached_at: int | None  # tokens of the first milestone over the budget
    message: str
    recommended: str | None  # the export name of the last milestone within the budget

    @property
    def breached(self) -> bool:
        return self.breached_at is not None

    def to_status(self) -> dict[str, object]:
        """`status.evaluation.guardrail`."""
        out: dict[str, object] = {"breached": self.breached, "message": self.message}
        if self.breached_at is not None:
            out["breachedAt"] = self.breached_at
        if self.recommended is not None:
            out["recommendedExport"] = self.recommended
        return out


def verdict(guardrail: Guardrail, evaluated: Sequence[Measures]) -> Verdict | None:
    """The verdict over `evaluated` (the base model and milestones, any order); None until the base model is in."""
    base = next((m for m in evaluated if m.tokens == 0), None)
    if base is None:
        return None
    first: tuple[int, list[str]] | None = None
    recommended = None
    for trained in sorted((m for m in evaluated if m.tokens > 0), key=lambda m: m.tokens):
        found = breaches(guardrail, base, trained)
        if not found:
            recommended = trained.name
        elif first is None:
            first = (trained.tokens, found)
    if first is None:
        return Verdict(None, "every evaluated milestone is within the forgetting budget", recommended)
    tokens, found = first
    after = f"; the last export within it: {recommended}" if recommended else "; no export is within it"
    return Verdict(tokens, f"forgetting budget exceeded at {tokens} tokens: {'; '.join(found)}{after}", recommended)


def budget_digest(guardrail: Guardrail) -> str:
    """What a verdict was judged under: a digest of the budget (general, benchmarks; not the action or the wait,
    which change no verdict). A verdict file of another digest is out of date: judged again, never trusted."""
    budget = {k: v for k, v in guardrail.to_api().items() if k in ("general", "benchmarks")}
    return hashlib.sha256(json.dumps(budget, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def judged_under(found: Mapping[str, Any], guardrail: Guardrail) -> bool:
    """Was this verdict file (eval/<export>/guardrail.json) judged under `guardrail`'s budget?"""
    return found.get("budgetDigest") == budget_digest(guardrail)
