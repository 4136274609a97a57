"""Evaluation summaries written as the evaluate stage writes them, for report tests."""

from __future__ import annotations

from typing import Any

from cpt_pipeline.storage import Storage

# The quickstart as the issue saw it: domain perplexity 19,893 -> 1.26, general 1.89 -> 2.07 (+9.5%).
QUICKSTART = {
    0: {"science_quiz": (0.25, 0.078), "story_quiz": (1.0, 0.0), "domain": 19893.0, "general": 1.887},
    409_600: {"science_quiz": (0.62, 0.087), "story_quiz": (1.0, 0.0), "domain": 1.9, "general": 1.95},
    819_200: {"science_quiz": (0.75, 0.078), "story_quiz": (1.0, 0.0), "domain": 1.4, "general": 2.01},
    1_638_400: {"science_quiz": (0.84, 0.066), "story_quiz": (1.0, 0.0), "domain": 1.26, "general": 2.066},
}


def write_summaries(storage: Storage, rows: dict[int, dict[str, Any]]) -> None:
    """One eval/<model>/summary.json per row: {task: (score, stderr)} plus domain/general perplexity."""
    for tokens, row in rows.items():
        name = "baseline" if tokens == 0 else f"tokens-{tokens:013d}"
        scores = [
            {"task": task, "metric": "acc", "score": value[0], "stderr": value[1]}
            for task, value in row.items()
            if isinstance(value, tuple)
        ]
        perplexity = {which: {"perplexity": row[which]} for which in ("domain", "general") if which in row}
        summary = {
            "name": name,
            "tokens": tokens,
            "model": "m",
            "scores": scores,
            "average": sum(s["score"] for s in scores) / len(scores),
            "perplexity": perplexity,
        }
        storage.write_json(summary, "eval", name, "summary.json")
