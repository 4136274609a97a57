"""YAML as kubectl reads it: the scalars where PyYAML and sigs.k8s.io/yaml disagree."""

from __future__ import annotations

import pytest

from cpt.kube_yaml import dump, load_all
from cpt.validation import validate_object


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-4", 1e-4),
        ("-2E+3", -2000.0),
        ("1.5e-4", 1.5e-4),
        ("y", True),
        ("N", False),
        ("yes", True),
        ("off", False),
        ('"1e-4"', "1e-4"),
        ("'n'", "n"),
        ("1e-4x", "1e-4x"),
        ("name", "name"),
    ],
)
def test_scalars_resolve_like_kubectl(text: str, expected: object) -> None:
    assert load_all(f"v: {text}\n") == [{"v": expected}]


@pytest.mark.parametrize("value", ["1e-4", "0.005", "10", "y", "n", "on", "NO", "null", "", "~", ".inf", "1_000"])
def test_dump_quotes_what_kubectl_would_misread(value: str) -> None:
    text = dump({"v": value})
    assert text.startswith('v: "'), text
    assert load_all(text) == [{"v": value}]


def test_unquoted_scientific_lr_is_rejected_like_the_api_server_does() -> None:
    (doc,) = load_all(
        "spec:\n  model: {uri: m}\n  data: {sources: [{name: a, uri: b}], tokenBudget: 1000000000}\n"
        "  storage: {uri: s3://b/p}\n  training:\n    optimizer: {lr: 1e-4}\n"
    )
    resource, problems = validate_object(doc, "x.yaml")
    assert resource is None
    assert [(p.path, p.message) for p in problems] == [
        ("spec.training.optimizer.lr", "must be a string, got number 0.0001")
    ]
