"""`cpt sweep`: one valid ContinuedPretrain per combination, with distinct names and storage (no cluster)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from cpt.api.resource import RUN_NAME_MAX, RUN_NAME_PATTERN
from cpt.kube_yaml import load_all
from cpt.sweep import SWEEP_LABEL, VALUES_ANNOTATION, SweepError, expand, parse_setting
from cpt.validation import validate_object
from tests.cpt.test_cli import REPO, cpt

TINY = REPO / "manifests/examples/tiny-cpu.yaml"


def base() -> dict:
    return load_all(TINY.read_text())[0]


def test_cartesian_product_names_labels_and_storage() -> None:
    runs = expand(
        base(), [parse_setting("data.replay.fraction=0,0.05,0.25"), parse_setting("data.tokenBudget=1000000,2000000")]
    )
    assert len(runs) == 6
    names = [r["metadata"]["name"] for r in runs]
    assert names[:2] == ["tiny-cpu-fraction-0-token-budget-1000000", "tiny-cpu-fraction-0-token-budget-2000000"]
    assert len(set(names)) == 6
    combos = {(r["spec"]["data"]["replay"]["fraction"], r["spec"]["data"]["tokenBudget"]) for r in runs}
    assert combos == {(f, b) for f in ("0", "0.05", "0.25") for b in (1_000_000, 2_000_000)}  # typed as fields want
    uris = [r["spec"]["storage"]["uri"] for r in runs]
    assert len(set(uris)) == 6 and all(u == f"runs/tiny-cpu/{n}" for u, n in zip(uris, names, strict=True))
    for run in runs:
        labels = run["metadata"]["labels"]
        assert labels[SWEEP_LABEL] == "tiny-cpu"
        values = json.loads(run["metadata"]["annotations"][VALUES_ANNOTATION])
        assert labels["sweep.cpt.kubecpt.dev/data.replay.fraction"] == values["data.replay.fraction"]
        assert validate_object(run, "x")[1] == []


def test_long_names_are_shortened_within_the_run_name_rules() -> None:
    doc = base()
    doc["metadata"]["name"] = "a-rather-long-base-name-for-a-continued-pretraining-run"
    runs = expand(doc, [parse_setting("data.replay.fraction=0.05,0.25")])
    names = [r["metadata"]["name"] for r in runs]

    assert all(len(n) <= RUN_NAME_MAX and re.match(RUN_NAME_PATTERN, n) for n in names)
    assert len(set(names)) == 2


def test_cli_writes_multi_document_yaml_and_a_folder(tmp_path: Path) -> None:
    result = cpt("sweep", str(TINY), "--set", "data.replay.fraction=0,0.25")
    assert result.returncode == 0, result.stderr
    docs = load_all(result.stdout)
    assert [d["metadata"]["name"] for d in docs] == ["tiny-cpu-fraction-0", "tiny-cpu-fraction-0-25"]
    out = tmp_path / "runs"
    result = cpt("sweep", str(TINY), "--set", "data.replay.fraction=0,0.25", "-o", str(out))
    assert result.returncode == 0, result.stderr
    files = sorted(out.glob("*.yaml"))
    assert [f.name for f in files] == ["tiny-cpu-fraction-0-25.yaml", "tiny-cpu-fraction-0.yaml"]
    validated = cpt("validate", *map(str, files))  # what was written passes `cpt validate` as kubectl reads it
    assert validated.returncode == 0, validated.stderr


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("data.replay.fractoin=0.1", "--set data.replay.fractoin=0.1: spec.data.replay.fractoin:"),
        (
            "data.replay.fraction=0.1,1.5",
            "--set data.replay.fraction=1.5: spec.data.replay.fraction: '1.5' must be a decimal string, >= 0, < 1",
        ),
        ("model.uri.x=1", "--set model.uri.x: spec.model.uri is a value, not an object"),
        ("data.replay.fraction", "--set data.replay.fraction: expected PATH=VALUE"),
        ("storage.uri=a,b", "--set storage.uri: each run's storage is derived"),
    ],
)
def test_bad_settings_are_one_line_naming_the_path(setting: str, words: str) -> None:
    result = cpt("sweep", str(TINY), "--set", setting)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr


def test_a_value_that_breaks_a_cross_field_rule_names_the_run() -> None:
    # tokenBudget 300000 is valid on its own but below the milestone at 400000.
    with pytest.raises(SweepError) as error:
        expand(base(), [parse_setting("data.tokenBudget=300000,2000000")])
    message = str(error.value)
    assert message.startswith("run tiny-cpu-token-budget-300000: spec.data.milestones:"), message
    assert "(with data.tokenBudget=300000)" in message and "\n" not in message


def test_base_must_be_valid(tmp_path: Path) -> None:
    doc = base()
    doc["spec"]["data"]["tokenBudget"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = cpt("sweep", str(path), "--set", "data.replay.fraction=0,0.25")
    assert result.returncode == 1 and "the base file is not valid: base: spec.data.tokenBudget" in result.stderr
