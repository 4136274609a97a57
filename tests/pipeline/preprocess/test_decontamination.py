"""Decontamination against what is evaluated: the evaluated split of each task (not its training split, not
id or label fields), and a loud note when the tasks come from the hub and nothing is decontaminated."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from cpt_pipeline.preprocess.decontam import Decontaminator
from tests.pipeline.preprocess.helpers import document, make_spec, write_jsonl
from tests.pipeline.preprocess.test_pipeline import run

TRAIN_QUESTION = (
    "Which property of a copper wire changes the most when the wire is heated slowly over a candle flame for "
    "ten minutes?"
)


def quoting(seed: int, item: dict) -> str:
    return document(seed) + "\n" + item["question"] + " " + " ".join(item["choices"]["text"])


def test_only_the_evaluated_split_is_indexed(tmp_path: Path, shared_data: Path) -> None:
    validation = shared_data / "benchmarks" / "arc_easy" / "validation.jsonl"
    evaluated = next(i for i in map(json.loads, validation.open()) if len(i["question"].split()) >= 15)
    trained = {"id": "T1", "question": TRAIN_QUESTION, "choices": {"text": ["length", "resistance"]}, "answerKey": "B"}
    tasks = tmp_path / "tasks"
    (tasks / "arc_easy").mkdir(parents=True)
    shutil.copy(validation, tasks / "arc_easy" / "validation.jsonl")
    write_jsonl(tasks / "arc_easy" / "train.jsonl", [trained])  # few-shot examples: never scored
    write_jsonl(tmp_path / "in" / "d.jsonl", [document(0), quoting(1, evaluated), quoting(2, trained)])
    spec = make_spec(
        tmp_path / "out",
        [{"name": "d", "uri": str(tmp_path / "in")}],
        evaluation={"tasks": [{"name": "arc_easy"}], "localTaskDir": str(tasks)},
        decontamination={"enabled": True},
    )
    summary = run(spec, world=1)
    assert summary["contaminated"] == 1 and summary["docsKept"] == 2
    assert "from 1 files" in summary["decontamination"]


def test_id_and_label_fields_are_not_indexed(tmp_path: Path) -> None:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    path = write_jsonl(tmp_path / "validation.jsonl", [{"question": " ".join(words)}])
    record = json.loads(path.read_text())
    path.write_text(json.dumps({"id": "nu", **record, "label": "xi"}) + "\n")
    index = Decontaminator.from_files([path], 13)
    assert len(index) == 0  # 12 words of text: an id and a label must not make them a 13-gram
    assert not index.contaminated("nu " + " ".join(words) + " xi")


def test_hub_tasks_decontaminate_nothing_and_say_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_jsonl(tmp_path / "in" / "d.jsonl", [document(i) for i in range(5)])
    spec = make_spec(tmp_path / "out", [{"name": "d", "uri": str(tmp_path / "in")}], decontamination={"enabled": True})
    with caplog.at_level(logging.WARNING):
        summary = run(spec, world=1)
    assert summary["decontamination"].startswith("skipped: nothing was decontaminated")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("nothing was decontaminated" in w and "evaluation.localTaskDir" in w for w in warnings), warnings
