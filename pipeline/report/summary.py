"""The few lines `cpt run` ends with: Table 1, how domain and general perplexity moved, where the report is."""

from __future__ import annotations

from typing import Any

from cpt_pipeline.evaluate.results import load_summaries
from cpt_pipeline.report.report import table
from cpt_pipeline.storage import Storage


def _change(summaries: list[dict[str, Any]], which: str) -> str | None:
    values = [
        (s["tokens"], s.get("perplexity", {}).get(which, {}).get("perplexity"))
        for s in summaries
        if s.get("perplexity", {}).get(which, {}).get("perplexity")
    ]
    if len(values) < 2:
        return None
    (first_tokens, first), (last_tokens, last) = values[0], values[-1]
    change = f"{(last - first) / first:+.1%}"
    if last < first / 10:  # "-100.0%" would hide how much: say the factor
        change = f"{first / last:,.0f}x lower"
    elif last > first * 10:
        change = f"{last / first:,.0f}x higher"
    return (
        f"{which} perplexity: {first:.3f} at {first_tokens:,} tokens -> {last:.3f} at {last_tokens:,} tokens ({change})"
    )


def run_summary(storage: Storage) -> str:
    """The summary of a run's evaluations and report, as plain text; empty when nothing was evaluated."""
    summaries = load_summaries(storage)
    if not summaries:
        return ""
    header, rows = table(summaries)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["Table 1: benchmark performance across token volumes"]
    for cells in (header, *rows):
        lines.append("  " + "  ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True)))
    lines += [line for line in (_change(summaries, "domain"), _change(summaries, "general")) if line]
    if storage.exists("report", "index.html"):
        lines.append(f"report: {storage.url('report', 'index.html')}")
    return "\n".join(lines)
