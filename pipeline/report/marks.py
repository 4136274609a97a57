"""What the report marks on its figures besides the evaluated milestones: the forgetting guardrail's threshold
(spec.evaluation.guardrail), the recommended export (status.recommendedExport) and the budget segments (one per
token budget the run was extended to). Each is optional: a run without a guardrail or an extension has none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Marks:
    guardrail_general: float | None = None  # the largest allowed general perplexity rise, a share of the base's
    recommended_tokens: int | None = None  # tokens of the last export within the guardrail
    segment_ends: tuple[int, ...] = ()  # the token budget each segment ended at, ascending


def _number(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _guardrail(spec: dict[str, Any]) -> float | None:
    general = ((spec.get("evaluation") or {}).get("guardrail") or {}).get("general") or {}
    return _number(general.get("maxIncrease"))


def _export_tokens(export: Any) -> int | None:
    """Tokens of an export given by name (`tokens-0000000409600`) or as an object with tokens or name."""
    if isinstance(export, dict):
        tokens = _number(export.get("tokens"))
        return int(tokens) if tokens is not None else _export_tokens(export.get("name"))
    if isinstance(export, str) and export.startswith("tokens-") and export[7:].isdigit():
        return int(export[7:])
    return None


def _segment_ends(status: dict[str, Any]) -> tuple[int, ...]:
    ends = set()
    for segment in status.get("segments") or []:
        if isinstance(segment, dict):
            value = next((segment[k] for k in ("tokenBudget", "budget", "endTokens") if k in segment), None)
            if _number(value) is not None:
                ends.add(int(_number(value)))  # type: ignore[arg-type]
    return tuple(sorted(ends))


def marks_from(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> Marks:
    """The marks a run's spec and status (as the API server has them: camelCase) call for; absent ones are None."""
    spec, status = spec or {}, status or {}
    return Marks(_guardrail(spec), _export_tokens(status.get("recommendedExport")), _segment_ends(status))
