"""The shape of the model a spec trains (parameters, layers, hidden size, vocabulary), found without torch.

In order: `spec.model.architecture` (a preset and/or sizes, as the trainer builds it); a local model folder's
`config.json` (parameters counted from its `*.safetensors` headers when present, else by the Llama formula
below), only where the caller may read local files (`cpt plan`; the operator cannot); a hub id in
KNOWN_MODELS, whose config.json is one of the presets. Anything else is unknown, with the reason.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from cpt.api.model import Architecture, ModelSpec
from cpt.memory import ModelShape

# Hugging Face config values of the named shapes (`spec.model.architecture.preset`).
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
# Hub ids whose config.json has the sizes of a preset (checked against the published config.json).
KNOWN_MODELS = {"facebook/MobileLLM-125M": "mobilellm-125m"}

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
_NEEDED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


@dataclass(frozen=True)
class FoundShape:
    """A model's shape, or None with `source` saying why it is unknown."""

    shape: ModelShape | None
    source: str


def architecture_config(arch: Architecture, vocab_size: int | None = None) -> dict[str, Any]:
    """The Llama config values of an architecture: the preset's, overridden by explicit sizes; without a
    vocabulary size, `vocab_size` (the tokenizer's)."""
    values = dict(PRESETS[arch.preset]) if arch.preset else {"tie_word_embeddings": True}
    values.setdefault("intermediate_size", 4 * (arch.hidden_size or 64))
    values.setdefault("max_position_embeddings", 2048)
    for ours, theirs in _FIELDS.items():
        if getattr(arch, ours) is not None:
            values[theirs] = getattr(arch, ours)
    if vocab_size and arch.vocab_size is None:
        values["vocab_size"] = vocab_size
    values.setdefault("num_key_value_heads", values["num_attention_heads"])
    return values


def llama_parameters(config: dict[str, Any]) -> int:
    """Parameters of a Llama-style causal LM (transformers' LlamaForCausalLM) from its config values: embeddings,
    per layer the q/k/v/o projections (grouped-query k/v), the SwiGLU MLP and two RMSNorms, the final norm, and
    the LM head unless tied."""
    hidden, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = (config.get("num_key_value_heads") or heads) * head_dim
    inner = config["intermediate_size"]
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv
    if config.get("attention_bias"):
        attention += heads * head_dim + 2 * kv + hidden
    mlp = 3 * hidden * inner + ((2 * inner + hidden) if config.get("mlp_bias") else 0)
    head = 0 if config.get("tie_word_embeddings", True) else vocab * hidden
    return vocab * hidden + layers * (attention + mlp + 2 * hidden) + hidden + head


def _shape(config: dict[str, Any], params: int | None = None) -> ModelShape:
    return ModelShape(
        params or llama_parameters(config), config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]
    )


def safetensors_parameters(folder: Path) -> int | None:
    """Parameters stored in a folder's *.safetensors files, from their headers (no tensor is read); None
    without such files."""
    total, found = 0, False
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        total += sum(prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
        found = True
    return total if found else None


def local_model_folder(uri: str | None) -> Path | None:
    """The local folder a model URI names (a path or file://), None for hub ids and object stores."""
    if not uri or uri.startswith(("s3://", "gs://")):
        return None
    path = Path(uri.removeprefix("file://"))
    return path if path.is_dir() else None


def _from_folder(folder: Path) -> FoundShape:
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return FoundShape(None, f"{config_file}: unreadable ({error})")
    missing = [key for key in _NEEDED if not isinstance(config.get(key), int)]
    if missing:
        return FoundShape(None, f"{config_file}: no {', '.join(missing)} (not a Llama-style config)")
    counted = safetensors_parameters(folder)
    how = "parameters from its safetensors headers" if counted else "parameters by the Llama formula"
    return FoundShape(_shape(config, counted), f"{config_file} ({how})")


def model_shape(model: ModelSpec, read_local: bool) -> FoundShape:
    """The shape of the model `model` names; `read_local`: a local model folder may be read."""
    if model.architecture is not None:
        arch = model.architecture
        if arch.preset is None and arch.vocab_size is None:
            return FoundShape(None, "spec.model.architecture has no vocabSize (it comes from the tokenizer)")
        return FoundShape(_shape(architecture_config(arch)), "spec.model.architecture")
    folder = local_model_folder(model.uri) if read_local else None
    if folder is not None:
        return _from_folder(folder)
    if model.uri in KNOWN_MODELS:
        preset = KNOWN_MODELS[model.uri]
        return FoundShape(_shape(PRESETS[preset]), f"{model.uri}: the {preset} shape (cpt/shapes.py KNOWN_MODELS)")
    where = "" if read_local else " (the operator reads no model files)"
    return FoundShape(None, f"{model.uri}: not a model id in cpt/shapes.py KNOWN_MODELS nor a local folder{where}")
