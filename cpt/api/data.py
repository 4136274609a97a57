"""`spec.data`: sources, replay, filters, dedup, decontamination, packing and the token budget."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from cpt.api.base import MAX_LIST, ApiModel, DnsLabel, Rule, Uri, decimal, section

Fraction = decimal(ge=0, le=1)


class Source(ApiModel):
    """One input corpus."""

    name: DnsLabel = Field(description="Short unique name, used in stats and shard paths.")
    uri: Uri = Field(
        description="Files (local path, file://, s3://, gs://, hf://; globs allowed) or, for format hf, "
        "a Hugging Face dataset id."
    )
    format: Literal["jsonl", "parquet", "hf"] = Field(
        "jsonl", description="jsonl (also .gz/.zst), parquet, or a Hugging Face dataset (hf)."
    )
    text_field: str = Field("text", min_length=1, max_length=256, description="Field that holds the text.")
    weight: int = Field(1, ge=1, le=1000000, description="Relative sampling weight among the sources.")
    subset: str | None = Field(None, max_length=256, description="Dataset config name (format hf only).")
    split: str = Field("train", min_length=1, max_length=256, description="Dataset split (format hf only).")

    rules = (
        Rule(
            cel="self.format == 'hf' || !has(self.subset)",
            message="subset applies to format hf only",
            field="subset",
            check=lambda s: s.format == "hf" or s.subset is None,
        ),
    )


class Replay(ApiModel):
    """General-domain data mixed into every batch against catastrophic forgetting."""

    source: Source = Field(description="The general-domain corpus (prepared like the main sources).")
    fraction: decimal(ge=0, lt=1) = Field(
        "0.05",
        description='Share of training tokens drawn from the replay set, in [0, 1) (e.g. "0.05"); "0" turns replay '
        "off (the source is not read).",
    )


class NgramLimit(ApiModel):
    """Maximum fraction of characters covered by n-grams of size n."""

    size: int = Field(ge=1, le=20, description="n-gram size in words.")
    max_char_fraction: Fraction = Field(description="Maximum fraction of characters.")


def _top_ngrams() -> list[NgramLimit]:
    return [NgramLimit(size=n, max_char_fraction=f) for n, f in ((2, "0.20"), (3, "0.18"), (4, "0.16"))]


def _dup_ngrams() -> list[NgramLimit]:
    limits = ((5, "0.15"), (6, "0.14"), (7, "0.13"), (8, "0.12"), (9, "0.11"), (10, "0.10"))
    return [NgramLimit(size=n, max_char_fraction=f) for n, f in limits]


class RepetitionFilter(ApiModel):
    """Gopher-style repetition removal (Rae et al. 2021 thresholds by default)."""

    enabled: bool = Field(True, description="Drop repetitive documents.")
    dup_line_fraction: Fraction = Field("0.30", description="Max fraction of duplicated lines.")
    dup_paragraph_fraction: Fraction = Field("0.30", description="Max fraction of duplicated paragraphs.")
    dup_line_char_fraction: Fraction = Field("0.20", description="Max fraction of characters in duplicated lines.")
    dup_paragraph_char_fraction: Fraction = Field(
        "0.20", description="Max fraction of characters in duplicated paragraphs."
    )
    top_ngrams: list[NgramLimit] = Field(
        default_factory=_top_ngrams,
        max_length=MAX_LIST,
        description="Max character fraction of the most frequent n-gram, per n.",
    )
    dup_ngrams: list[NgramLimit] = Field(
        default_factory=_dup_ngrams,
        max_length=MAX_LIST,
        description="Max character fraction of all duplicated n-grams, per n.",
    )


class Filters(ApiModel):
    """Document filters; the paper's two are on by default, the heuristic sets are opt-in."""

    min_lines: int = Field(3, ge=0, le=100000, description="Drop documents with fewer lines (0 turns it off).")
    repetition: RepetitionFilter = section(RepetitionFilter, "Gopher-style repetition filter.")
    gopher_quality: bool = Field(False, description="Gopher quality heuristics (word counts, symbols, stop words).")
    fineweb_quality: bool = Field(False, description="FineWeb quality heuristics (line punctuation, short lines).")
    c4: bool = Field(False, description="C4-style line and document rules.")
    write_dropped: bool = Field(False, description="Write dropped documents (with the reason) for inspection.")


class MinHash(ApiModel):
    """MinHash near-duplicate removal."""

    enabled: bool = Field(False, description="Remove near-duplicates.")
    threshold: Fraction = Field("0.8", description="Estimated Jaccard similarity above which docs are duplicates.")
    num_perm: int = Field(128, ge=16, le=1024, description="Number of hash permutations.")
    ngram: int = Field(5, ge=1, le=32, description="Word shingle size.")


class Dedup(ApiModel):
    """Deduplication, global across all preprocessing workers."""

    exact: bool = Field(True, description="Exact (hash) dedup; the first occurrence is kept.")
    minhash: MinHash = section(MinHash, "Optional MinHash near-dedup.")


class Decontamination(ApiModel):
    """Drop training documents that share long n-grams with the evaluation sets."""

    enabled: bool = Field(True, description="Decontaminate against the configured evaluation tasks.")
    ngram: int = Field(13, ge=4, le=64, description="n-gram size in words.")
    eval_data: list[Uri] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Local files or directories of evaluation data (jsonl), all indexed; default: the evaluated "
        "split of each task under evaluation.localTaskDir. Without either (hub tasks), nothing is decontaminated "
        "and the stage output, manifest and status say so.",
    )


class Preprocessing(ApiModel):
    """Parallelism of the preprocessing stage."""

    workers: int = Field(4, ge=1, le=4096, description="Parallel workers (pods of an Indexed Job, or processes).")
    limit_to_budget: bool = Field(
        True,
        description="Read about the tokens the budget needs: each work unit stops at its share (by source weight "
        "and unit size) plus 50% headroom (for dedup and short units); false reads every document.",
    )
    tokenizer_batch_size: int = Field(1000, ge=1, le=1000000, description="Documents per tokenizer batch.")
    dedup_partitions: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Partitions of the dedup reduce (pods of an Indexed Job, or processes): each holds 1/N of "
        "the hashes and MinHash band keys, so its memory stays flat as the corpus grows. Default: one per worker.",
    )

    @property
    def partitions(self) -> int:
        """Partitions of the dedup reduce: dedupPartitions, else one per worker."""
        return self.dedup_partitions or self.workers


class DataSpec(ApiModel):
    """Training data and how it is prepared."""

    sources: list[Source] = Field(min_length=1, max_length=MAX_LIST, description="Domain corpora.")
    replay: Replay | None = Field(None, description="General-domain replay against forgetting.")
    filters: Filters = section(Filters, "Document filters.")
    dedup: Dedup = section(Dedup, "Deduplication.")
    decontamination: Decontamination = section(Decontamination, "Evaluation-set decontamination.")
    sequence_length: int = Field(2000, ge=16, le=1048576, description="Tokens per packed training row.")
    token_budget: int = Field(
        ge=1, le=10**15, description="Training tokens in total (an integer, e.g. 1000000000 for 1B)."
    )
    milestones: list[Annotated[int, Field(ge=1, le=10**15)]] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Token counts at which to checkpoint, export and evaluate (ascending, at most the budget).",
    )
    preprocessing: Preprocessing = section(Preprocessing, "Preprocessing parallelism.")

    rules = (
        Rule(
            cel="self.sources.all(s, self.sources.exists_one(t, t.name == s.name))",
            message="source names must be unique",
            field="sources",
            check=lambda d: len({s.name for s in d.sources}) == len(d.sources),
        ),
        Rule(
            cel="self.milestones.all(m, m <= self.tokenBudget)",
            message="milestones must not exceed tokenBudget",
            field="milestones",
            check=lambda d: all(m <= d.token_budget for m in d.milestones),
        ),
        Rule(
            cel="self.milestones.isSorted() && self.milestones.all(m, self.milestones.exists_one(n, n == m))",
            message="milestones must be strictly ascending",
            field="milestones",
            check=lambda d: all(a < b for a, b in zip(d.milestones, d.milestones[1:], strict=False)),
        ),
        Rule(
            cel="!has(self.replay) || self.sources.all(s, s.name != self.replay.source.name)",
            message="the replay source needs a name different from every domain source",
            field="replay",
            check=lambda d: d.replay is None or all(s.name != d.replay.source.name for s in d.sources),
        ),
    )

    @property
    def active_replay(self) -> Replay | None:
        """The replay set that is prepared and trained on: none when absent or when its fraction is 0."""
        return self.replay if self.replay is not None and float(self.replay.fraction) > 0 else None

    @property
    def milestones_with_budget(self) -> list[int]:
        """Every milestone, ending with the full budget."""
        return sorted({*self.milestones, self.token_budget})
