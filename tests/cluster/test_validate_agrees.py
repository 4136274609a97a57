"""`cpt validate` says exactly what the API server says (issue 25 item 5).

Hypothesis draws random mutations of the examples in manifests/examples, guided by the CRD's schema:
wrong JSON types, out-of-range numbers, unknown fields, removed fields, bad enums, broken patterns and
cross-field (CEL) invariants. Each mutated resource is judged by `cpt validate` (offline) and by the real
API server (a dry-run create with strict field validation); every verdict must agree. The seed is fixed
(derandomize), so CI sees the same mutations each run; disagreements are printed with their mutation.
"""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpt.validation import validate_object
from tests.cluster.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crd" / "continuedpretrains.cpt.kubecpt.dev.yaml"
EXAMPLES = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((REPO / "manifests" / "examples").glob("*.yaml"))}
SCHEMA = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
MUTATIONS = 500
KINDS = (
    "valid value",
    "wrong type",
    "out of range",
    "unknown field",
    "remove field",
    "bad enum",
    "bad string",
    "invariant",
)
# Values of every JSON type, including the ones pydantic's lax mode would coerce.
ANY_VALUE = st.one_of(
    st.sampled_from(["yes", "true", "1", "256", "1e-4", "auto", "", "0", "-1", "none", "1.5", 1.5, 2.0, -0.5]),
    st.booleans(),
    st.integers(min_value=-(2**33), max_value=2**33),
    st.none(),
    st.builds(list),
    st.builds(dict),
    st.builds(lambda: [1, 2]),
    st.builds(lambda: {"a": 1}),
    st.text(alphabet="abc-XYZ019./_ :", max_size=12),
)
BAD_STRINGS = st.one_of(
    st.sampled_from(["", "-", "A", "a b", "x" * 64, "x" * 300, "0.5", "1e-4", "-1", "1.", ".5", "abc", "s3://"]),
    st.sampled_from(["gs://b", "s3://b/p", "hf://x", "UPPER", "a..b", "a_b", "1e400", "9" * 40, "true"]),
    st.text(alphabet="aZ09-._/:e ", max_size=20),
)


@dataclass(frozen=True)
class Verdict:
    """One mutated resource, the mutation steps, and what each side said."""

    steps: tuple[str, ...]
    doc: dict[str, Any]
    cpt: str | None  # None: accepted; else the first problem

    def describe(self, server: str | None) -> str:
        said = f"cpt validate: {self.cpt or 'accepted'}\n  API server: {server or 'accepted'}"
        return "  mutation: " + "; ".join(self.steps) + "\n  " + said


def schema_at(path: tuple[str | int, ...]) -> dict[str, Any]:
    """The CRD schema of the value at `path` ({} where the schema says nothing, e.g. metadata)."""
    node = SCHEMA
    for part in path:
        if isinstance(part, int):
            node = node.get("items", {})
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        else:
            node = node.get("additionalProperties") or {}
            node = node if isinstance(node, dict) else {}
    return node


def paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every path below `value` (the spec only: apiVersion, kind and metadata are the client's)."""
    out = [prefix] if prefix else []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if not prefix and key != "spec":
            continue
        out.extend(paths(child, (*prefix, key)))
    return out


def get(doc: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def out_of_range(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Numbers at and beyond the schema's bounds, plus lengths beyond maxItems/maxLength."""
    edges = [-1, 0, 1, 2, 3, 7, 1000, 2**31, 2**40]
    for key, step in (("minimum", -1), ("maximum", 1)):
        if key in schema:
            edges += [schema[key], schema[key] + step]
    if "maxLength" in schema:
        return st.sampled_from(["x" * schema["maxLength"], "x" * (schema["maxLength"] + 1)])
    if "maxItems" in schema:
        return st.sampled_from([0, schema["maxItems"] + 1]).map(lambda n: [1] * n)
    return st.sampled_from(edges)


def mapping(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """parent[key], made an empty mapping first if an earlier mutation removed it or changed its type."""
    if not isinstance(parent.get(key), dict):
        parent[key] = {}
    return parent[key]


def in_range(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value the schema's type, bounds and enum allow (cross-field rules may still refuse it)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema.get("type") == "integer":
        return st.integers(schema.get("minimum", -5), min(schema.get("maximum", 10**9), 10**9))
    if schema.get("type") == "boolean":
        return st.booleans()
    if schema.get("type") == "string":
        return st.sampled_from(["a", "0.5", "1e-4", "s3://b/p", "x-1", "1"])
    return st.sampled_from([1, "a"])


def invariant(doc: dict[str, Any], data: st.DataObject) -> str:
    """Break (or just stress) a cross-field rule: budgets, milestones, batch shapes, stage counts."""
    spec = mapping(doc, "spec")
    data_section, training = mapping(spec, "data"), mapping(spec, "training")
    choice = data.draw(st.integers(0, 5))
    if choice == 0:
        data_section["milestones"] = data.draw(st.lists(st.integers(-5, 2 * 10**9), max_size=4))
        return f"spec.data.milestones = {data_section['milestones']}"
    if choice == 1:
        data_section["tokenBudget"] = data.draw(st.integers(-1, 10**6))
        return f"spec.data.tokenBudget = {data_section['tokenBudget']}"
    if choice == 2:
        for key in ("microBatchSize", "gradAccumulation", "nodes", "procsPerNode"):
            training[key] = data.draw(st.integers(-1, 9))
        return "training batch shape = " + json.dumps({k: training[k] for k in ("microBatchSize", "nodes")})
    if choice == 3:
        zero = data.draw(st.sampled_from([0, 1, 2, 3, 4, "0", "3", "auto", "x", -1]))
        offload = data.draw(st.sampled_from(["none", "cpu"]))
        mapping(training, "deepspeed").update(zeroStage=zero, offloadParams=offload, offloadOptimizer=offload)
        return f"spec.training.deepspeed zeroStage={zero!r} offload={offload}"
    if choice == 4:
        name = data.draw(st.sampled_from(["a", "a" * 40, "a" * 64, "A", "a.b", "a-", "x" * 253]))
        doc["metadata"]["name"] = name
        return f"metadata.name = {name!r}"
    steps = data.draw(st.integers(-3, 2000))
    mapping(training, "checkpoint")["intervalSteps"] = steps
    return f"spec.training.checkpoint.intervalSteps = {steps}"


def mutate(doc: dict[str, Any], data: st.DataObject) -> str:
    """Apply one random mutation to `doc` in place; returns what it did."""
    kind = data.draw(st.sampled_from(KINDS))
    if kind == "invariant":
        return invariant(doc, data)
    candidates = paths(doc)
    if not candidates:
        return "nothing left to mutate"
    path = data.draw(st.sampled_from(candidates[::-1]))  # leaves first: hypothesis favours early choices
    where = ".".join(map(str, path))
    parent, key, schema = get(doc, path[:-1]), path[-1], schema_at(path)
    if kind == "remove field":
        del parent[key]
        return f"removed {where}"
    if kind == "unknown field":
        target = get(doc, path)
        if isinstance(target, dict):
            target["bogusField"] = data.draw(ANY_VALUE)
            return f"{where}.bogusField = {target['bogusField']!r}"
        get(doc, path[:-1] if isinstance(key, str) else path[:-2])["bogusField"] = 1
        return f"added bogusField beside {where}"
    value = data.draw(
        {
            "wrong type": ANY_VALUE,
            "out of range": out_of_range(schema),
            "bad enum": st.sampled_from([*(str(v).upper() for v in schema.get("enum", ["x"])), "other", ""]),
            "bad string": BAD_STRINGS,
            "valid value": in_range(schema),
        }[kind]
    )
    parent[key] = value
    return f"{kind}: {where} = {value!r}"


def first_problem(doc: dict[str, Any]) -> str | None:
    _, problems = validate_object(copy.deepcopy(doc), "mutation")
    return str(problems[0]) if problems else None


def draw_mutations(count: int) -> list[Verdict]:
    """`count` mutated examples (1-2 mutations each), judged by cpt validate; fixed seed (derandomize)."""
    verdicts: list[Verdict] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def draw(data: st.DataObject) -> None:
        doc = copy.deepcopy(EXAMPLES[data.draw(st.sampled_from(sorted(EXAMPLES)))])
        steps = [f"example {doc['metadata']['name']}"]
        for _ in range(data.draw(st.integers(1, 2))):
            steps.append(mutate(doc, data))
        verdicts.append(Verdict(tuple(steps), doc, first_problem(doc)))

    draw()
    return verdicts


def server_verdict(api: Any, namespace: str, doc: dict[str, Any]) -> str | None:
    """None if the API server accepts the resource (dry-run create, strict field validation), else why not."""
    from kubernetes.client.exceptions import ApiException

    body = {**doc, "metadata": {**doc.get("metadata", {}), "namespace": namespace}}
    try:
        api.create_namespaced_custom_object(
            "cpt.kubecpt.dev",
            "v1alpha1",
            namespace,
            "continuedpretrains",
            body,
            dry_run="All",
            field_validation="Strict",
        )
    except ApiException as error:
        if error.status >= 500:
            raise
        return json.loads(error.body).get("message", error.body) if error.body else str(error.status)
    return None


def test_cpt_validate_agrees_with_the_api_server(crd_installed: Cluster, namespace: str) -> None:
    from kubernetes import client, config

    api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(crd_installed.kubeconfig)))
    verdicts = draw_mutations(MUTATIONS)
    with ThreadPoolExecutor(max_workers=8) as pool:
        servers = list(pool.map(lambda v: server_verdict(api, namespace, v.doc), verdicts))
    disagreements = [v.describe(s) for v, s in zip(verdicts, servers, strict=True) if (v.cpt is None) != (s is None)]
    rejected = sum(s is not None for s in servers)
    print(f"\n{len(verdicts)} mutations, {rejected} rejected by the API server, {len(disagreements)} disagreements")
    assert len(verdicts) >= MUTATIONS and 0 < rejected < len(verdicts)
    assert not disagreements, f"{len(disagreements)} of {len(verdicts)} disagree:\n" + "\n".join(disagreements)
