"""Counters for the document funnel, kept in one place (not in every step) and mergeable across workers."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_EXAMPLES = 20

# Counter keys (constants, so that the operator and the report read the same names).
DOCS_READ = "docs_read"
DOCS_KEPT = "docs_kept"
DOCS_TOKENIZED = "docs_tokenized"
DUPLICATES = "duplicates"
NEAR_DUPLICATES = "near_duplicates"
CONTAMINATED = "contaminated"
HELD_OUT = "held_out"
BAD_RECORDS = "bad_records"
TOKENS = "tokens"
DROPPED_PREFIX = "dropped_"
BAD_PREFIX = "bad_"


@dataclass
class Stats:
    """Counts plus a few examples of bad records (file and line) per kind."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def dropped(self, reason: str) -> None:
        self.counts[DROPPED_PREFIX + reason] += 1

    def bad_record(self, kind: str, where: str) -> None:
        self.counts[BAD_RECORDS] += 1
        self.counts[BAD_PREFIX + kind] += 1
        found = self.examples.setdefault(kind, [])
        if len(found) < MAX_EXAMPLES:
            found.append(where)

    def merge(self, other: Stats) -> Stats:
        self.counts.update(other.counts)
        for kind, found in other.examples.items():
            mine = self.examples.setdefault(kind, [])
            mine.extend(found[: MAX_EXAMPLES - len(mine)])
        self.seconds = max(self.seconds, other.seconds)
        return self

    def dropped_by_reason(self) -> dict[str, int]:
        return {
            k.removeprefix(DROPPED_PREFIX): v for k, v in sorted(self.counts.items()) if k.startswith(DROPPED_PREFIX)
        }

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "examples": self.examples, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        return cls(Counter(data.get("counts", {})), dict(data.get("examples", {})), float(data.get("seconds", 0.0)))

    def summary(self) -> str:
        c = self.counts
        kept = f"kept {c[DOCS_KEPT]}" if DOCS_KEPT in c else f"tokenized {c[DOCS_TOKENIZED]}"
        line = (
            f"read {c[DOCS_READ]} docs, {kept}, duplicates {c[DUPLICATES] + c[NEAR_DUPLICATES]}, "
            f"contaminated {c[CONTAMINATED]}, bad records {c[BAD_RECORDS]}, tokens {c[TOKENS]}"
        )
        dropped = ", ".join(f"{k}={v}" for k, v in self.dropped_by_reason().items())
        return line + (f"; dropped: {dropped}" if dropped else "")
