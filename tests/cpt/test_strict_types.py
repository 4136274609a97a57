"""`cpt validate` checks types as the CRD's structural schema does: no lax coercion of strings to
booleans or integers, of floats or booleans to integers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpt.kube_yaml import KubeDumper
from cpt.validation import validate_file, validate_object

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((REPO / "manifests" / "examples" / "tiny-cpu.yaml").read_text())


def changed(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(EXAMPLE)
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    node[leaf] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("spec.suspend", "yes", "must be a boolean"),
        ("spec.suspend", "true", "must be a boolean"),
        ("spec.suspend", 1, "must be a boolean"),
        ("spec.training.nodes", "1", "must be an integer"),
        ("spec.training.nodes", True, "must be an integer"),
        ("spec.training.nodes", 1.5, "must be an integer"),
        ("spec.data.sequenceLength", "256", "must be an integer"),
        ("spec.training.optimizer.lr", 0.001, "must be a string"),
        ("spec.model.uri", 7, "must be a string"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(path: str, value: Any, words: str) -> None:
    resource, problems = validate_object(changed(path, value), "x.yaml")
    assert resource is None, f"{path}: {value!r} was accepted"
    assert [(p.path, words in p.message) for p in problems] == [(path, True)], [str(p) for p in problems]


def test_the_yaml_file_is_read_strictly(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.dump(changed("spec.suspend", "yes"), Dumper=KubeDumper))
    resources, problems = validate_file(path)
    assert not resources and [p.path for p in problems] == ["spec.suspend"]


def test_valid_values_still_pass() -> None:
    resource, problems = validate_object(changed("spec.suspend", True), "x.yaml")
    assert problems == [] and resource is not None and resource.spec.suspend is True


@pytest.mark.parametrize(
    "path", ["spec.data.sequenceLength", "spec.training.nodes", "spec.suspend", "spec.training.checkpoint"]
)
def test_null_means_unset_as_the_api_server_prunes_it(path: str) -> None:
    resource, problems = validate_object(changed(path, None), "x.yaml")
    assert problems == [], [str(p) for p in problems]
    assert resource is not None and resource.spec.data.sequence_length == (2000 if "sequence" in path else 256)


def test_null_in_a_map_is_dropped_and_null_where_required_is_refused() -> None:
    doc = changed("spec.training.resources", {"requests": {"cpu": None, "memory": "1Gi"}})
    resource, problems = validate_object(doc, "x.yaml")
    assert problems == [] and resource is not None and resource.spec.training.resources.requests == {"memory": "1Gi"}
    _, problems = validate_object(changed("spec.storage", None), "x.yaml")
    assert [(p.path, p.message) for p in problems] == [("spec.storage", "Field required")]


def test_milestones_are_positive() -> None:
    _, problems = validate_object(changed("spec.data.milestones", [0]), "x.yaml")
    assert [p.path for p in problems] == ["spec.data.milestones[0]"]


def test_a_wrong_type_message_shows_a_scalar_once() -> None:
    _, problems = validate_object(changed("spec.model.uri", []), "x.yaml")
    assert [p.message for p in problems] == ["must be a string, got list"]
    _, problems = validate_object(changed("spec.data.sources", [None]), "x.yaml")
    assert [p.message for p in problems] == ["must be an object, got null"]
