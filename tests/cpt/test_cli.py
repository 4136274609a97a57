"""`cpt validate` and `cpt crd` as a user runs them (the installed console script)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cpt.crd import build_crd

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


def cpt(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cpt", path=str(Path(sys.executable).parent))
    assert exe, "the `cpt` console script is not installed in this environment (pip install -e .)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert "tiny-cpu.yaml" in names and len(names) >= 2


def test_validate_accepts_every_example() -> None:
    result = cpt("validate", *map(str, EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": valid (") == len(EXAMPLES)


def test_validate_reports_field_paths_and_fails(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "manifests/examples/tiny-cpu.yaml").read_text())
    doc["spec"]["data"]["milestones"] = [900000, 400000]
    doc["spec"]["training"]["optimizer"]["lr"] = 0.001
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = cpt("validate", str(bad), str(EXAMPLES[0]))
    assert result.returncode == 1
    assert f"{bad}: spec.data.milestones: milestones must be strictly ascending" in result.stderr
    assert f"{bad}: spec.training.optimizer.lr: must be a string, got number 0.001" in result.stderr
    assert ": valid (" in result.stdout  # the good file is still reported


@pytest.mark.parametrize(
    ("content", "words"),
    [("spec: [unclosed", "not valid YAML"), ("", "no YAML document"), ("- a\n- b\n", "expected a mapping")],
)
def test_validate_reports_unusable_files(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(content)
    result = cpt("validate", str(path))
    assert result.returncode == 1 and words in result.stderr and str(path) in result.stderr


def test_validate_names_a_missing_file(tmp_path: Path) -> None:
    result = cpt("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1 and "nope.yaml" in result.stderr and "cannot read" in result.stderr


def test_multi_document_files_name_the_document(tmp_path: Path) -> None:
    good = (REPO / "manifests/examples/tiny-cpu.yaml").read_text()
    path = tmp_path / "two.yaml"
    path.write_text(good + "\n---\n" + good.replace("tokenBudget: 1200000", "tokenBudget: -5"))
    result = cpt("validate", str(path))
    assert result.returncode == 1
    assert f"{path}#1: spec.data.tokenBudget:" in result.stderr and f"{path}#0" not in result.stderr


def test_crd_command_prints_the_generated_crd() -> None:
    result = cpt("crd")
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout) == build_crd()


def test_unknown_subcommand_is_an_error() -> None:
    result = cpt("run-everything")
    assert result.returncode == 2 and "invalid choice" in result.stderr
