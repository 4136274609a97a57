"""The shipped local tasks produce the same lm-eval requests as the stock tasks of the same name.

The stock configs come from the installed lm-eval, unchanged except that they read the same local files
(`dataset_path: json`) instead of the hub; a stock split with no file is switched off, as it would be for a
hub dataset without it. Requests (type, document, choice, context and continuation) are compared one by
one, zero-shot and few-shot.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from cpt_pipeline.evaluate.harness import SPLIT_KEYS, render_tasks

SINGLE = ["arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande"]
MMLU_SUBJECTS = ["abstract_algebra", "anatomy", "high_school_biology"]


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(path: Path, items: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """Small train/validation(/test) files per task, and an MMLU test + dev pair over three subjects."""
    root = tmp_path_factory.mktemp("benchmarks")
    for task in SINGLE:
        items = rows(shared_data / "benchmarks" / task / "validation.jsonl")[:14]
        write(root / task / "validation.jsonl", items[:6])
        write(root / task / "train.jsonl", items[6:10])
        if task.startswith("arc_"):  # the stock ARC tasks evaluate test when it exists
            write(root / task / "test.jsonl", items[10:14])
    mmlu = [r for r in rows(shared_data / "benchmarks" / "mmlu" / "dev.jsonl") if r["subject"] in MMLU_SUBJECTS]
    write(root / "mmlu" / "test.jsonl", [r for i, r in enumerate(mmlu) if i % 5 < 2])
    write(root / "mmlu" / "dev.jsonl", [r for i, r in enumerate(mmlu) if i % 5 >= 2])
    return root


def build(manager: Any, name: str, overrides: dict[str, Any] | None = None) -> Any:
    return manager._factory._build_task(manager.task_index[name], overrides)


@functools.cache
def stock_manager() -> Any:
    """lm-eval's index of its stock tasks (built once: it reads every shipped YAML)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def stock(name: str, data_files: dict[str, str]) -> Any:
    overrides: dict[str, Any] = {
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files},
    }
    overrides |= {key: None for split, key in SPLIT_KEYS.items() if split not in data_files}
    return build(stock_manager(), name, overrides)


def ours(data: Path, name: str, target: Path, task: str | None = None) -> Any:
    from lm_eval.tasks import TaskManager

    rendered = render_tasks(data, [name], target)
    return build(TaskManager(include_path=str(rendered), include_defaults=False), task or name)


def requests(task: Any, shots: int) -> list[tuple[Any, ...]]:
    task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(rank=0, world_size=1)
    return [(i.request_type, i.doc_id, i.idx, i.arguments) for i in task.instances]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.mark.parametrize("name", SINGLE)
def test_requests_equal_the_stock_task(name: str, data: Path, tmp_path: Path) -> None:
    files = {split: str(data / name / f"{split}.jsonl") for split in SPLIT_KEYS}
    files = {split: path for split, path in files.items() if Path(path).exists()}
    for shots in (0, 2):
        theirs = requests(stock(name, files), shots)
        mine = requests(ours(data, name, tmp_path / f"tasks-{shots}"), shots)
        assert theirs, name
        assert mine == theirs, (name, shots)
    expected_docs = 4 if name.startswith("arc_") else 6  # test when present, else validation
    assert len({doc_id for _, doc_id, *_ in mine}) == expected_docs


@pytest.mark.parametrize("subject", MMLU_SUBJECTS)
def test_mmlu_requests_equal_the_stock_subject_task(subject: str, data: Path, tmp_path: Path) -> None:
    files = {}
    for split in ("test", "dev"):  # the hub's per-subject configuration holds that subject's rows only
        chosen = [r for r in rows(data / "mmlu" / f"{split}.jsonl") if r["subject"] == subject]
        files[split] = str(write(tmp_path / "stock" / f"{split}.jsonl", chosen))
    for shots in (0, 3):
        theirs = requests(stock(f"mmlu_{subject}", files), shots)
        mine = requests(ours(data, "mmlu", tmp_path / f"tasks-{shots}", f"mmlu_{subject}"), shots)
        assert theirs and mine == theirs, (subject, shots)
    words = subject.replace("_", " ")
    assert mine[0][3][0].startswith(f"The following are multiple choice questions (with answers) about {words}.\n\n")


def test_mmlu_is_a_group_of_the_subjects_in_the_data(data: Path, tmp_path: Path) -> None:
    rendered = render_tasks(data, ["mmlu"], tmp_path)
    group = json.loads((rendered / "mmlu.yaml").read_text())
    assert group["group"] == "mmlu" and group["task"] == [f"mmlu_{s}" for s in sorted(MMLU_SUBJECTS)]
    assert group["aggregate_metric_list"] == [{"metric": "acc", "weight_by_size": True}]


def test_arc_with_only_a_test_file_evaluates_test(data: Path, tmp_path: Path) -> None:
    only_test = tmp_path / "data"
    write(only_test / "arc_easy" / "test.jsonl", rows(data / "arc_easy" / "test.jsonl"))
    task = ours(only_test, "arc_easy", tmp_path / "tasks")
    assert task.has_test_docs() and not task.has_validation_docs() and not task.has_training_docs()
    assert len({doc_id for _, doc_id, *_ in requests(task, 0)}) == 4
