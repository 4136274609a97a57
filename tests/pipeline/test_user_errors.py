"""A user's mistake ends a stage with one clear line and a documented exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cpt.exit_codes import EXIT_BAD_INPUT, EXIT_INVALID_SPEC, EXIT_UNAVAILABLE
from cpt.kube_yaml import dump
from cpt_pipeline.errors import exit_code_for
from cpt_pipeline.preprocess.readers import SourceReadError
from cpt_pipeline.train.data import DataError

REPO = Path(__file__).resolve().parents[2]


def resource(tmp_path: Path, shared_data: Path, **changes: Any) -> Path:
    spec: dict[str, Any] = {
        "model": {"uri": str(shared_data / "models" / "stories260K")},
        "data": {
            "sources": [{"name": "d", "uri": str(shared_data / "corpora" / "openstax_stem.jsonl")}],
            "sequenceLength": 64,
            "tokenBudget": 1024,
            "decontamination": {"enabled": False},
        },
        "training": {"microBatchSize": 2, "gradAccumulation": 1, "deepspeed": {"zeroStage": 0}},
        "evaluation": {"tasks": [{"name": "piqa", "limit": 2}], "localTaskDir": str(tmp_path / "no-tasks")},
        "storage": {"uri": str(tmp_path / "out")},
    }
    for path, value in changes.items():
        node = spec
        *parents, last = path.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    doc = {"apiVersion": "cpt.kubecpt.dev/v1alpha1", "kind": "ContinuedPretrain", "metadata": {"name": "t"}}
    target = tmp_path / "cpt.yaml"
    target.write_text(dump({**doc, "spec": spec}))
    return target


def stage(name: str, spec: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "cpt_pipeline", name, "--spec", str(spec), "--world-size", "1", *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )


def failure_line(result: subprocess.CompletedProcess[str], name: str) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if f"{name} failed: " in line]
    assert len(lines) >= 1, result.stderr[-3000:]
    return lines[0]


def test_a_missing_source_file(tmp_path: Path, shared_data: Path) -> None:
    missing = str(tmp_path / "nowhere" / "*.jsonl")
    result = stage("preprocess", resource(tmp_path, shared_data, data__sources=[{"name": "d", "uri": missing}]))
    assert result.returncode == EXIT_BAD_INPUT
    assert f"source 'd': no files match '{missing}'" in failure_line(result, "preprocess")


def test_missing_task_data_and_debug_shows_the_traceback(tmp_path: Path, shared_data: Path) -> None:
    spec = resource(tmp_path, shared_data)
    result = stage("evaluate", spec)
    assert result.returncode == EXIT_BAD_INPUT
    line = failure_line(result, "evaluate")
    assert f"spec.evaluation.localTaskDir: {tmp_path / 'no-tasks'}: no such directory" in line
    debug = stage("evaluate", spec, "--debug")
    assert debug.returncode == EXIT_BAD_INPUT and "Traceback" in debug.stderr


def test_a_missing_model_stops_training_with_the_bad_input_code(tmp_path: Path, shared_data: Path) -> None:
    spec = resource(tmp_path, shared_data)
    assert stage("preprocess", spec).returncode == 0 and stage("dedup", spec).returncode == 0
    missing = tmp_path / "no-model"
    result = stage("train", resource(tmp_path, shared_data, model__uri=str(missing)))
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-3000:]
    assert f"spec.model.uri: {missing}: no such directory" in failure_line(result, "train")


def test_an_invalid_spec_lists_its_problems(tmp_path: Path, shared_data: Path) -> None:
    result = stage("preprocess", resource(tmp_path, shared_data, data__tokenBudget="lots"))
    assert result.returncode == EXIT_INVALID_SPEC and "spec.data.tokenBudget" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (DataError("shards missing"), EXIT_BAD_INPUT),
        (FileNotFoundError("x"), EXIT_BAD_INPUT),
        (SourceReadError("s3://b/x: read failed"), EXIT_UNAVAILABLE),
        (ConnectionResetError("reset"), EXIT_UNAVAILABLE),
        (KeyError("bug"), None),
        (ZeroDivisionError(), None),
    ],
)
def test_user_errors_and_bugs_are_told_apart(error: BaseException, code: int | None) -> None:
    assert exit_code_for(error) == code
