"""The model to train: a pretrained one (HF hub id, s3://, gs://, local path) or one built from a shape."""

from __future__ import annotations

import logging
from typing import Any

from cpt.api.model import Architecture, ModelSpec

log = logging.getLogger(__name__)

# MobileLLM-125M (Liu et al. 2024): deep and thin, grouped-query attention, tied embeddings.
PRESETS: dict[str, dict[str, Any]] = {
    "mobilellm-125m": {
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "vocab_size": 32000,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
}
_FIELDS = {
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings",
    "tie_embeddings": "tie_word_embeddings",
}


def llama_config(arch: Architecture, vocab_size: int | None = None) -> Any:
    """A LlamaConfig from a preset and/or explicit sizes (explicit sizes win)."""
    from transformers import LlamaConfig

    values = dict(PRESETS[arch.preset]) if arch.preset else {"tie_word_embeddings": True}
    values.setdefault("intermediate_size", 4 * (arch.hidden_size or 64))
    values.setdefault("max_position_embeddings", 2048)
    for ours, theirs in _FIELDS.items():
        if getattr(arch, ours) is not None:
            values[theirs] = getattr(arch, ours)
    if vocab_size and arch.vocab_size is None:
        values["vocab_size"] = vocab_size
    values.setdefault("num_key_value_heads", values["num_attention_heads"])
    return LlamaConfig(**values)


def load_model(spec: ModelSpec, vocab_size: int, attention: str, seed: int) -> Any:
    """The causal LM to continue: pretrained weights from spec.uri, or random init from spec.architecture."""
    import torch
    from transformers import AutoModelForCausalLM

    from cpt_pipeline.hf_loading import load_causal_lm

    attn = None if attention == "auto" else attention
    if spec.architecture is not None:
        torch.manual_seed(seed)
        config = llama_config(spec.architecture, vocab_size)
        if attn:
            config._attn_implementation = attn
        return AutoModelForCausalLM.from_config(config)
    from cpt_pipeline.fetch import local_dir

    kwargs: dict[str, Any] = {"attn_implementation": attn} if attn else {}
    try:
        path = local_dir(spec.uri or "", revision=spec.revision)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"spec.model.uri: {error}") from error
    return load_causal_lm(path, spec.trust_remote_code, spec.uri or "", dtype=torch.float32, **kwargs)


def count_parameters(model: Any) -> int:
    """Parameters, counting tied weights once (also under ZeRO-3, where .numel() of a shard is 0)."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += getattr(param, "ds_numel", None) or param.numel()
    return total
