"""The README's first command: the quickstart runs from the repository's own files, offline, and shows what it
claims (the domain learnt on held-out text and a quiz, general perplexity measured on the base model's own
distribution)."""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cpt.kube_yaml import dump, load_all
from tests.test_guardrail_quickstart import with_guardrail

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "manifests" / "examples"


def _build_module():
    spec = importlib.util.spec_from_file_location("quickstart_build", EXAMPLES / "quickstart" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bundled_data_is_what_build_py_generates(tmp_path: Path) -> None:
    """The shipped corpora and quizzes are reproducible from the script (nothing hand-edited or third-party)."""
    build = _build_module()
    build.write_data(tmp_path)
    for name in build.DATA_FILES:
        assert filecmp.cmp(tmp_path / name, EXAMPLES / "quickstart" / name, shallow=False), name
    assert (EXAMPLES / "quickstart" / "NOTICE").exists()
    size = sum(p.stat().st_size for p in (EXAMPLES / "quickstart").rglob("*") if p.is_file())
    assert size < 3 * 2**20, f"the quickstart bundle is {size} bytes"


def _cpt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "cpt"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "NO_PROXY": "*"},
    )


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A folder holding only the quickstart files (no ../shared, no network), after `cpt run` of the quickstart
    with the forgetting guardrail of tests/test_guardrail_quickstart.py (10%, action stop), which 25% replay keeps
    within: training waits for each milestone's verdict and goes on."""
    repo = tmp_path_factory.mktemp("quickstart") / "repo"
    target = repo / "manifests" / "examples"
    shutil.copytree(EXAMPLES / "quickstart", target / "quickstart", ignore=shutil.ignore_patterns("__pycache__"))
    (target / "quickstart.yaml").write_text(with_guardrail((EXAMPLES / "quickstart.yaml").read_text()))
    return repo, _cpt("run", "manifests/examples/quickstart.yaml", cwd=repo)


def test_the_quickstart_runs_from_the_repository_alone(
    quickstart: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Every stage, then the summary."""
    repo, result = quickstart
    text = (EXAMPLES / "quickstart.yaml").read_text()
    assert "shared" not in text and "http" not in text
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = repo / "runs" / "quickstart"
    assert "Table 1" in result.stdout and "domain perplexity:" in result.stdout
    assert (run / "report" / "index.html").exists()
    preprocess = json.loads((run / "data" / "preprocess-status.json").read_text())
    assert preprocess["heldOut"] > 100  # 5% of ~2,000 kept sections; maxDocuments 100 of them are scored
    held = (run / "data" / "heldout" / "domain.jsonl").read_text().splitlines()
    scored = json.loads((run / "eval" / "baseline" / "summary.json").read_text())["perplexity"]["domain"]
    assert len(held) == scored["documents"] == 100
    assert json.loads((run / "train" / "progress.json").read_text())["zeroStage"] == 0
    milestones = json.loads((run / "eval" / "status.json").read_text())["milestones"]
    base, last = milestones[0], milestones[-1]
    quiz = {m["tokens"]: {s["task"]: s["score"] for s in m["scores"]} for m in milestones}
    assert quiz[last["tokens"]]["science_quiz"] >= quiz[0]["science_quiz"] + 0.3  # the facts are learnt
    assert last["domainPerplexity"] < base["domainPerplexity"] / 10  # on held-out sections
    assert base["generalPerplexity"] < 3  # the base model knows its own stories
    assert last["generalPerplexity"] < base["generalPerplexity"] * 1.25  # replay keeps the stories it knew
    guardrail = json.loads((run / "eval" / "status.json").read_text())["guardrail"]
    assert guardrail["breached"] is False and guardrail["recommendedExport"] == "tokens-0000001638400"
    waited = [line for line in (run / "logs" / "train.log").read_text().splitlines() if '"guardrail-verdict"' in line]
    assert [json.loads(line)["breached"] for line in waited] == [False, False]  # at both milestones, not the budget
    rows = [line for line in (run / "report" / "report.md").read_text().splitlines() if "★ recommended" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| ≈ 1.64M ★ recommended"]  # Table 1 marks it


def test_without_replay_the_quickstart_forgets_its_stories(
    quickstart: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """The trade-off: the same run without replay, up to the first milestone only (409,600 tokens, a quarter of
    the budget), against the quickstart's 25% replay at that milestone, as `cpt compare` prints them."""
    repo, result = quickstart
    assert result.returncode == 0, result.stderr[-3000:]
    doc = load_all((EXAMPLES / "quickstart.yaml").read_text())[0]
    doc["metadata"]["name"] = "quickstart-no-replay"
    doc["spec"]["data"]["replay"]["fraction"] = "0"
    doc["spec"]["data"].update(tokenBudget=409_600, milestones=[])
    doc["spec"]["storage"]["uri"] = "runs/quickstart-no-replay"
    (repo / "no-replay.yaml").write_text(dump(doc))
    no_replay = _cpt("run", "no-replay.yaml", cwd=repo)
    assert no_replay.returncode == 0, no_replay.stdout[-2000:] + no_replay.stderr[-3000:]
    compared = _cpt("compare", "no-replay.yaml", "manifests/examples/quickstart.yaml", cwd=repo)
    assert compared.returncode == 0, compared.stderr
    rows = {(r[0], r[2]): r for r in (line.split() for line in compared.stdout.splitlines()[1:]) if len(r) > 5}
    without, with_replay = rows["quickstart-no-replay", "409,600"], rows["quickstart", "409,600"]
    assert (without[1], with_replay[1]) == ("0", "0.25")
    story = compared.stdout.splitlines()[0].split().index("story_quiz")
    assert float(without[story]) < float(with_replay[story]) == 1.0  # without replay it forgets its stories
    assert without[-2:] != with_replay[-2:] and without[-1] == "higher"  # general perplexity rose over 10-fold
    assert with_replay[-1].endswith("%") and float(with_replay[-1].rstrip("%")) < 10  # 25% replay keeps them
