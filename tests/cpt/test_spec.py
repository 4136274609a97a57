"""The typed spec: defaults, and bad resources rejected with a message naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cpt.api import ContinuedPretrain
from cpt.validation import validate_object


def minimal() -> dict[str, Any]:
    return {
        "apiVersion": "cpt.kubecpt.dev/v1alpha1",
        "kind": "ContinuedPretrain",
        "metadata": {"name": "t"},
        "spec": {
            "model": {"uri": "facebook/MobileLLM-125M"},
            "data": {
                "sources": [{"name": "edu", "uri": "s3://b/edu/*.jsonl"}],
                "tokenBudget": 1_000_000_000,
                "milestones": [400_000_000],
            },
            "storage": {"uri": "s3://runs/t"},
        },
    }


def with_change(path: str, value: Any) -> dict[str, Any]:
    """minimal() with one dotted path set (list indices as numbers); value DELETE removes the key."""
    doc = minimal()
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    node: Any = doc
    for key in keys[:-1]:
        if isinstance(key, str) and key not in node:
            node[key] = {}
        node = node[key]
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = copy.deepcopy(value)
    return doc


DELETE = object()


def test_defaults_follow_the_paper() -> None:
    spec = ContinuedPretrain.model_validate(minimal()).spec
    assert spec.data.sequence_length == 2000
    assert spec.data.filters.min_lines == 3
    assert spec.data.dedup.exact is True
    assert spec.training.deepspeed.zero_stage == "auto"  # the lowest stage that fits; the paper's example says 3
    assert spec.training.deepspeed.gradient_checkpointing is True
    assert spec.training.deepspeed.precision == "bf16"
    assert (spec.training.optimizer.lr, spec.training.optimizer.weight_decay) == ("1e-4", "0.005")
    assert (spec.training.schedule.type, spec.training.schedule.warmup_fraction) == ("cosine", "0.1")
    assert (spec.training.micro_batch_size, spec.training.grad_accumulation) == (80, 2)
    assert [t.name for t in spec.evaluation.tasks] == [
        "mmlu",
        "arc_challenge",
        "arc_easy",
        "winogrande",
        "hellaswag",
        "boolq",
        "piqa",
    ]
    assert spec.data.milestones_with_budget == [400_000_000, 1_000_000_000]


def test_round_trip_is_camel_case_and_stable() -> None:
    first = ContinuedPretrain.model_validate(minimal()).to_api()
    assert "tokenBudget" in first["spec"]["data"] and "token_budget" not in first["spec"]["data"]
    assert ContinuedPretrain.model_validate(first).to_api() == first


# (change, expected field path in the message, expected words in the message)
INVALID: list[tuple[str, Any, str, str]] = [
    ("spec.model", {}, "spec.model.uri", "set uri"),
    ("spec.model", {"architecture": {"preset": "tiny"}}, "spec.model.tokenizer", "needs a tokenizer"),
    (
        "spec.model.architecture",
        {"hiddenSize": 100, "numLayers": 2, "numHeads": 3},
        "spec.model.architecture.hiddenSize",
        "divisible",
    ),
    ("spec.data.sources", [], "spec.data.sources", "at least 1"),
    ("spec.data.sources.0.format", "csv", "spec.data.sources[0].format", "jsonl"),
    ("spec.data.sources.0.name", "Bad_Name", "spec.data.sources[0].name", "pattern"),
    ("spec.data.sources.0.weight", 0, "spec.data.sources[0].weight", "greater than or equal to 1"),
    ("spec.data.sources.0.subset", "x", "spec.data.sources[0].subset", "format hf only"),
    ("spec.data.milestones", [600_000_000, 400_000_000], "spec.data.milestones", "strictly ascending"),
    ("spec.data.milestones", [2_000_000_000], "spec.data.milestones", "exceed tokenBudget"),
    ("spec.data.tokenBudget", "1B", "spec.data.tokenBudget", "integer"),
    ("spec.data.tokenBudget", DELETE, "spec.data.tokenBudget", "required"),
    (
        "spec.data.replay",
        {"source": {"name": "gen", "uri": "x"}, "fraction": "1.0"},
        "spec.data.replay.fraction",
        "< 1",
    ),
    (
        "spec.data.replay",
        {"source": {"name": "gen", "uri": "x"}, "fraction": 0.25},
        "spec.data.replay.fraction",
        "string",
    ),
    ("spec.data.replay", {"source": {"name": "edu", "uri": "x"}}, "spec.data.replay", "different"),
    ("spec.data.sequenceLength", 8, "spec.data.sequenceLength", "greater than or equal to 16"),
    ("spec.data.filters.repetition.dupLineFraction", "1.5", "spec.data.filters.repetition.dupLineFraction", "<= 1"),
    ("spec.training.optimizer.lr", "fast", "spec.training.optimizer.lr", "pattern"),
    ("spec.training.optimizer.lr", "0", "spec.training.optimizer.lr", "> 0"),
    ("spec.training.optimizer.betas", ["0.9"], "spec.training.optimizer.betas", "at least 2"),
    ("spec.training.deepspeed.zeroStage", 4, "spec.training.deepspeed.zeroStage", 'use 0, 1, 2, 3 or "auto"'),
    ("spec.training.deepspeed.zeroStage", "max", "spec.training.deepspeed.zeroStage", 'use 0, 1, 2, 3 or "auto"'),
    (
        "spec.training.deepspeed",
        {"zeroStage": 2, "offloadParams": "cpu"},
        "spec.training.deepspeed.offloadParams",
        "zeroStage 3",
    ),
    (
        "spec.training.schedule",
        {"type": "wsd", "warmupFraction": "0.5", "decayFraction": "0.6"},
        "spec.training.schedule.decayFraction",
        "exceed 1",
    ),
    (
        "spec.training.resources",
        {"requests": {"memory": "lots"}},
        "spec.training.resources.requests.memory",
        "quantity",
    ),
    ("spec.training.nodes", 0, "spec.training.nodes", "greater than or equal to 1"),
    ("spec.training.nodes", 4096, "spec.data.tokenBudget", "smaller than one optimizer step"),
    ("spec.data.milestones", [400_000_001, 400_100_000], "spec.data.milestones", "fall in the same optimizer step"),
    ("spec.data.milestones", [999_900_000], "spec.data.milestones", "a milestone and tokenBudget"),
    ("spec.evaluation.tasks", [{"name": "piqa"}, {"name": "piqa"}], "spec.evaluation.tasks", "unique"),
    (
        "spec.evaluation",
        {"baseline": False, "atMilestones": False},
        "spec.evaluation.atMilestones",
        "nothing would be evaluated",
    ),
    ("spec.evaluation.tasks", [{"name": "piqa", "metric": "bleu"}], "spec.evaluation.tasks[0].metric", "acc"),
    ("spec.storage", {"uri": "ftp://host/x"}, "spec.storage.uri", "s3://, gs:// or file://"),
    ("spec.storage", {"uri": "gs://b/x", "endpoint": "http://minio:9000"}, "spec.storage.endpoint", "s3:// storage"),
    ("spec.storage", DELETE, "spec.storage", "required"),
    (
        "spec",
        {**minimal()["spec"], "training": {"nodes": 2}, "storage": {"uri": "file:///mnt/runs/t"}},
        "spec.storage.uri",
        "several nodes needs shared object storage",
    ),
    ("spec.scheduling.queueName", "Bad Queue", "spec.scheduling.queueName", "pattern"),
    (
        "spec.scheduling.stages.preprocess.resources",
        {"limits": {"memory": "plenty"}},
        "spec.scheduling.stages.preprocess.resources.limits.memory",
        "quantity",
    ),
    ("spec.scheduling.stages.compile", {}, "spec.scheduling.stages.compile", "Extra inputs are not permitted"),
    # No credential in plain text: it would sit in the resource, the spec ConfigMap and the JobSet.
    ("spec.training.extraEnv", {"WANDB_API_KEY": "abc"}, "spec.training.extraEnv", "training.secretEnv"),
    ("spec.training.extraEnv", {"hf_token": "abc"}, "spec.training.extraEnv", "training.secretEnv"),
    ("spec.training.extraEnv", {"MLFLOW_TRACKING_PASSWORD": "x"}, "spec.training.extraEnv", "training.secretEnv"),
    ("spec.training.extraEnv", {"AWS_SECRET_ACCESS_KEY": "x"}, "spec.training.extraEnv", "training.secretEnv"),
    (
        "spec.training.secretEnv",
        {"WANDB_API_KEY": {"key": "k"}},
        "spec.training.secretEnv.WANDB_API_KEY.name",
        "required",
    ),
    ("spec.training.secretEnv", {"1BAD-NAME": {"name": "w"}}, "spec.training.secretEnv", "environment variable name"),
    (
        "spec.training",
        {"extraEnv": {"WANDB_PROJECT": "a"}, "secretEnv": {"WANDB_PROJECT": {"name": "w"}}},
        "spec.training.secretEnv",
        "both extraEnv and secretEnv",
    ),
    ("spec.scheduling.tolerations", [{"operator": "Sometimes"}], "spec.scheduling.tolerations[0].operator", "Exists"),
    ("spec.suspend", "maybe", "spec.suspend", "boolean"),
    ("spec.trainng", {}, "spec.trainng", "Extra inputs are not permitted"),
    ("kind", "Pod", "kind", "ContinuedPretrain"),
]


@pytest.mark.parametrize(
    ("change", "value", "path", "words"), INVALID, ids=[f"{c}-{i}" for i, (c, *_) in enumerate(INVALID)]
)
def test_invalid_resource_names_the_field(change: str, value: Any, path: str, words: str) -> None:
    resource, problems = validate_object(with_change(change, value), "case.yaml")
    assert resource is None
    assert problems, "expected a validation error"
    matching = [p for p in problems if p.path == path]
    assert matching, f"no error at {path}; got {[str(p) for p in problems]}"
    assert any(words in p.message for p in matching), [str(p) for p in matching]


def test_there_are_at_least_fifteen_invalid_cases() -> None:
    assert len(INVALID) >= 15


def test_a_non_mapping_document_is_rejected() -> None:
    resource, problems = validate_object(["not", "a", "mapping"], "list.yaml")
    assert resource is None and "expected a mapping" in problems[0].message


def test_world_size_and_tokens_per_step() -> None:
    training = ContinuedPretrain.model_validate(
        with_change("spec.training", {"nodes": 3, "procsPerNode": 1})
    ).spec.training
    assert training.world_size == 3
    assert training.tokens_per_step(2000) == 3 * 80 * 2 * 2000


def test_plain_env_names_that_only_contain_a_credential_word_pass() -> None:
    env = {"TOKENIZERS_PARALLELISM": "false", "NCCL_DEBUG": "INFO", "KEYRING_BACKEND": "null", "WANDB_PROJECT": "p"}
    doc = with_change("spec.training", {"extraEnv": env, "secretEnv": {"WANDB_API_KEY": {"name": "wandb"}}})
    training = ContinuedPretrain.model_validate(doc).spec.training
    assert training.extra_env == env
    assert (training.secret_env["WANDB_API_KEY"].name, training.secret_env["WANDB_API_KEY"].key) == ("wandb", "token")


def test_stage_scheduling_is_unset_by_default_so_the_stage_defaults_apply() -> None:
    stages = ContinuedPretrain.model_validate(minimal()).spec.scheduling.stages
    for stage in (stages.preprocess, stages.dedup, stages.evaluate, stages.report):
        assert (stage.resources, stage.node_selector, stage.tolerations) == (None, None, None)
