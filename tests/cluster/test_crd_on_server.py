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
    result = crd_installed.kubectl(*edit, '{"spec":{"data":{"sequenceLength":1024}}}', check=False)
    assert result.returncode != 0 and "spec.data.sequenceLength is immutable once the run has started" in result.stderr
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


def test_a_started_run_may_only_grow_its_budget_and_append_milestones(crd_installed: Cluster, namespace: str) -> None:
    """The study's 400M -> 1B as one edit: the budget may rise and milestones be appended above the old
    budget; shrinking, dropping or inserting a milestone, and every other data field, are refused by name."""
    create(crd_installed, with_change("metadata", {"name": "grow"}), namespace)  # 1B, milestones [400M]
    edit = ["patch", "cpt", "grow", "-n", namespace, "--type=merge", "-p"]
    crd_installed.kubectl(*edit, '{"status":{"phase":"Succeeded"}}', "--subresource=status")
    refused = {
        '{"tokenBudget":2000000000,"milestones":[400000000,1000000000]}': "spec.data.milestones may only be appended",
        '{"tokenBudget":900000000}': "spec.data.tokenBudget may only grow",
        '{"milestones":[]}': "spec.data.milestones may only be appended to",
        '{"tokenBudget":2000000000,"milestones":[400000000,900000000]}': "spec.data.milestones may only be appended",
        '{"replay":{"source":{"name":"gen","uri":"s3://b/gen/*.jsonl"}}}': "spec.data.replay is immutable",
        '{"sources":[{"name":"edu","uri":"s3://b/other/*.jsonl"}]}': "spec.data.sources is immutable",
        '{"preprocessing":{"workers":8}}': "spec.data.preprocessing is immutable",
    }
    for change, words in refused.items():
        result = crd_installed.kubectl(*edit, f'{{"spec":{{"data":{change}}}}}', check=False)
        assert result.returncode != 0 and words in result.stderr, (change, result.stderr)
    grown = '{"spec":{"data":{"tokenBudget":2000000000,"milestones":[400000000,1200000000,1500000000]}}}'
    crd_installed.kubectl(*edit, grown)
    crd_installed.kubectl(*edit, '{"spec":{"data":{"tokenBudget":2000000001}}}')  # one more step of 320,000 tokens
    for change, words in {  # growth within the old budget's last step: no step to train, no export of its own
        '{"tokenBudget":2000000002}': "by at least one optimizer step",
        '{"tokenBudget":2100000000,"milestones":[400000000,1200000000,1500000000,2000100000]}': "in steps after",
    }.items():
        result = crd_installed.kubectl(*edit, f'{{"spec":{{"data":{change}}}}}', check=False)
        assert result.returncode != 0 and words in result.stderr, (change, result.stderr)
    data = crd_installed.get_json("cpt", "grow", "-n", namespace)["spec"]["data"]
    assert (data["tokenBudget"], data["milestones"]) == (2_000_000_001, [400_000_000, 1_200_000_000, 1_500_000_000])
