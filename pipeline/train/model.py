"""The model to train: a pretrained one (HF hub id, s3://, gs://, local path) or one built from a shape."""

from __future__ import annotations

import logging
from typing import Any

from cpt.api.model import Architecture, ModelSpec
from cpt.shapes import architecture_config

log = logging.getLogger(__name__)


def llama_config(arch: Architecture, vocab_size: int | None = None) -> Any:
    """A LlamaConfig from a preset and/or explicit sizes (explicit sizes win; cpt/shapes.py)."""
    from transformers import LlamaConfig

    return LlamaConfig(**architecture_config(arch, vocab_size))


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
