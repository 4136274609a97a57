"""Evaluation: the shipped local tasks, equality with lm-eval's CLI, perplexity, the stage, deltas."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cpt.api import ContinuedPretrain
from cpt.api.evaluation import PAPER_TASKS, Task, TextSet
from cpt.api.status import EvaluationStatus
from cpt_pipeline.evaluate.harness import TaskDataError, render_tasks, run_tasks, scores, shipped_tasks
from cpt_pipeline.evaluate.perplexity import evaluate_sets, perplexity
from cpt_pipeline.evaluate.results import evaluate_run
from cpt_pipeline.storage import Storage

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def model_dir() -> str:
    from tests.conftest import shared_data_dir

    return str(shared_data_dir() / "models" / "stories260K")


def test_the_seven_shipped_tasks_load_and_run_on_the_shared_benchmarks(model_dir: str, shared_data: Path) -> None:
    assert shipped_tasks() == sorted(name for name, _ in PAPER_TASKS)
    tasks = [Task(name=name, metric=metric, limit=6) for name, metric in PAPER_TASKS]
    results = run_tasks(model_dir, tasks, shared_data / "benchmarks", batch_size="8")
    found = scores(results, tasks)
    assert [s["task"] for s in found] == [name for name, _ in PAPER_TASKS]
    for item in found:
        assert 0.0 <= item["score"] <= 1.0 and item["stderr"] is not None
    singles = [name for name, _ in PAPER_TASKS if name != "mmlu"]
    assert all(results["n-samples"][name]["effective"] == 6 for name in singles)
    assert all(results["configs"][name]["num_fewshot"] == 0 for name in singles)
    subjects = [name for name in results["n-samples"] if name.startswith("mmlu_")]  # a group, as stock MMLU
    assert len(subjects) == 57 and all(results["n-samples"][s]["effective"] == 5 for s in subjects)


def test_our_evaluation_equals_the_lm_eval_cli(model_dir: str, shared_data: Path, tmp_path: Path) -> None:
    tasks = [Task(name="arc_easy", metric="acc_norm", limit=40), Task(name="boolq", metric="acc", limit=40)]
    ours = run_tasks(model_dir, tasks, shared_data / "benchmarks", batch_size="4")
    include = render_tasks(shared_data / "benchmarks", ["arc_easy", "boolq"], tmp_path / "tasks")
    cli = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={model_dir},dtype=float32",
            "--tasks",
            "arc_easy,boolq",
            "--include_path",
            str(include),
            "--num_fewshot",
            "0",
            "--limit",
            "40",
            "--batch_size",
            "4",
            "--device",
            "cpu",
            "--output_path",
            str(tmp_path / "cli"),
            "--seed",
            "1234",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **OFFLINE},
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    (result_file,) = (tmp_path / "cli").rglob("results_*.json")
    theirs = json.loads(result_file.read_text())["results"]
    for task, metrics in (("arc_easy", ("acc", "acc_norm")), ("boolq", ("acc",))):
        for metric in metrics:
            for key in (f"{metric},none", f"{metric}_stderr,none"):
                assert ours["results"][task][key] == theirs[task][key], (task, key)
    assert theirs["arc_easy"]["alias"] == "arc_easy" and ours["n-samples"]["arc_easy"]["effective"] == 40


def test_missing_task_data_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(TaskDataError, match=r"task piqa: data file .*piqa/validation.jsonl not found"):
        render_tasks(tmp_path / "data", ["piqa"], tmp_path / "out")
    with pytest.raises(TaskDataError, match="no local task 'squad'"):
        render_tasks(tmp_path / "data", ["squad"], tmp_path / "out")


def test_mmlu_falls_back_to_dev_without_a_test_file(shared_data: Path, tmp_path: Path) -> None:
    rendered = render_tasks(shared_data / "benchmarks", ["mmlu"], tmp_path)
    text = (rendered / "mmlu_anatomy.yaml").read_text()
    assert f"test: {tmp_path / 'mmlu' / 'anatomy' / 'test.jsonl'}" in text
    dev = [json.loads(line) for line in (shared_data / "benchmarks" / "mmlu" / "dev.jsonl").read_text().splitlines()]
    anatomy = [json.loads(line) for line in (tmp_path / "mmlu" / "anatomy" / "test.jsonl").read_text().splitlines()]
    assert anatomy == [row for row in dev if row["subject"] == "anatomy"] and len(anatomy) == 5


def test_perplexity_equals_the_model_loss(model_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = ["Once upon a time there was a little dog.", "The sun was hot and the girl went home to eat."]
    result = perplexity(model, tokenizer, texts)
    nll = tokens = 0.0
    for text in texts:
        ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss
        nll += float(loss) * (ids.shape[1] - 1)
        tokens += ids.shape[1] - 1
    assert result["tokens"] == tokens
    assert result["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    size = sum(len(t.encode()) for t in texts)
    assert result["bits_per_byte"] == pytest.approx(nll / (size * math.log(2)), rel=1e-5)


def test_long_documents_are_scored_in_windows_without_loss(model_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = " ".join(["The little bird sang a happy song in the tall green tree."] * 120)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) + 1 > model.config.max_position_embeddings
    assert perplexity(model, tokenizer, [text])["tokens"] == len(ids)  # every token predicted exactly once


def test_evaluate_stage_writes_summaries_deltas_and_status(model_dir: str, shared_data: Path, tmp_path: Path) -> None:
    shutil.copytree(model_dir, tmp_path / "out" / "exports" / "tokens-0000000001000")
    # the milestone was 1000 tokens; the export records the 1024 tokens of the whole steps actually trained
    (tmp_path / "out" / "exports" / "tokens-0000000001000" / "export.json").write_text('{"tokens": 1024}')
    doc = {
        "spec": {
            "model": {"uri": model_dir},
            "data": {"sources": [{"name": "s", "uri": "x"}], "tokenBudget": 1000, "sequenceLength": 16},
            "training": {"microBatchSize": 1, "gradAccumulation": 1},
            "evaluation": {
                "tasks": [
                    {"name": "arc_easy", "metric": "acc_norm", "limit": 12},
                    {"name": "piqa", "metric": "acc_norm", "limit": 12},
                ],
                "localTaskDir": str(shared_data / "benchmarks"),
                "batchSize": "4",
                "perplexity": {
                    "domain": {"uri": str(shared_data / "corpora" / "openstax_stem.jsonl"), "maxDocuments": 2},
                    "general": {"uri": str(shared_data / "corpora" / "stories260k_samples.jsonl"), "maxDocuments": 5},
                },
            },
            "storage": {"uri": str(tmp_path / "out")},
        }
    }
    spec = ContinuedPretrain.model_validate(doc).spec
    storage = Storage.from_spec(spec.storage)
    status = evaluate_run(spec, storage)
    assert [m["tokens"] for m in status["milestones"]] == [0, 1024]
    base, milestone = status["milestones"]
    assert [s["task"] for s in milestone["scores"]] == ["arc_easy", "piqa"]
    assert all(s["delta"] == 0.0 for s in milestone["scores"])  # the export is the base model itself
    assert milestone["averageDelta"] == 0.0 and status["latestAverage"] == milestone["average"]
    assert base["domainPerplexity"] > base["generalPerplexity"]  # the stories model knows stories, not textbooks
    summary = storage.read_json("eval", "baseline", "summary.json")
    assert (
        summary["scores"][0]["score"]
        == json.loads((tmp_path / "out" / "eval" / "baseline" / "results.json").read_text())["results"]["arc_easy"][
            "acc_norm,none"
        ]
    )
    stamp = os.path.getmtime(tmp_path / "out" / "eval" / "baseline" / "summary.json")
    evaluate_run(spec, storage)  # already evaluated: skipped
    assert os.path.getmtime(tmp_path / "out" / "eval" / "baseline" / "summary.json") == stamp
    assert json.loads((tmp_path / "out" / "eval" / "status.json").read_text()) == status
    EvaluationStatus.model_validate(status)  # the operator copies this file into status.evaluation as it is


def test_perplexity_sets_read_jsonl_and_text_files(model_dir: str, shared_data: Path, tmp_path: Path) -> None:
    wiki = tmp_path / "wiki.txt"
    wiki.write_text((shared_data / "corpora" / "wikitext2_valid.txt").read_text()[:20000])
    result = evaluate_sets(
        model_dir,
        {
            "general": TextSet(uri=str(shared_data / "corpora" / "stories260k_samples.jsonl"), maxDocuments=3),
            "wiki": TextSet(uri=str(wiki), maxDocuments=1),
        },
    )
    assert result["general"]["documents"] == 3 and result["wiki"]["documents"] == 1
    assert result["wiki"]["perplexity"] > result["general"]["perplexity"]
