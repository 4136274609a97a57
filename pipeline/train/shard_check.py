"""Before training: the prepared shards can feed this model.

The shards must have the spec's sequence length, one tokenizer for every set, and that tokenizer must be
the one the spec names for the model (same files, same EOS id), with EOS the model's own and ids inside its
vocabulary. Shards left in the storage by another model are refused here, before any step.
"""

from __future__ import annotations

from typing import Any

from cpt.api import ContinuedPretrainSpec
from cpt.api.model import ModelSpec
from cpt_pipeline.preprocess.tokenize import TextTokenizer
from cpt_pipeline.train.data import DataError

AGAIN = "preprocess again under a new spec.storage.uri"


def model_eos_id(spec: ModelSpec, config: Any) -> int | list[int] | None:
    """The EOS id(s) of a loaded model's config; None for a model built from an architecture (no own EOS)."""
    return None if spec.architecture is not None else getattr(config, "eos_token_id", None)


def check_data(
    manifests: dict[str, dict[str, Any]],
    spec: ContinuedPretrainSpec,
    model_vocab: int,
    model_eos: int | list[int] | None,
) -> None:
    """Raise DataError, naming the mismatch, when the shards cannot feed this model."""
    domain = manifests["domain"]
    if domain["seq_len"] != spec.data.sequence_length:
        raise DataError(
            f"shards have sequence length {domain['seq_len']}, spec.data.sequenceLength is "
            f"{spec.data.sequence_length}: preprocess again"
        )
    prints = {name: m["tokenizer"]["fingerprint"] for name, m in manifests.items()}
    if len(set(prints.values())) > 1:
        raise DataError(f"the shard sets were tokenized with different tokenizers: {prints}")
    _check_tokenizer(domain, spec)
    eos = domain["eos_id"]
    if model_eos is not None and eos not in (model_eos if isinstance(model_eos, list) else [model_eos]):
        raise DataError(
            f"the shards end each document with EOS id {eos} ({domain['tokenizer']['uri']}), but the model's EOS "
            f"id is {model_eos} (eos_token_id in its config.json): {AGAIN}, with a tokenizer that matches the model"
        )
    vocab = domain["tokenizer"]["vocab_size"]
    if vocab > model_vocab:
        raise DataError(
            f"tokenizer/vocab mismatch: the shards use a {vocab}-token vocabulary "
            f"({domain['tokenizer']['uri']}) but the model has {model_vocab} embeddings"
        )


def _check_tokenizer(domain: dict[str, Any], spec: ContinuedPretrainSpec) -> None:
    """The shards' tokenizer is the spec's (same files and EOS id)."""
    recorded = domain["tokenizer"]
    expected = TextTokenizer(
        spec.model.tokenizer_uri, revision=spec.model.tokenizer_revision, trust_remote_code=spec.model.trust_remote_code
    ).info
    if recorded["fingerprint"] != expected.fingerprint:
        raise DataError(
            f"the shards were tokenized with another tokenizer than the spec's: {recorded['uri']} (fingerprint "
            f"{recorded['fingerprint']}), while {expected.uri} has fingerprint {expected.fingerprint}: {AGAIN}"
        )
    if domain["eos_id"] != expected.eos_id:
        raise DataError(
            f"the shards end each document with EOS id {domain['eos_id']}, the tokenizer {expected.uri} has EOS id "
            f"{expected.eos_id}: {AGAIN}"
        )
