"""The generated CRD on a real API server: it is accepted (CEL compiles), it applies the same defaults as
the pydantic models, and it rejects the same invalid resources as `cpt validate`, naming the same field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpt.api import ContinuedPretrain
from cpt.validation import validate_object
from tests.cluster.cluster import Cluster
from tests.cpt.test_spec import INVALID, with_change

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crd" / "continuedpretrains.cpt.kubecpt.dev.yaml"
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


def create(cluster: Cluster, doc: dict[str, Any], namespace: str, check: bool = True):
    doc = {**doc, "metadata": {**doc.get("metadata", {}), "namespace": namespace}}
    return cluster.kubectl("create", "--validate=strict", "-f", "-", input=json.dumps(doc), check=check)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_are_accepted_with_the_same_defaults(crd_installed: Cluster, namespace: str, example: Path) -> None:
    doc = yaml.safe_load(example.read_text())
    create(crd_installed, doc, namespace)
    stored = crd_installed.get_json("cpt", doc["metadata"]["name"], "-n", namespace)
    assert stored["spec"] == ContinuedPretrain.model_validate(doc).to_api()["spec"]


@pytest.mark.parametrize(
    ("change", "value", "path", "words"),
    [case for case in INVALID if case[0] != "kind"],
    ids=[f"{c}-{i}" for i, (c, *_) in enumerate(INVALID) if c != "kind"],
)
def test_server_rejects_what_cpt_validate_rejects(
    crd_installed: Cluster, namespace: str, change: str, value: Any, path: str, words: str
) -> None:
    result = create(crd_installed, with_change(change, value), namespace, check=False)
    assert result.returncode != 0, f"the API server accepted an invalid resource ({change})"
    assert path in result.stderr, result.stderr


def test_printer_columns(crd_installed: Cluster, namespace: str) -> None:
    create(crd_installed, with_change("metadata", {"name": "cols"}), namespace)
    header = crd_installed.kubectl("get", "cpt", "-n", namespace).stdout.splitlines()[0].split()
    assert header == [
        "NAME",
        "PHASE",
        "COMPLETE",
        "TOKENS",
        "STEP",
        "EXPECTED",
        "AVG",
        "SCORE",
        "DOMAIN",
        "PPL",
        "GENERAL",
        "PPL",
        "AGE",
    ]


def test_what_changes_results_is_immutable_once_started(crd_installed: Cluster, namespace: str) -> None:
    create(crd_installed, with_change("metadata", {"name": "frozen"}), namespace)
    edit = ["patch", "cpt", "frozen", "-n", namespace, "--type=merge", "-p"]
    crd_installed.kubectl(*edit, '{"spec":{"data":{"tokenBudget":900000000}}}')  # still Pending: allowed
    crd_installed.kubectl(*edit, '{"status":{"phase":"Training"}}', "--subresource=status")
    result = crd_installed.kubectl(*edit, '{"spec":{"data":{"tokenBudget":800000000}}}', check=False)
    assert result.returncode != 0 and "spec.data is immutable once the run has started" in result.stderr
    result = crd_installed.kubectl(*edit, '{"spec":{"model":{"uri":"other/model"}}}', check=False)
    assert result.returncode != 0 and "spec.model is immutable" in result.stderr
    for section, change in (
        ("training", '{"microBatchSize":2}'),  # the checkpoint plan and milestone steps depend on it
        ("evaluation", '{"baseline":false}'),  # the table would mix settings
        ("storage", '{"uri":"s3://other/run"}'),
    ):
        result = crd_installed.kubectl(*edit, f'{{"spec":{{"{section}":{change}}}}}', check=False)
        assert result.returncode != 0 and f"spec.{section} is immutable" in result.stderr, section
    crd_installed.kubectl(*edit, '{"spec":{"suspend":true}}')  # the rest is applied (docs/operator.md)
    crd_installed.kubectl(*edit, '{"spec":{"runPolicy":{"backoffLimit":5},"scheduling":{"serviceAccountName":"sa"}}}')
    spec = crd_installed.get_json("cpt", "frozen", "-n", namespace)["spec"]
    assert spec["suspend"] is True and spec["scheduling"]["serviceAccountName"] == "sa"


# Values that make a rule's arithmetic fail (a divisor of 0, a product past int64, a decimal past a double):
# the server must refuse them with the field's own message, never "division by zero evaluating rule".
RULE_EDGES = [
    ("spec.training.procsPerNode", 0, "spec.training.procsPerNode", "greater than or equal to 1"),
    ("spec.training.nodes", 0, "spec.training.nodes", "greater than or equal to 1"),
    ("spec.training.microBatchSize", 0, "spec.training.microBatchSize", "greater than or equal to 1"),
    ("spec.training.gradAccumulation", 0, "spec.training.gradAccumulation", "greater than or equal to 1"),
    ("spec.data.sequenceLength", 0, "spec.data.sequenceLength", "greater than or equal to 16"),
    (
        "spec.model.architecture",
        {"hiddenSize": 64, "numLayers": 2, "numHeads": 0},
        "spec.model.architecture.numHeads",
        "greater than or equal to 1",
    ),
    (
        "spec.model.architecture",
        {"hiddenSize": 64, "numLayers": 2, "numHeads": 4, "numKvHeads": 0},
        "spec.model.architecture.numKvHeads",
        "greater than or equal to 1",
    ),
    (
        "spec.training",
        {"nodes": 4096, "procsPerNode": 64, "microBatchSize": 65536, "gradAccumulation": 65536},
        "spec.data.tokenBudget",
        "smaller than one optimizer step",
    ),
    ("spec.training.optimizer.lr", "abc", "spec.training.optimizer.lr", "should match"),
    ("spec.training.optimizer.gradClip", "1e999", "spec.training.optimizer.gradClip", "should match"),
    ("spec.training.schedule", {"type": "wsd", "decayFraction": "x"}, "spec.training.schedule.decayFraction", "match"),
]


@pytest.mark.parametrize(("change", "value", "path", "words"), RULE_EDGES, ids=[c[0] for c in RULE_EDGES])
def test_rule_arithmetic_never_errors_on_the_server(
    crd_installed: Cluster, namespace: str, change: str, value: Any, path: str, words: str
) -> None:
    result = create(crd_installed, with_change(change, value), namespace, check=False)
    assert result.returncode != 0, f"the API server accepted {change}={value!r}"
    assert f"{path}: Invalid value" in result.stderr and words in result.stderr, result.stderr
    for error in ("evaluating rule", "division by zero", "modulus by zero", "overflow", "evaluation error"):
        assert error not in result.stderr, result.stderr
    _, problems = validate_object(with_change(change, value), "edge.yaml")
    assert any(problem.path == path for problem in problems), problems
