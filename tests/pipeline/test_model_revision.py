"""spec.model.revision reaches the tokenizer and the baseline evaluation, not only the training weights.

A hub repository with two revisions lives in an offline Hugging Face cache: `v1` is the stories model, `main`
has other weights and another tokenizer. Everything must use v1 when the spec pins it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cpt.api import ContinuedPretrain
from cpt_pipeline.evaluate.perplexity import evaluate_sets
from cpt_pipeline.evaluate.results import evaluate_run
from cpt_pipeline.preprocess.runner import prepare
from cpt_pipeline.storage import Storage
from tests.pipeline.preprocess.helpers import document, write_jsonl

REPO_ID = "kubecpt-test/stories"


@pytest.fixture
def hub(tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline hub cache holding REPO_ID at revisions main and v1; returns v1's snapshot folder."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    stories = shared_data / "models" / "stories260K"
    v1 = repo / "snapshots" / ("1" * 40)
    main = repo / "snapshots" / ("2" * 40)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (v1 / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(stories / name, v1 / name)
    main.mkdir(parents=True)
    shutil.copy(stories / "config.json", main / "config.json")
    _save_perturbed(stories, main / "model.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # another tokenizer: a 32000-token vocabulary
        shutil.copy(shared_data / "tokenizers" / "llama2-sentencepiece" / name, main / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("2" * 40)
    (repo / "refs" / "v1").write_text("1" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    return v1


def _save_perturbed(source: Path, target: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_file({k: v * 1.5 for k, v in load_file(str(source / "model.safetensors")).items()}, str(target))


def spec_for(tmp_path: Path, shared_data: Path, revision: str | None):
    doc = {
        "spec": {
            "model": {"uri": REPO_ID, **({"revision": revision} if revision else {})},
            "data": {
                "sources": [{"name": "d", "uri": str(tmp_path / "in")}],
                "sequenceLength": 16,
                "tokenBudget": 1000,
                "decontamination": {"enabled": False},
            },
            "training": {"microBatchSize": 1, "gradAccumulation": 1},
            "evaluation": {
                "tasks": [],
                "atMilestones": False,
                "perplexity": {
                    "general": {"uri": str(shared_data / "corpora" / "stories260k_samples.jsonl"), "maxDocuments": 4}
                },
            },
            "storage": {"uri": str(tmp_path / f"out-{revision}")},
        }
    }
    return ContinuedPretrain.model_validate(doc).spec


def test_the_tokenizer_follows_the_model_revision(tmp_path: Path, shared_data: Path, hub: Path) -> None:
    write_jsonl(tmp_path / "in" / "d.jsonl", [document(i) for i in range(5)])
    for revision, vocab in (("v1", 512), (None, 32000)):
        spec = spec_for(tmp_path, shared_data, revision)
        prepare(spec, Storage.from_spec(spec.storage), 0, 1)
        done = Storage.from_spec(spec.storage).read_json("work", "preprocess", "domain", "rank-00000", "done.json")
        assert done["tokenizer"]["vocab_size"] == vocab, revision
    assert done["tokenizer"]["uri"] == REPO_ID
    pinned = Storage.from_spec(spec_for(tmp_path, shared_data, "v1").storage)
    assert pinned.read_json("work", "preprocess", "domain", "rank-00000", "done.json")["tokenizer"]["uri"] == (
        f"{REPO_ID}@v1"
    )


def test_the_baseline_row_is_the_revision_that_was_trained(tmp_path: Path, shared_data: Path, hub: Path) -> None:
    spec = spec_for(tmp_path, shared_data, "v1")
    status = evaluate_run(spec, Storage.from_spec(spec.storage))
    sets = {"general": spec.evaluation.perplexity.general}
    expected = evaluate_sets(hub, sets, window=spec.data.sequence_length)["general"]["perplexity"]
    assert status["milestones"][0]["tokens"] == 0
    assert status["milestones"][0]["generalPerplexity"] == pytest.approx(expected, rel=1e-6)


def test_training_loads_the_revision(tmp_path: Path, shared_data: Path, hub: Path) -> None:
    from safetensors.torch import load_file

    from cpt_pipeline.train.model import load_model

    model = load_model(spec_for(tmp_path, shared_data, "v1").model, 512, "auto", 0)
    reference = load_file(str(hub / "model.safetensors"))
    name, weights = next(iter(reference.items()))
    assert model.state_dict()[name].equal(weights)
