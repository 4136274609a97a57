"""Local stand-ins for facebook/MobileLLM-125M, built in the test (no hub): a tiny Llama over the Llama-2
SentencePiece vocabulary with only `tokenizer.model` and a tokenizer config that names no special tokens,
optionally with modeling code of its own (config.json `auto_map` to files written here, model_type unknown
to transformers), as the real model ships it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import shared_data_dir

MODEL_TYPE = "kubecpt_llama"
CONFIGURATION = """from transformers import LlamaConfig


class KubecptConfig(LlamaConfig):
    model_type = "kubecpt_llama"
"""
MODELING = """from transformers import LlamaForCausalLM

from .configuration_kubecpt import KubecptConfig


class KubecptForCausalLM(LlamaForCausalLM):
    config_class = KubecptConfig
"""
# MobileLLM-125M's tokenizer_config.json: empty special-token names, BOS added, non-legacy SentencePiece.
TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "",
    "eos_token": "",
    "unk_token": "",
    "legacy": False,
    "clean_up_tokenization_spaces": False,
    "tokenizer_class": "LlamaTokenizer",
}


def sentencepiece_model() -> Path:
    return shared_data_dir() / "tokenizers" / "llama2-sentencepiece" / "tokenizer.model"


def write_model(folder: Path, own_code: bool, tokenizer_config: dict | None = None) -> Path:
    """A 32000-token Llama (1 layer, hidden 16) with only tokenizer.model; with own_code, under its own class."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    shutil.copy(sentencepiece_model(), folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config or TOKENIZER_CONFIG))
    if own_code:
        (folder / "configuration_kubecpt.py").write_text(CONFIGURATION)
        (folder / "modeling_kubecpt.py").write_text(MODELING)
        values = json.loads((folder / "config.json").read_text())
        values.update(
            model_type=MODEL_TYPE,
            architectures=["KubecptForCausalLM"],
            auto_map={
                "AutoConfig": "configuration_kubecpt.KubecptConfig",
                "AutoModelForCausalLM": "modeling_kubecpt.KubecptForCausalLM",
            },
        )
        (folder / "config.json").write_text(json.dumps(values, indent=1))
    return folder


def spaced_documents(count: int = 24) -> list[str]:
    """OpenStax sections with runs of spaces and newlines (where the fast conversion's ids differ)."""
    lines = (shared_data_dir() / "corpora" / "openstax_stem.jsonl").read_text(encoding="utf-8").split("\n")
    texts = [json.loads(line)["text"][:1500] for line in lines[:count] if line.strip()]
    return [t.replace(". ", ".   \n\n  ").replace(", ", ",  ") for t in texts]
