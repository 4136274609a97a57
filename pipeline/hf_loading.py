"""Loading a Hugging Face model and its tokenizer the same way in every stage.

Remote code: a model whose `config.json` (or `tokenizer_config.json`) maps its Auto classes to Python files of
its own (`auto_map`, for a `model_type` transformers has no class for, e.g. facebook/MobileLLM-125M) runs that
code when it is loaded. Every load passes `spec.model.trustRemoteCode`; without it such a model fails with one
line naming the field (before transformers would ask on a terminal or answer with its own message).

Tokenizer: `load_tokenizer` gives the tokenizer preprocessing, perplexity and lm-eval all encode with: the
SentencePiece model itself when preprocessing chose it (the fast conversion differs on runs of spaces), else
AutoTokenizer. BOS and EOS are the ones `tokenizer_config.json` names; when it names none (MobileLLM), the
SentencePiece model's own (`<s>`, `</s>`); with neither, loading fails naming the file.

Start of document: a document starts with BOS when the tokenizer adds BOS by default (`adds_bos`: Llama-style
tokenizers whose `add_bos_token` or post-processor prepends `<s>`), else with the EOS that ends the document
before it. Packing, perplexity and lm-eval follow this one rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRUST_FIELD = "spec.model.trustRemoteCode"


class RemoteCodeError(ValueError):
    """The model or tokenizer needs its own code and the spec does not allow running it."""


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _code_files(auto_map: dict[str, Any] | list[Any]) -> list[str]:
    """`modeling_x.Class` (or `repo--modeling_x.Class`) references of an auto_map as file names."""
    values = auto_map.values() if isinstance(auto_map, dict) else auto_map
    refs = [r for v in values for r in (v if isinstance(v, list | tuple) else [v]) if isinstance(r, str)]
    return sorted({ref.split("--")[-1].rsplit(".", 1)[0] + ".py" for ref in refs})


def remote_code_files(directory: Path, model: bool = True) -> list[str]:
    """The Python files of its own that loading the model (unless model is False) or the tokenizer in directory
    would run."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    config = _read_json(directory / "config.json")
    files: list[str] = []
    if model and config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING_NAMES:
        files += _code_files(config["auto_map"])
    tokenizer_map = _read_json(directory / "tokenizer_config.json").get("auto_map")
    if isinstance(tokenizer_map, dict):
        tokenizer_map = tokenizer_map.get("AutoTokenizer")
    if tokenizer_map:
        files += _code_files(tokenizer_map if isinstance(tokenizer_map, list) else [tokenizer_map])
    return sorted(set(files))


def check_remote_code(directory: Path, trust_remote_code: bool, uri: str, model: bool = True) -> None:
    """Refuse, in one line naming the spec field, to load code of the model's own unless it is allowed."""
    files = remote_code_files(directory, model)
    if files and not trust_remote_code:
        raise RemoteCodeError(
            f"{uri} ships its own code ({', '.join(files)}), which runs when it is loaded: set {TRUST_FIELD}: true "
            "to allow it (it runs in the worker pods; pin spec.model.revision to the commit you reviewed)"
        )


def load_causal_lm(directory: Path, trust_remote_code: bool, uri: str, **kwargs: Any) -> Any:
    """AutoModelForCausalLM from directory, running the model's own code only when trusted."""
    from transformers import AutoModelForCausalLM

    check_remote_code(directory, trust_remote_code, uri)
    return AutoModelForCausalLM.from_pretrained(str(directory), trust_remote_code=trust_remote_code, **kwargs)


def _named(value: Any) -> str | None:
    name = value.get("content") if isinstance(value, dict) else value
    return name or None


def special_tokens(directory: Path) -> dict[str, str]:
    """BOS, EOS and UNK to load the tokenizer with: the SentencePiece model's, for those the config leaves out."""
    config = _read_json(directory / "tokenizer_config.json")
    model = directory / "tokenizer.model"
    missing = [key for key in ("bos_token", "eos_token", "unk_token") if not _named(config.get(key))]
    if not missing or not model.is_file():
        return {}
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    ids = {"bos_token": sp.bos_id(), "eos_token": sp.eos_id(), "unk_token": sp.unk_id()}
    return {key: sp.id_to_piece(ids[key]) for key in missing if ids[key] >= 0}


def load_tokenizer(directory: Path, trust_remote_code: bool = False, sentencepiece: bool = False) -> Any:
    """The tokenizer in directory, with its BOS and EOS; the SentencePiece model itself when sentencepiece is set."""
    from transformers import AutoTokenizer

    from cpt_pipeline.preprocess.tokenize import EOS_CANDIDATES, TokenizerError

    check_remote_code(directory, trust_remote_code, str(directory), model=False)
    tokenizer = AutoTokenizer.from_pretrained(
        str(directory), trust_remote_code=trust_remote_code, **special_tokens(directory)
    )
    if tokenizer.eos_token_id is None:  # as preprocessing: a conventional EOS of the vocabulary
        vocab = tokenizer.get_vocab()
        tokenizer.eos_token = next((name for name in EOS_CANDIDATES if name in vocab), None)
    if tokenizer.eos_token_id is None:
        raise TokenizerError(
            f"tokenizer in {directory}: tokenizer_config.json names no eos_token, none of {list(EOS_CANDIDATES)} "
            "is in its vocabulary and there is no tokenizer.model to take it from"
        )
    return _sentencepiece_twin(tokenizer, directory / "tokenizer.model") if sentencepiece else tokenizer


def _sentencepiece_twin(tokenizer: Any, model: Path) -> Any:
    """A transformers tokenizer that encodes with the SentencePiece model itself (ids equal to
    `SentencePieceProcessor.encode`, special-token text included), adding BOS as tokenizer does."""
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    return SentencePieceBackend(
        vocab_file=str(model),
        legacy=True,
        split_special_tokens=True,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        unk_token=tokenizer.unk_token,
        special_tokens_pattern="bos" if adds_bos(tokenizer) else "none",
        model_max_length=tokenizer.model_max_length,
    )


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer prepends BOS when asked for its special tokens (what the model was trained with)."""
    bos = tokenizer.bos_token_id
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    return bos is not None and full[:1] == [bos] and full[1:] == plain


def document_start(tokenizer: Any) -> int:
    """The token every document follows: BOS when the tokenizer adds it, else EOS (the end of the one before)."""
    start = tokenizer.bos_token_id if adds_bos(tokenizer) else tokenizer.eos_token_id
    if start is None:
        raise ValueError("the tokenizer adds no BOS and has no EOS token to start documents with")
    return int(start)
