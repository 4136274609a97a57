"""What produced a prepared set: the spec fields and tokenizer that decide its documents and token ids.

Each worker's `done.json` records the identity it was prepared under (with the worker count, since units
are split among the workers), and each set's `manifest.json` the identity it was packed under (with the
sequence length). A rerun compares them with the current spec before it skips anything: an artifact made
under another spec (another model's tokenizer, an edited filter) is refused with one line naming what
changed, never reused. Training records a digest of the shards in `plan.json`, so a resume over shards
made again under another identity is refused too (`shard_digest`).
"""

from __future__ import annotations

import json
from typing import Any

import xxhash

from cpt.api import ContinuedPretrainSpec
from cpt.api.data import Source
from cpt_pipeline.preprocess.readers import streamed
from cpt_pipeline.preprocess.tokenize import TokenizerInfo
from cpt_pipeline.storage import Storage

WORKERS = "spec.data.preprocessing.workers (world size)"
SEQUENCE_LENGTH = "spec.data.sequenceLength"


class PreparedUnderAnotherSpec(ValueError):
    """A prepared artifact (a worker's output, a set's shards) was made under a different spec."""


def decontamination_inputs(spec: ContinuedPretrainSpec) -> list[str]:
    """Where decontamination reads the evaluation data (empty: decontamination is skipped)."""
    cfg = spec.data.decontamination
    if not cfg.enabled:
        return []
    return list(cfg.eval_data) or ([spec.evaluation.local_task_dir] if spec.evaluation.local_task_dir else [])


def _indexes_tasks(spec: ContinuedPretrainSpec) -> bool:
    """Whether decontamination indexes the evaluated splits of spec.evaluation.tasks (under localTaskDir)."""
    cfg = spec.data.decontamination
    return cfg.enabled and not cfg.eval_data and spec.evaluation.local_task_dir is not None


def prepare_identity(
    spec: ContinuedPretrainSpec, set_name: str, tokens_needed: int, tokenizer: TokenizerInfo
) -> dict[str, Any]:
    """{what: value} of everything that decides a set's documents and ids, labelled as the user knows it."""
    data = spec.data
    sources = [s.to_api() for s in data.sources] if set_name == "domain" else [data.active_replay.source.to_api()]
    filters = {k: v for k, v in data.filters.to_api().items() if k != "writeDropped"}
    limit = data.preprocessing.limit_to_budget
    identity: dict[str, Any] = {
        "spec.data.sources" if set_name == "domain" else "spec.data.replay.source": sources,
        "spec.data.filters": filters,
        "spec.data.dedup": data.dedup.to_api(),
        "spec.data.decontamination": {
            **data.decontamination.to_api(),
            "reads": decontamination_inputs(spec),
            "tasks": [t.name for t in spec.evaluation.tasks] if _indexes_tasks(spec) else None,
        },
        "tokenizer fingerprint (spec.model.uri / spec.model.tokenizer)": tokenizer.fingerprint,
        "tokenizer EOS id": tokenizer.eos_id,
        "tokenizer BOS id (starts every document when the tokenizer adds it)": tokenizer.bos_id,
        "spec.data.preprocessing.limitToBudget": limit,
        "tokens needed (spec.data.tokenBudget x the set's share)": tokens_needed if limit else None,
    }
    if set_name == "domain":
        perplexity = spec.evaluation.perplexity
        identity["spec.evaluation.perplexity.domain.heldOut"] = perplexity.domain_held_out
        if perplexity.domain_held_out:
            identity["spec.evaluation.perplexity.domain.maxDocuments"] = perplexity.domain.max_documents
    return identity


def rank_identity(prepared: dict[str, Any], world_size: int) -> dict[str, Any]:
    """The identity a worker records: what it prepared under, and among how many workers."""
    return {**prepared, WORKERS: world_size}


def set_identity(
    prepared: dict[str, Any], sequence_length: int, sources: list[Source], world_size: int
) -> dict[str, Any]:
    """The identity a set's manifest records: what its documents were prepared under, and the row length. The
    worker count only when a source is a streamed hub dataset (split per worker); otherwise the same documents
    are read for any number of workers."""
    identity = {**prepared, SEQUENCE_LENGTH: sequence_length}
    if any(streamed(s) for s in sources):
        identity[WORKERS] = world_size
    return identity


def changes(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """One phrase per leaf field that differs ("spec.data.filters.minLines was 3, is 5"); a missing record
    differs as a whole."""
    if recorded is None:
        return ["it records no identity (made by an older version)"]
    was, now = _leaves(recorded), _leaves(current)
    return [
        f"{field} was {_short(was.get(field))}, is {_short(now.get(field))}"
        for field in sorted(set(was) | set(now), key=_order(was, now))
        if was.get(field) != now.get(field)
    ]


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted path: value} of the scalars in nested dicts and lists (lists as [i])."""
    if isinstance(value, dict) and value:
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in value.items()]
    elif isinstance(value, list) and value:
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(value)]
    else:
        return {prefix: value}
    leaves: dict[str, Any] = {}
    for path, item in items:
        leaves.update(_leaves(item, path))
    return leaves


def _order(was: dict[str, Any], now: dict[str, Any]) -> Any:
    """Fields in the order the identity lists them (recorded first, then new ones)."""
    position = {field: i for i, field in enumerate([*was, *(f for f in now if f not in was)])}
    return position.__getitem__


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def refuse_if_changed(
    recorded: dict[str, Any] | None, current: dict[str, Any], artifact: str, storage: Storage
) -> None:
    """Raise PreparedUnderAnotherSpec (one line: the artifact, what changed, what to do) when they differ."""
    found = changes(recorded, current)
    if found:
        raise PreparedUnderAnotherSpec(
            f"{artifact} was prepared under a different spec: {'; '.join(found)}. Its shards would not match "
            f"this spec: use a new spec.storage.uri, or delete {storage.path('data')} and "
            f"{storage.path('work', 'preprocess')} to prepare again"
        )


def shard_digest(manifest: dict[str, Any]) -> str:
    """A digest of a set's identity and shard checksums: equal only for the same token rows."""
    shards = {name: [s["xxh3_128"] for s in entry["shards"]] for name, entry in sorted(manifest["sources"].items())}
    payload = json.dumps({"identity": manifest.get("identity"), "shards": shards}, sort_keys=True)
    return xxhash.xxh3_64_hexdigest(payload.encode())
