"""The run's name: it is a label value and the prefix of every child's name, so `cpt validate` refuses the names
the API server refuses (the same rules, tests/operator checks them on the server)."""

from __future__ import annotations

import pytest

from cpt.api import ContinuedPretrain
from cpt.validation import validate_object
from tests.cpt.test_spec import minimal


def named(name: str) -> dict[str, object]:
    doc = minimal()
    doc["metadata"]["name"] = name
    return doc


@pytest.mark.parametrize("name", ["a", "run-1", "r" * 63, "mobilellm-125m-fineweb-edu"])
def test_a_dns_label_of_at_most_63_characters_is_a_run_name(name: str) -> None:
    resource, problems = validate_object(named(name), "run.yaml")
    assert problems == [] and isinstance(resource, ContinuedPretrain)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("r" * 64, "at most 63 characters"),
        ("r" * 200, "at most 63 characters"),
        ("paper.v2", "no dots"),
        ("9lives", "start with a lowercase letter"),
        ("run-", "RFC 1035 label"),
    ],
)
def test_other_names_are_refused_with_the_reason(name: str, words: str) -> None:
    resource, problems = validate_object(named(name), "run.yaml")
    assert resource is None and len(problems) == 1 and words in str(problems[0]), problems
