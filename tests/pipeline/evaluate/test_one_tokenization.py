"""Training, perplexity and lm-eval encode the same text to the same ids.

The tokenizer has only `tokenizer.model` (the Llama-2 SentencePiece model MobileLLM uses, non-legacy as
MobileLLM's config asks): its fast conversion splits runs of spaces and newlines differently, so preprocessing
packs SentencePiece's ids, and evaluation must score those, not the fast tokenizer's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece

from cpt.api import ContinuedPretrain
from cpt_pipeline.evaluate.results import evaluate_run
from cpt_pipeline.preprocess.runner import prepare, reduce
from cpt_pipeline.preprocess.tokenize import TextTokenizer
from cpt_pipeline.storage import Storage
from tests.pipeline.mobilellm_like import sentencepiece_model, spaced_documents, write_model

TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "legacy": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "tokenizer_class": "LlamaTokenizer",
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("sp-only") / "model", own_code=False, tokenizer_config=TOKENIZER_CONFIG)


def spec_for(tmp_path: Path, model: Path, corpus: Path):
    doc = {
        "spec": {
            "model": {"uri": str(model)},
            "data": {
                "sources": [{"name": "spaced", "uri": str(corpus)}],
                "sequenceLength": 64,
                "tokenBudget": 10_000,
                "decontamination": {"enabled": False},
            },
            "training": {"microBatchSize": 1, "gradAccumulation": 1},
            "evaluation": {
                "tasks": [],
                "atMilestones": False,
                "perplexity": {"general": {"uri": str(corpus), "maxDocuments": 6}},
            },
            "storage": {"uri": str(tmp_path / "out")},
        }
    }
    return ContinuedPretrain.model_validate(doc).spec


def test_perplexity_scores_the_ids_training_packed(tmp_path: Path, model: Path) -> None:
    docs = spaced_documents(6)
    corpus = tmp_path / "spaced.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    spec = spec_for(tmp_path, model, corpus)
    storage = Storage.from_spec(spec.storage)
    prepare(spec, storage, 0, 1)
    reduce(spec, storage, 1)
    assert storage.read_json("data", "domain", "manifest.json")["tokenizer"]["backend"] == "sentencepiece"
    reference = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model()))
    scored = evaluate_run(spec, storage)
    summary = storage.read_json("eval", "baseline", "summary.json")
    # every token of a document is predicted once: SentencePiece's ids, so SentencePiece's count
    assert summary["perplexity"]["general"]["tokens"] == sum(len(reference.encode(d)) for d in docs)
    assert scored["milestones"][0]["generalPerplexity"] > 1
    packed = TextTokenizer(str(model)).encode_batch(docs)
    assert packed == [[1, *reference.encode(d)] for d in docs]  # BOS (the tokenizer adds it), then the same ids


def test_lm_eval_gets_the_tokenizer_training_used(tmp_path: Path, model: Path) -> None:
    from lm_eval.models.huggingface import HFLM

    from cpt_pipeline.evaluate.harness import model_args
    from cpt_pipeline.evaluate.results import trained_tokenizer

    docs = spaced_documents(4)
    tokenizer = trained_tokenizer(model, False, Storage.open_uri(str(tmp_path / "no-run")))
    lm = HFLM(**model_args(str(model), "float32", tokenizer), batch_size=1, device="cpu")
    packed = TextTokenizer(str(model)).encode_batch(docs)
    assert [lm.tok_encode(d) for d in docs] == packed
    assert [tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs] == [ids[1:] for ids in packed]
