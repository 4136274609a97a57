"""What `cpt run` shows: progress from JSON events, plain lines off a terminal, the log's tail on failure."""

from __future__ import annotations

import io
import json

from cpt_pipeline import console as console_module
from cpt_pipeline.console import Console, StageState, parse_event


def step(n: int, total: int = 100) -> str:
    return json.dumps(
        {"event": "train_step", "step": n, "totalSteps": total, "loss": 2.5, "tokensPerSecond": 1234.5, "eta": "1m"}
    )


def test_events_become_one_line_of_progress() -> None:
    state = StageState("train")
    assert state.update(json.loads(step(25)))
    assert state.describe() == "step 25/100 (25%), loss 2.5000, 1,234 tokens/s, ETA 1m"
    prep = StageState("preprocess")
    prep.update({"event": "preprocess_progress", "set": "domain", "rank": 0, "docs": 300, "tokens": 9000})
    prep.update({"event": "preprocess_progress", "set": "domain", "rank": 1, "docs": 200, "tokens": 1000})
    assert prep.describe().startswith("500 documents read (") and prep.describe().endswith("10,000 tokens")
    prep.update({"stage": "preprocess", "rank": 1, "docs_read": 400, "tokens": 2000})  # worker 1's totals
    assert sum(prep.docs.values()) == 700 and sum(prep.tokens.values()) == 11000
    assert not state.update({"event": "something_else"})
    assert parse_event("2026-12-03 INFO x: {not json}") is None and parse_event("[1, 2]") is None


def test_plain_output_is_throttled_and_shows_the_last_step(monkeypatch) -> None:
    out = io.StringIO()
    shown = Console(out, live=False)
    shown.start("train")
    for n in range(1, 100):
        shown.line(step(n))  # within the interval: not shown
    monkeypatch.setattr(console_module, "PLAIN_INTERVAL_SECONDS", 0.0)
    shown.line("a log line that is not an event")
    shown.line(step(100))
    shown.finish(True, "/run/logs/train.log")
    lines = out.getvalue().splitlines()
    assert lines[0] == "== train"
    assert lines[1] == "train: step 100/100 (100%), loss 2.5000, 1,234 tokens/s, ETA 1m"
    assert lines[2].startswith("train: done in ") and lines[2].endswith("(log: /run/logs/train.log)")
    assert len(lines) == 3


def test_a_failed_stage_shows_the_end_of_its_log() -> None:
    out = io.StringIO()
    shown = Console(out, live=False)
    shown.start("preprocess")
    for n in range(40):
        shown.line(f"line {n}")
    shown.line("preprocess failed: spec.data.sources[0].uri: no files match 'x.jsonl'")
    shown.finish(False, "/run/logs/preprocess.log", "rank 0 exited with 4")
    text = out.getvalue()
    assert "preprocess: FAILED after" in text and "rank 0 exited with 4" in text
    assert "  preprocess failed: spec.data.sources[0].uri: no files match 'x.jsonl'" in text
    assert "line 39" in text and "line 10" not in text  # the tail only


def test_the_live_display_draws_and_ends_with_the_done_line() -> None:
    out = io.StringIO()
    shown = Console(out, live=True)
    shown.start("train")
    shown.line(step(50))
    shown.finish(True, "/run/logs/train.log")
    assert out.getvalue().splitlines()[-1].startswith("train: done in ")
    assert "step 50/100" in out.getvalue()
