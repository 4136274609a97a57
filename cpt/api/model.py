"""`spec.model`: the base model, its tokenizer, and an optional architecture override."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cpt.api.base import ApiModel, Rule, SecretKeyRef, Uri

MOBILELLM_125M = "mobilellm-125m"


class Architecture(ApiModel):
    """A Llama-style architecture to build from scratch instead of loading weights (smoke runs).

    `preset` fills every size at once; any size given here overrides the preset's value.
    """

    preset: Literal["mobilellm-125m", "tiny"] | None = Field(
        None, description="Named shape: mobilellm-125m (576 hidden, 30 layers, 9/3 heads) or tiny."
    )
    hidden_size: int | None = Field(None, ge=8, le=65536, description="Hidden (embedding) size.")
    num_layers: int | None = Field(None, ge=1, le=1024, description="Number of transformer blocks.")
    num_heads: int | None = Field(None, ge=1, le=1024, description="Number of attention heads.")
    num_kv_heads: int | None = Field(None, ge=1, le=1024, description="Number of key/value heads (GQA).")
    intermediate_size: int | None = Field(None, ge=8, le=262144, description="MLP inner size.")
    vocab_size: int | None = Field(None, ge=2, le=1048576, description="Vocabulary size; must match the tokenizer.")
    max_position_embeddings: int | None = Field(None, ge=16, le=1048576, description="Longest sequence.")
    tie_embeddings: bool | None = Field(None, description="Share input and output embeddings.")

    rules = (
        Rule(
            cel="has(self.preset) || (has(self.hiddenSize) && has(self.numLayers) && has(self.numHeads))",
            message="give a preset or at least hiddenSize, numLayers and numHeads",
            check=lambda a: a.preset is not None or None not in (a.hidden_size, a.num_layers, a.num_heads),
        ),
        Rule(
            cel="!has(self.hiddenSize) || !has(self.numHeads) || self.numHeads < 1 "
            "|| self.hiddenSize % self.numHeads == 0",
            message="hiddenSize must be divisible by numHeads",
            field="hiddenSize",
            check=lambda a: a.hidden_size is None or a.num_heads is None or a.hidden_size % a.num_heads == 0,
        ),
        Rule(
            cel="!has(self.numHeads) || !has(self.numKvHeads) || self.numKvHeads < 1 "
            "|| self.numHeads % self.numKvHeads == 0",
            message="numHeads must be divisible by numKvHeads",
            field="numKvHeads",
            check=lambda a: a.num_heads is None or a.num_kv_heads is None or a.num_heads % a.num_kv_heads == 0,
        ),
    )


class ModelSpec(ApiModel):
    """The base model to continue pre-training."""

    uri: Uri | None = Field(
        None,
        description="Base model: a Hugging Face hub id (org/name), s3://, gs://, file:// or a local path.",
    )
    revision: str | None = Field(
        None,
        max_length=256,
        description="Hub revision (branch, tag or commit) of a hub model: used for training, for its tokenizer "
        "(unless tokenizer names another one) and for the baseline evaluation.",
    )
    tokenizer: Uri | None = Field(None, description="Tokenizer URI; defaults to the model URI.")
    architecture: Architecture | None = Field(
        None, description="Build the model from this architecture (random init) instead of loading uri."
    )
    secret_ref: SecretKeyRef | None = Field(
        None, description="Secret holding a hub token (e.g. HF_TOKEN) for gated or private models."
    )
    trust_remote_code: bool = Field(
        False,
        description="Run the model's own Python code (config.json auto_map, e.g. facebook/MobileLLM-125M) "
        "when loading it and its tokenizer. That code comes from the model's repository and runs in the "
        "worker pods with their credentials: review it and pin revision to the commit reviewed.",
    )

    rules = (
        Rule(
            cel="has(self.uri) || has(self.architecture)",
            message="set uri (a model to load) or architecture (a model to build)",
            field="uri",
            check=lambda m: m.uri is not None or m.architecture is not None,
        ),
        Rule(
            cel="has(self.uri) || has(self.tokenizer)",
            message="a model built from an architecture needs a tokenizer",
            field="tokenizer",
            check=lambda m: m.uri is not None or m.tokenizer is not None,
        ),
    )

    @property
    def tokenizer_revision(self) -> str | None:
        """The hub revision of the tokenizer: the model's, when the tokenizer is the model's own."""
        return self.revision if self.tokenizer in (None, self.uri) else None

    @property
    def tokenizer_uri(self) -> str:
        """The tokenizer to use: the explicit one, else the model's own."""
        return self.tokenizer or self.uri or ""
