"""Start-of-document tokens follow the tokenizer, in packing, perplexity and lm-eval alike.

The stories tokenizer adds BOS (its tokenizer.json post-processor prepends `<s>`): every packed document
starts with BOS, perplexity scores after BOS, lm-eval encodes with BOS. The Llama-2 conversion in the shared
data adds none: no BOS anywhere, documents follow the EOS of the one before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cpt.api import ContinuedPretrain
from cpt_pipeline.evaluate.perplexity import document_start
from cpt_pipeline.preprocess.runner import prepare, reduce
from cpt_pipeline.preprocess.tokenize import TextTokenizer
from cpt_pipeline.storage import Storage
from tests.conftest import shared_data_dir
from tests.pipeline.mobilellm_like import write_model

BOS, EOS = 1, 2
ADDS_BOS = {"stories": True, "llama2": False}


def model_dir(name: str, tmp_path: Path) -> Path:
    """A model with the named tokenizer: the stories model, or a tiny Llama over the Llama-2 tokenizer."""
    shared = shared_data_dir()
    if name == "stories":
        return shared / "models" / "stories260K"
    source = shared / "tokenizers" / "llama2-sentencepiece"
    folder = write_model(tmp_path / "llama2", False, json.loads((source / "tokenizer_config.json").read_text()))
    shutil.copy(source / "tokenizer.json", folder / "tokenizer.json")
    return folder


def documents(count: int) -> list[str]:
    lines = (shared_data_dir() / "corpora" / "openstax_stem.jsonl").read_text(encoding="utf-8").split("\n")
    return [json.loads(line)["text"][:800] for line in lines[:count]]


@pytest.mark.parametrize("name", sorted(ADDS_BOS))
def test_packed_documents_start_with_bos_only_when_the_tokenizer_adds_it(tmp_path: Path, name: str) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in documents(8)))
    doc = {
        "spec": {
            "model": {"uri": str(model_dir(name, tmp_path))},
            "data": {
                "sources": [{"name": "stem", "uri": str(corpus)}],
                "sequenceLength": 64,
                "tokenBudget": 100_000,
                "decontamination": {"enabled": False},
            },
            "evaluation": {"tasks": []},
            "storage": {"uri": str(tmp_path / "out")},
        }
    }
    spec = ContinuedPretrain.model_validate(doc).spec
    storage = Storage.from_spec(spec.storage)
    prepare(spec, storage, 0, 1)
    reduce(spec, storage, 1)
    folder = tmp_path / "out" / "data" / "domain" / "stem"
    stream = np.concatenate([np.fromfile(folder / f, dtype="<u2") for f in ("shard-00000.bin", "tail.bin")])
    after_eos = stream[1:][stream[:-1] == EOS]
    assert len(after_eos) >= 3  # the documents that passed the filters, but the last
    if ADDS_BOS[name]:
        assert stream[0] == BOS and (after_eos == BOS).all()
    else:
        assert BOS not in stream
    manifest = storage.read_json("data", "domain", "manifest.json")
    assert manifest["tokenizer"]["bos_id"] == (BOS if ADDS_BOS[name] else None)


@pytest.mark.parametrize("name", sorted(ADDS_BOS))
def test_perplexity_and_lm_eval_start_documents_as_packing_does(tmp_path: Path, name: str) -> None:
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    model = model_dir(name, tmp_path)
    assert document_start(AutoTokenizer.from_pretrained(str(model))) == (BOS if ADDS_BOS[name] else EOS)

    from cpt_pipeline.evaluate.harness import model_args
    from cpt_pipeline.evaluate.results import trained_tokenizer

    tokenizer = trained_tokenizer(model, False, Storage.open_uri(str(tmp_path / "no-run")))
    lm = HFLM(**model_args(str(model), "float32", tokenizer), batch_size=1, device="cpu")
    text = "Forces  and motion: a body at rest stays at rest."
    assert lm.tok_encode(text) == TextTokenizer(str(model)).encode_batch([text])[0]
    assert lm.prefix_token_id == document_start(tokenizer)
