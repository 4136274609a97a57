"""The generated CRD: committed copy is current, and the schema is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cpt.crd import build_crd, render_crd

CRD_PATH = Path(__file__).resolve().parents[2] / "manifests" / "crd" / "continuedpretrains.cpt.kubecpt.dev.yaml"


def schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node below (and including) node, with a readable path."""
    found = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        found += walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_committed_crd_is_current() -> None:
    assert CRD_PATH.read_text(encoding="utf-8") == render_crd(), (
        f"{CRD_PATH} is stale: regenerate with `cpt crd -o {CRD_PATH.relative_to(CRD_PATH.parents[2])}`"
    )


def test_schema_has_no_refs_and_every_node_has_a_type() -> None:
    text = yaml.safe_dump(schema())
    assert "$ref" not in text and "$defs" not in text
    untyped = [p for p, n in walk(schema()) if "type" not in n and not n.get("x-kubernetes-int-or-string")]
    assert untyped == []


def test_structural_restrictions() -> None:
    for path, node in walk(schema()):
        assert node.get("additionalProperties") is not False, path
        assert not ({"properties", "additionalProperties"} <= node.keys()), path
        assert "anyOf" not in node or node.get("x-kubernetes-int-or-string"), path
        for key in ("title", "const", "oneOf", "allOf", "$schema"):
            assert key not in node, f"{path} has {key}"
        if "nullable" in node:
            assert node["nullable"] is True, path


# Words that YAML 1.1 (kubectl, sigs.k8s.io/yaml) reads as booleans when unquoted.
YAML11_BOOLS = {w for b in ("y", "yes", "n", "no", "true", "false", "on", "off") for w in (b, b.title(), b.upper())}


def test_no_field_name_is_a_yaml11_boolean() -> None:
    names = {name for _, node in walk(schema()) for name in node.get("properties", {})}
    assert not names & YAML11_BOOLS, "users writing such a key unquoted would send a boolean to the API server"


def test_int_or_string_quantities() -> None:
    nodes = dict(walk(schema()))
    quantity = nodes[".spec.training.resources.requests{}"]
    assert quantity["x-kubernetes-int-or-string"] is True
    assert quantity["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert "pattern" in quantity


def test_defaults_validations_and_enums_are_published() -> None:
    nodes = dict(walk(schema()))
    assert nodes[".spec.data.sequenceLength"]["default"] == 2000
    assert nodes[".spec.training.deepspeed.zeroStage"] == {
        **nodes[".spec.training.deepspeed.zeroStage"],
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "default": "auto",
    }
    stage_rules = [r["rule"] for r in nodes[".spec.training.deepspeed"]["x-kubernetes-validations"]]
    assert "string(self.zeroStage) in ['0', '1', '2', '3', 'auto']" in stage_rules
    assert nodes[".spec.training"]["default"]["optimizer"]["lr"] == "1e-4"
    assert len(nodes[".spec.evaluation.tasks"]["default"]) == 7
    assert set(nodes[".spec.data.sources[].format"]["enum"]) == {"jsonl", "parquet", "hf"}
    rules = [r["rule"] for r in nodes[".spec.data"]["x-kubernetes-validations"]]
    assert any("isSorted()" in r for r in rules)
    assert any("tokenBudget" in r for r in rules)
    replay = nodes[".spec.data.replay.fraction"]["x-kubernetes-validations"][0]["rule"]
    assert replay.endswith("|| (double(self) >= 0.0 && double(self) < 1.0)")  # after the not-a-decimal guard
    transition = [r for r in schema()["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    data_fields = ("sources", "replay", "filters", "dedup", "decontamination", "sequenceLength", "preprocessing")
    assert {r["fieldPath"] for r in transition} == {
        ".spec.model",
        ".spec.training",
        ".spec.evaluation",
        ".spec.storage",
        *(f".spec.data.{name}" for name in data_fields),
        ".spec.data.tokenBudget",  # may grow: the run continues (docs/training.md)
        ".spec.data.milestones",  # may be appended to
    }


def test_lists_with_rules_are_bounded_for_cel_cost() -> None:
    nodes = dict(walk(schema()))
    for path in (".spec.data.sources", ".spec.data.milestones", ".spec.evaluation.tasks"):
        assert "maxItems" in nodes[path], path


def test_status_subresource_and_printer_columns() -> None:
    version = build_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Tokens", "Step", "Avg Score", "Age"} <= columns.keys()
    assert columns["Complete"]["jsonPath"] == '.status.conditions[?(@.type=="Complete")].status'
    assert all("[-1:]" not in c["jsonPath"] for c in columns.values())
    assert columns["Age"]["type"] == "date"


def test_names_and_scope() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "continuedpretrains.cpt.kubecpt.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["shortNames"] == ["cpt"]
    assert schema()["properties"]["metadata"] == {"type": "object"}


def test_the_status_lists_of_exports_hold_every_milestone_and_the_budget() -> None:
    """64 milestones below the budget make 65 exports: the trainer's push and the operator's record of them must both
    be accepted (else the run stays in Evaluating, its every status write refused)."""
    from cpt.api.base import MAX_LIST

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    status = schema["properties"]["status"]["properties"]
    milestones = schema["properties"]["spec"]["properties"]["data"]["properties"]["milestones"]["maxItems"]
    assert milestones == MAX_LIST
    assert status["training"]["properties"]["exports"]["maxItems"] >= milestones + 1
    assert status["evaluatedExports"]["maxItems"] >= milestones + 1
