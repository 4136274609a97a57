"""`cpt run`: every stage of a ContinuedPretrain on this machine, end to end (a small budget)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from cpt.kube_yaml import dump
from tests.tiny_cpu import tiny_cpu_run

REPO = Path(__file__).resolve().parent.parent


def test_cpt_run_takes_the_tiny_example_through_every_stage(tmp_path: Path) -> None:
    path = tiny_cpu_run(tmp_path, 12, [6])  # 12 steps of 1 x 8 x 256 tokens, a milestone at 6
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cpt"), "run", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = tmp_path / "run"
    status = json.loads((run / "data" / "preprocess-status.json").read_text())
    assert status["tokens"] > 0 and status["replayTokens"] > 0
    assert sorted(os.listdir(run / "exports")) == ["tokens-0000000012288", "tokens-0000000024576"]
    evaluation = json.loads((run / "eval" / "status.json").read_text())
    assert [m["tokens"] for m in evaluation["milestones"]] == [0, 12288, 24576]
    assert all(m["generalPerplexity"] and m["domainPerplexity"] for m in evaluation["milestones"])
    assert (run / "report" / "index.html").stat().st_size > 50_000
    assert "== summary\nTable 1" in result.stdout and "domain perplexity:" in result.stdout
    # the screen shows progress lines; the stages' JSON events, logs and warnings are in the run's logs
    assert '"event"' not in result.stdout + result.stderr and "FutureWarning" not in result.stdout + result.stderr
    assert "train: step 12/12 (100%)" in result.stdout and "train: done in" in result.stdout
    train_log = (run / "logs" / "train.log").read_text()
    assert '"event": "train_step"' in train_log
    assert f"on 1 cpu process(es) ({os.cpu_count()} threads each)" in train_log  # one process uses every core
    assert sorted(os.listdir(run / "logs")) == [
        f"{s}.log" for s in ("dedup", "evaluate", "preprocess", "report", "train")
    ]
    assert [line.split(" | ")[0] for line in (run / "report" / "table.md").read_text().splitlines()[2:]] == [
        "| 0 (Base)",
        "| ≈ 12.3K",
        "| ≈ 24.6K",
    ]


def test_cpt_run_refuses_a_multi_node_spec_locally(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "paper-mobilellm-fineweb-edu.yaml").read_text())
    path = tmp_path / "paper.yaml"
    path.write_text(dump(doc))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cpt"), "run", str(path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and "a local run uses one node, but spec.training.nodes is 3" in result.stderr


def test_a_failing_stage_shows_the_end_of_its_log_and_where_the_log_is(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "quickstart.yaml").read_text())
    doc["spec"]["model"]["uri"] = str(REPO / "manifests" / "examples" / "quickstart" / "model")
    doc["spec"]["data"]["sources"][0]["uri"] = str(tmp_path / "missing.jsonl")
    doc["spec"]["storage"]["uri"] = str(tmp_path / "run")
    path = tmp_path / "broken.yaml"
    path.write_text(dump(doc))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cpt"), "run", str(path), "--stages", "preprocess"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "preprocess: FAILED after" in result.stdout
    assert "missing.jsonl" in result.stdout  # the worker's one-line error, from the log's tail
    log = tmp_path / "run" / "logs" / "preprocess.log"
    assert f"(log: {log})" in result.stderr and "missing.jsonl" in log.read_text()
    assert "Traceback" not in result.stdout + result.stderr
