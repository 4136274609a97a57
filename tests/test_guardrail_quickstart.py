"""The forgetting guardrail on a real run: the quickstart without replay forgets its stories (general perplexity
2.0 -> ~1,500 by its first 409,600-token milestone), so a 10% budget with action stop ends training right after
that milestone's evaluation: no optimizer step after it. An early milestone (8 steps in) is still within the
budget: it is the recommended export, and the report marks it. (25% replay stays within the same budget:
tests/test_quickstart.py runs the shipped quickstart with it.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EARLY, BREACH = 16_384, 409_600  # tokens: 8 and 200 optimizer steps of 2,048 tokens
EARLY_EXPORT = f"tokens-{EARLY:013d}"
GUARDRAIL = '    guardrail: {general: {maxIncrease: "0.10"}, action: stop}\n'


def edited(text: str, *changes: tuple[str, str]) -> str:
    """The quickstart's YAML with lines replaced as they are written (a YAML round trip would unquote "3e-3")."""
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def with_guardrail(text: str) -> str:
    return edited(text, ("  evaluation:\n", "  evaluation:\n" + GUARDRAIL))


def guarded_quickstart(tmp_path: Path, fraction: str) -> Path:
    text = (REPO / "manifests" / "examples" / "quickstart.yaml").read_text()
    path = tmp_path / "quickstart.yaml"
    path.write_text(
        edited(
            with_guardrail(text),
            ('fraction: "0.25"', f'fraction: "{fraction}"'),
            ("milestones: [409600, 819200]", f"milestones: [{EARLY}, {BREACH}, 819200]"),
            ("uri: runs/quickstart\n", f"uri: {tmp_path / 'run'}\n"),
        )
    )
    return path


def test_without_replay_the_guardrail_stops_training_after_the_breaching_milestones_evaluation(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cpt"), "run", str(guarded_quickstart(tmp_path, "0"))],
        capture_output=True,
        text=True,
        cwd=REPO,  # the quickstart's paths are relative to the repository root
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "NO_PROXY": "*"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "ForgettingBudgetExceeded: forgetting budget exceeded at 409600 tokens: general perplexity" in output
    run = tmp_path / "run"
    steps = [r["step"] for r in map(json.loads, (run / "train" / "metrics.jsonl").read_text().splitlines())]
    assert steps == list(range(1, 201)) and json.loads((run / "train" / "progress.json").read_text())["step"] == 200
    assert not (run / "train" / "complete.json").exists()
    early = json.loads((run / "eval" / EARLY_EXPORT / "guardrail.json").read_text())
    breach = json.loads((run / "eval" / f"tokens-{BREACH:013d}" / "guardrail.json").read_text())
    assert early["breached"] is False and early["recommendedExport"] == EARLY_EXPORT
    assert breach["breached"] is True and breach["breachedAt"] == BREACH
    assert breach["recommendedExport"] == EARLY_EXPORT and breach["action"] == "stop"
    status = json.loads((run / "eval" / "status.json").read_text())
    assert [m["tokens"] for m in status["milestones"]] == [0, EARLY, BREACH]  # nothing trained past the breach
    assert status["guardrail"]["breachedAt"] == BREACH and status["guardrail"]["recommendedExport"] == EARLY_EXPORT
    events = [json.loads(line) for line in (run / "logs" / "train.log").read_text().splitlines() if line[:1] == "{"]
    kinds = ("train_step", "guardrail-verdict")
    order = [(e["event"], e.get("step") or e.get("name")) for e in events if e.get("event") in kinds]
    verdicts = [(e["name"], e["breached"]) for e in events if e.get("event") == "guardrail-verdict"]
    assert verdicts == [(EARLY_EXPORT, False), (f"tokens-{BREACH:013d}", True)]
    assert order.index(("guardrail-verdict", EARLY_EXPORT)) == order.index(("train_step", 8)) + 1  # waited at step 8
    assert order[-2:] == [("train_step", 200), ("guardrail-verdict", f"tokens-{BREACH:013d}")]  # and no step after
    table = (run / "report" / "report.md").read_text()
    assert "★ recommended" in next(line for line in table.splitlines() if line.startswith("| ≈ 16.4K"))
