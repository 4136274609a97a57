"""How scoring is set up: perplexity windows, batch size and document starts; lm-eval metric filters."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from cpt.api import ContinuedPretrain
from cpt.api.evaluation import Task
from cpt_pipeline.evaluate import perplexity as ppl
from cpt_pipeline.evaluate.harness import scores
from cpt_pipeline.evaluate.results import evaluate_run
from cpt_pipeline.storage import Storage


@pytest.fixture(scope="module")
def stories(shared_data: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = shared_data / "models" / "stories260K"
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


class Recording:
    """Wraps a model and records the shape of every forward pass."""

    def __init__(self, model: Any) -> None:
        self.model, self.config, self.shapes = model, model.config, []

    def eval(self) -> None:
        self.model.eval()

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        self.shapes.append(tuple(input_ids.shape))
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


TEXT = " ".join(["The little bird sang a happy song in the tall green tree."] * 40)


def test_windows_follow_the_request_not_a_huge_model_context(stories: tuple[Any, Any]) -> None:
    model, tokenizer = stories
    recording = Recording(model)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    result = ppl.perplexity(recording, tokenizer, [TEXT], batch_size=3, window=64)
    assert max(width for _, width in recording.shapes) == 64 and all(rows <= 3 for rows, _ in recording.shapes)
    assert result["tokens"] == len(ids)  # every token predicted once, across windows
    assert ppl.scoring_window(131072, None) == 131072 and ppl.scoring_window(131072, 2048) == 2048
    assert ppl.scoring_window(512, 2048) == 512  # never beyond the model's context


def test_the_first_token_is_predicted_without_a_bos_token(stories: tuple[Any, Any]) -> None:
    """bits per byte divides by every byte of the document, so every token must be scored, the first too."""
    import copy

    model, tokenizer = stories
    no_bos = copy.deepcopy(tokenizer)
    no_bos.bos_token = None
    assert no_bos.bos_token_id is None and no_bos.eos_token_id is not None
    text = "Once upon a time there was a little dog."
    ids = no_bos(text, add_special_tokens=False)["input_ids"]
    result = ppl.perplexity(model, no_bos, [text])
    assert result["tokens"] == len(ids)
    import torch

    full = torch.tensor([[no_bos.eos_token_id, *ids]])
    with torch.no_grad():
        loss = float(model(input_ids=full, labels=full).loss)
    assert result["nll"] == pytest.approx(loss * len(ids), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(loss * len(ids) / (len(text.encode()) * math.log(2)), rel=1e-5)


def test_the_stage_passes_batch_size_and_the_training_length_as_window(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int | None]] = []

    def spy(model: Any, tokenizer: Any, texts: list[str], device: str = "cpu", batch_size: int = 8, window=None):
        seen.append((batch_size, window))
        return {"perplexity": 1.0, "bits_per_byte": 1.0, "tokens": 1, "bytes": 1, "documents": 1, "nll": 0.0}

    monkeypatch.setattr(ppl, "perplexity", spy)
    general = {"uri": str(shared_data / "corpora" / "stories260k_samples.jsonl"), "maxDocuments": 2}
    for perplexity, expected in (({"general": general}, (5, 48)), ({"general": general, "windowTokens": 32}, (5, 32))):
        doc = {
            "spec": {
                "model": {"uri": str(shared_data / "models" / "stories260K")},
                "data": {"sources": [{"name": "s", "uri": "x"}], "tokenBudget": 1000, "sequenceLength": 48},
                "training": {"microBatchSize": 1, "gradAccumulation": 1},
                "evaluation": {"tasks": [], "batchSize": "5", "perplexity": perplexity},
                "storage": {"uri": str(tmp_path / f"out-{len(seen)}")},
            }
        }
        spec = ContinuedPretrain.model_validate(doc).spec
        evaluate_run(spec, Storage.from_spec(spec.storage))
        assert seen[-1] == expected
    assert ppl.batch_size_for("auto", "cpu") == 8 and ppl.batch_size_for("auto", "cuda") == 32


def test_metrics_reported_under_a_filter_name() -> None:
    results = {
        "results": {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.02,
                "exact_match,flexible-extract": 0.5,
                "exact_match_stderr,flexible-extract": 0.03,
            },
            "piqa": {"acc,none": 0.6, "acc_stderr,none": 0.01},
        }
    }
    first = scores(results, [Task(name="gsm8k", metric="exact_match"), Task(name="piqa")])
    assert [(s["metric"], s["score"], s["stderr"]) for s in first] == [
        ("exact_match,strict-match", 0.25, 0.02),  # the first filter lm-eval reported
        ("acc", 0.6, 0.01),
    ]
    chosen = scores(results, [Task(name="gsm8k", metric="exact_match", filter="flexible-extract")])
    assert (chosen[0]["score"], chosen[0]["stderr"]) == (0.5, 0.03)
    with pytest.raises(KeyError, match="no metric 'exact_match' with filter 'custom'"):
        scores(results, [Task(name="gsm8k", metric="exact_match", filter="custom")])


def test_one_export_is_evaluated_by_name_and_a_missing_one_is_an_error(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.setattr(ppl, "perplexity", lambda *a, **k: {"perplexity": 1.0, "tokens": 1})
    model = shared_data / "models" / "stories260K"
    text = tmp_path / "general.txt"
    text.write_text("Once upon a time there was a cat.")
    for name in ("tokens-0000000000512", "tokens-0000000001024"):
        shutil.copytree(model, tmp_path / "out" / "exports" / name)
        (tmp_path / "out" / "exports" / name / "export.json").write_text("{}")
    doc = {
        "spec": {
            "model": {"uri": str(model)},
            "data": {"sources": [{"name": "s", "uri": "x"}], "tokenBudget": 1024, "sequenceLength": 16},
            "training": {"microBatchSize": 1, "gradAccumulation": 1},
            "evaluation": {"tasks": [], "perplexity": {"general": {"uri": str(text)}}},
            "storage": {"uri": str(tmp_path / "out")},
        }
    }
    spec = ContinuedPretrain.model_validate(doc).spec
    status = evaluate_run(spec, Storage.from_spec(spec.storage), target="tokens-0000000001024")
    assert [m["tokens"] for m in status["milestones"]] == [1024]  # neither the baseline nor the other export
    with pytest.raises(FileNotFoundError, match="--target tokens-0000000002048: no complete export"):
        evaluate_run(spec, Storage.from_spec(spec.storage), target="tokens-0000000002048")


def test_a_milestone_without_an_export_fails_the_evaluation_once_training_completed(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A completed training whose milestone export is missing (an export that failed) must not give a table
    without its row: the stage fails naming the milestone. While training runs, what exists is evaluated."""
    import shutil

    monkeypatch.setattr(ppl, "perplexity", lambda *a, **k: {"perplexity": 1.0, "tokens": 1})
    model = shared_data / "models" / "stories260K"
    text = tmp_path / "general.txt"
    text.write_text("Once upon a time there was a cat.")
    shutil.copytree(model, tmp_path / "out" / "exports" / "tokens-0000000001024")
    (tmp_path / "out" / "exports" / "tokens-0000000001024" / "export.json").write_text("{}")
    doc = {
        "spec": {
            "model": {"uri": str(model)},
            "data": {
                "sources": [{"name": "s", "uri": "x"}],
                "tokenBudget": 1024,
                "milestones": [512],
                "sequenceLength": 16,
            },
            "training": {"microBatchSize": 1, "gradAccumulation": 1},
            "evaluation": {"tasks": [], "baseline": False, "perplexity": {"general": {"uri": str(text)}}},
            "storage": {"uri": str(tmp_path / "out")},
        }
    }
    spec = ContinuedPretrain.model_validate(doc).spec
    storage = Storage.from_spec(spec.storage)
    assert [m["tokens"] for m in evaluate_run(spec, storage)["milestones"]] == [1024]  # training still running
    storage.write_json({"exports": ["tokens-0000000001024"], "steps": 64, "tokens": 1024}, "train", "complete.json")
    for target in (None, "milestones"):
        with pytest.raises(FileNotFoundError, match=r"milestone tokens-0000000000512 \(512 tokens\) has no export"):
            evaluate_run(spec, storage, target=target)
