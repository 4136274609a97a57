"""The summary `cpt run` ends with, from the evaluation summaries in storage."""

from __future__ import annotations

from pathlib import Path

from cpt_pipeline.report.summary import run_summary
from cpt_pipeline.storage import Storage


def summary(tokens: int, score: float, domain: float, general: float) -> dict:
    return {
        "tokens": tokens,
        "scores": [{"task": "arc_easy", "score": score}],
        "average": score,
        "perplexity": {"domain": {"perplexity": domain}, "general": {"perplexity": general}},
    }


def test_the_summary_shows_table_1_the_perplexity_changes_and_the_report(tmp_path: Path) -> None:
    storage = Storage.open_uri(str(tmp_path))
    assert run_summary(storage) == ""  # nothing evaluated yet
    storage.write_json(summary(0, 0.25, 20.0, 4.0), "eval", "baseline", "summary.json")
    storage.write_json(summary(24576, 0.3, 13.0, 5.0), "eval", "tokens-0000000024576", "summary.json")
    storage.write_text("<html>", "report", "index.html")
    text = run_summary(storage)
    lines = text.splitlines()
    assert lines[0] == "Table 1: benchmark performance across token volumes"
    assert lines[1:4] == [
        "  CPT Tokens  ARC Easy     Avg",
        "    0 (Base)    0.2500  0.2500",
        "     ≈ 24.6K    0.3000  0.3000",
    ]
    assert "domain perplexity: 20.000 at 0 tokens -> 13.000 at 24,576 tokens (-35.0%)" in text
    assert "general perplexity: 4.000 at 0 tokens -> 5.000 at 24,576 tokens (+25.0%)" in text
    assert lines[-1] == f"report: {tmp_path}/report/index.html"


def test_a_fall_of_more_than_ten_times_is_given_as_a_factor(tmp_path: Path) -> None:
    storage = Storage.open_uri(str(tmp_path))
    storage.write_json(summary(0, 0.25, 20000.0, 2.0), "eval", "baseline", "summary.json")
    storage.write_json(summary(4096, 0.5, 1.6, 2.1), "eval", "tokens-0000000004096", "summary.json")
    assert "domain perplexity: 20000.000 at 0 tokens -> 1.600 at 4,096 tokens (12,500x lower)" in run_summary(storage)
    storage.write_json(summary(0, 0.25, 2.0, 1.9), "eval", "baseline", "summary.json")
    storage.write_json(summary(4096, 0.5, 1.6, 259293.9), "eval", "tokens-0000000004096", "summary.json")
    assert "general perplexity: 1.900 at 0 tokens -> 259293.900 at 4,096 tokens (136,470x higher)" in run_summary(
        storage
    )
