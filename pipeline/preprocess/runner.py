"""The preprocessing stage: `prepare` (one call per worker rank) and `reduce` (one call after all ranks).

prepare(rank, world): plan the work units (the same plan on every rank), read this rank's units, filter,
decontaminate and tokenize in batches. It writes a token stream (EOS after every document), per-document
arrays (unit, position, source, token end) and one bucket per dedup partition (exact hashes and MinHash
band keys, partitions.py) to `work/preprocess/<set>/rank-NNNNN/`, and `done.json` last. A rank that
finds its `done.json` is skipped.

reduce(partition): check that every rank is done. Decide the duplicates of one partition's bucket
(`dedup-of-P/part-NNNNN.npz`); the index that finds every partition decided packs: it removes the
duplicates, packs each source's documents in the global (unit, position) order into shards, and writes
the manifest last. Without a partition, one process decides them all and packs. A set whose manifest
exists is skipped.

Sets: `domain` (all spec.data.sources, deduplicated together) and `replay` (spec.data.replay.source,
unless its fraction is 0). With evaluation.perplexity.domain.heldOut, a share of the domain documents is
held out (held_out.py): written for evaluation, never tokenized into a shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cpt.api import ContinuedPretrainSpec
from cpt.api.data import Source
from cpt_pipeline.preprocess import stats as keys
from cpt_pipeline.preprocess import words as word_loop
from cpt_pipeline.preprocess.copies import WrittenTexts, text_key
from cpt_pipeline.preprocess.decontam import Decontaminator, eval_files, evaluated_files
from cpt_pipeline.preprocess.dedup import MinHasher, exact_hash
from cpt_pipeline.preprocess.filters import FilterChain
from cpt_pipeline.preprocess.held_out import HELD_OUT_PATH, HeldOutWriter, is_held_out, merge
from cpt_pipeline.preprocess.identity import (
    prepare_identity,
    rank_identity,
    refuse_if_changed,
    set_identity,
)
from cpt_pipeline.preprocess.partitions import (
    band_keys,
    band_ranges,
    bucket_files,
    decide_partition,
    global_ids,
    keep_masks,
)
from cpt_pipeline.preprocess.readers import Document, SourceError, WorkUnit, plan_units, read_unit
from cpt_pipeline.preprocess.segments import MANIFEST, segment_dir, tokens_for
from cpt_pipeline.preprocess.segments import budgets as segment_budgets
from cpt_pipeline.preprocess.segments import manifests as segment_manifests
from cpt_pipeline.preprocess.shards import FORMAT, ShardPacker, rows_per_shard
from cpt_pipeline.preprocess.started import record_start, started_budget
from cpt_pipeline.preprocess.stats import Stats
from cpt_pipeline.preprocess.tokenize import TextTokenizer, TokenizerInfo, files_digest, resolve_tokenizer_dir
from cpt_pipeline.status_push import push_status
from cpt_pipeline.storage import Storage

log = logging.getLogger(__name__)
TOKENIZER_SAMPLE = 64
HEADROOM = 1.5  # read up to 1.5 x each unit's share: room for dedup, and for units that give less than theirs
NOT_DECONTAMINATED = (
    "skipped: nothing was decontaminated: the evaluation tasks come from the hub, and neither "
    "decontamination.evalData nor evaluation.localTaskDir names their files"
)
PROGRESS_SECONDS = 2.0  # a preprocess_progress event at most this often per worker


@dataclass(frozen=True)
class DataSet:
    """A group of sources prepared into one shard set (one segment of it: segments.py)."""

    name: str
    sources: list[Source]
    tokens_needed: int
    budget: int = 0  # spec.data.tokenBudget this segment is prepared for
    segment: int = 0
    previous_budget: int = 0  # the budget of the segment before (0 for segment 0)

    @property
    def dir_name(self) -> str:
        return segment_dir(self.name, self.segment)


def data_sets(spec: ContinuedPretrainSpec) -> list[DataSet]:
    budget = spec.data.token_budget
    replay = spec.data.active_replay
    fraction = float(replay.fraction) if replay else 0.0
    sets = [DataSet("domain", list(spec.data.sources), math.ceil(budget * (1 - fraction)), budget)]
    if replay is not None:
        sets.append(DataSet("replay", [replay.source], math.ceil(budget * fraction), budget))
    return sets


def pending_segment(
    spec: ContinuedPretrainSpec, storage: Storage, data_set: DataSet, tokenizer: TokenizerInfo, world_size: int
) -> tuple[DataSet | None, dict[str, Any]]:
    """(the segment of the set still to prepare, or None when the prepared segments cover the budget; the identity
    it is prepared under). A grown budget is a new segment under segment 0's identity, refused like segment 0 when
    anything else changed (segments.py). A segment keeps the budget its workers started under: a budget grown
    while it was prepared is the next segment's."""
    found = segment_manifests(storage, data_set.name)
    budget = started_budget(storage, segment_dir(data_set.name, len(found)), data_set.budget)
    if not found:
        pending = replace(data_set, budget=budget, tokens_needed=tokens_for(spec, data_set.name, budget))
        return pending, prepare_identity(spec, data_set.name, pending.tokens_needed, tokenizer)
    last = segment_budgets(storage, spec, data_set.name, found)[-1]
    prepared = prepare_identity(spec, data_set.name, found[0]["tokens_needed"], tokenizer)
    current = set_identity(prepared, spec.data.sequence_length, data_set.sources, world_size)
    refuse_if_changed(found[0].get("identity"), current, storage.path("data", data_set.name, MANIFEST), storage)
    if budget <= last:
        return None, prepared
    needed = tokens_for(spec, data_set.name, budget) - tokens_for(spec, data_set.name, last)
    return replace(data_set, budget=budget, tokens_needed=needed, segment=len(found), previous_budget=last), prepared


def source_needs(data_set: DataSet) -> dict[str, int]:
    """Tokens each source should give: the set's need shared by source weight."""
    total_weight = sum(s.weight for s in data_set.sources)
    return {s.name: math.ceil(data_set.tokens_needed * s.weight / total_weight) for s in data_set.sources}


def unit_caps(data_set: DataSet, units: list[WorkUnit], limit: bool) -> dict[int, float]:
    """Tokens each unit may give (infinite when limitToBudget is off): its source's need, plus headroom, shared
    over the source's units by size (bytes or rows). Caps belong to units, not workers, so the same documents
    are read for any number of workers, and a big file among small ones gives its full share."""
    if not limit:
        return {unit.index: math.inf for unit in units}
    needs = source_needs(data_set)
    sizes: Counter[str] = Counter()
    for unit in units:
        sizes[unit.source] += unit.size
    return {u.index: math.ceil(needs[u.source] * HEADROOM * u.size / sizes[u.source]) for u in units}


def work_dir(storage: Storage, set_name: str, rank: int) -> Storage:
    return storage.sub("work", "preprocess", set_name, f"rank-{rank:05d}")


def bucket_name(partition: int) -> str:
    """A worker's bucket of one dedup partition."""
    return f"bucket-{partition:05d}.npz"


def decisions_dir(storage: Storage, set_name: str, partitions: int) -> Storage:
    """Where the dedup partitions write their decisions (per partition count: buckets are made for one)."""
    return storage.sub("work", "preprocess", set_name, f"dedup-of-{partitions}")


def _part_name(partition: int) -> str:
    return f"part-{partition:05d}.npz"


def _decontaminator(spec: ContinuedPretrainSpec) -> tuple[Decontaminator | None, str]:
    """The index of what is evaluated (decontam.py), and the note the manifest and status record."""
    cfg = spec.data.decontamination
    if not cfg.enabled:
        return None, "disabled"
    if cfg.eval_data:
        files, what = eval_files(cfg.eval_data), "decontamination.evalData"
    elif spec.evaluation.local_task_dir:
        tasks = [t.name for t in spec.evaluation.tasks]
        files = evaluated_files(spec.evaluation.local_task_dir, tasks)
        what = f"the evaluated splits of {', '.join(tasks)}"
    else:
        log.warning("preprocess: %s", NOT_DECONTAMINATED)
        return None, NOT_DECONTAMINATED
    index = Decontaminator.from_files(files, cfg.ngram)
    return index, f"{len(index)} {cfg.ngram}-grams from {len(files)} files ({what})"


def _tokenizer_sample(units: list[WorkUnit], sources: dict[str, Source]) -> list[str]:
    """The first documents of the first unit: the same sample on every rank."""
    sample: list[str] = []
    for unit in units[:1]:
        for doc in read_unit(unit, sources[unit.source], Stats()):
            sample.append(doc.text)
            if len(sample) >= TOKENIZER_SAMPLE:
                break
    return sample


def _batches(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _RankWriter:
    """Accumulates one rank's token stream (in a local scratch file), per-document arrays and dedup keys."""

    def __init__(self, scratch: Path, dtype: str, exact: bool, bands: list[tuple[int, int]] | None) -> None:
        self.path = scratch / "tokens.bin"
        self.handle = self.path.open("wb")
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.tokens = 0
        self.columns: dict[str, list[Any]] = {k: [] for k in ("ends", "units", "positions", "sources", "exact")}
        self.exact = exact
        self.bands = bands
        self.band_keys: list[list[tuple[int, int]]] = []

    def add(
        self, doc: Document, source: int, ids: list[int] | np.ndarray, eos: int, signature: np.ndarray | None
    ) -> None:
        array = ids if isinstance(ids, np.ndarray) else np.fromiter(ids, dtype=self.dtype, count=len(ids))
        self.handle.write(array.tobytes())
        self.handle.write(np.array([eos], dtype=self.dtype).tobytes())
        self.tokens += len(ids) + 1
        for key, value in (
            ("ends", self.tokens),
            ("units", doc.unit),
            ("positions", doc.position),
            ("sources", source),
        ):
            self.columns[key].append(value)
        if self.exact:
            self.columns["exact"].append(exact_hash(doc.text))
        if self.bands is not None and signature is not None:
            self.band_keys.append(band_keys(signature, self.bands))

    def arrays(self, partitions: int) -> tuple[bytes, list[bytes]]:
        """docs.npz, and one dedup bucket per partition."""
        self.handle.close()
        data = {
            "ends": np.array(self.columns["ends"], dtype=np.int64),
            "units": np.array(self.columns["units"], dtype=np.int64),
            "positions": np.array(self.columns["positions"], dtype=np.int64),
            "sources": np.array(self.columns["sources"], dtype=np.int32),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **data)
        exact = np.array(self.columns["exact"], dtype=np.uint64) if self.exact else None
        bands = None
        if self.bands is not None:  # an idle rank still has the keys' shape
            bands = np.array(self.band_keys, dtype=np.uint64).reshape(-1, len(self.bands), 2)
        return buffer.getvalue(), bucket_files(exact, bands, data["units"], data["positions"], partitions)


def prepare(spec: ContinuedPretrainSpec, storage: Storage, rank: int, world_size: int) -> Stats:
    """Read, filter, decontaminate and tokenize this rank's share of every set."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    total = Stats()
    decontaminator, decontam_note = _decontaminator(spec)
    chain = FilterChain.from_spec(spec.data.filters)
    hasher = MinHasher(spec.data.dedup.minhash) if spec.data.dedup.minhash.enabled else None
    if word_loop.NATIVE is None:
        log.warning("preprocess rank %d: word loop in %s; the same results, slower", rank, word_loop.IMPLEMENTATION)
    partitions = spec.data.preprocessing.partitions
    sets = data_sets(spec)
    first = sets[0]
    tokenizer = TextTokenizer(
        spec.model.tokenizer_uri,
        sample=_tokenizer_sample(plan_units(first.sources, world_size), {s.name: s for s in first.sources}),
        revision=spec.model.tokenizer_revision,
        trust_remote_code=spec.model.trust_remote_code,
    )
    for whole in sets:
        data_set, prepared = pending_segment(spec, storage, whole, tokenizer.info, world_size)
        if data_set is None:
            log.info("preprocess %s rank %d: the set is packed already, skipped", whole.name, rank)
            continue
        out = work_dir(storage, data_set.dir_name, rank)
        done = _finished(storage, data_set, prepared, rank, world_size)
        if done is not None:
            log.info("preprocess %s rank %d: already done, skipped", data_set.dir_name, rank)
            total.merge(Stats.from_json(done["stats"]))
            continue
        record_start(storage, data_set.dir_name, data_set.budget)  # before reading: a later worker keeps it
        started = time.perf_counter()
        by_name = {s.name: s for s in data_set.sources}
        units, starts = _open_units(storage, data_set, world_size, rank)
        caps = unit_caps(data_set, units, spec.data.preprocessing.limit_to_budget)
        stats = Stats()
        source_index = {s.name: i for i, s in enumerate(data_set.sources)}
        cut: dict[str, list[int]] = {}
        next_positions: dict[str, int] = {}  # by unit: the first document not prepared, where a next segment starts
        with tempfile.TemporaryDirectory(prefix="cpt-prep-") as scratch:
            bands = band_ranges(hasher.cfg) if hasher else None
            writer = _RankWriter(Path(scratch), tokenizer.info.dtype, spec.data.dedup.exact, bands)
            # dropped documents stream to a scratch file, uploaded (streamed) with the rank's other outputs
            dropped = (Path(scratch) / "dropped.jsonl").open("wb") if spec.data.filters.write_dropped else None
            perplexity = spec.evaluation.perplexity
            held_out = perplexity.domain_held_out if data_set.name == "domain" else 0.0
            held = HeldOutWriter(Path(scratch), perplexity.domain.max_documents) if held_out else None
            steps = _DocumentSteps(chain, decontaminator, tokenizer, hasher, dropped, held, held_out)
            written = WrittenTexts() if spec.data.dedup.exact else None
            reader = _UnitReader(
                steps, spec.data.preprocessing.tokenizer_batch_size, stats, writer, data_set.dir_name, rank, written
            )
            for unit in units:
                if unit.index % world_size != rank:
                    continue
                start = starts.get(str(unit.index), 0)
                stopped = reader.read(unit, by_name[unit.source], source_index[unit.source], caps[unit.index], start)
                if stopped is not None:
                    cut.setdefault(unit.source, []).append(unit.index)
                    next_positions[str(unit.index)] = stopped
            arrays, buckets = writer.arrays(partitions)
            stats.add(keys.TOKENS, writer.tokens)
            stats.seconds = time.perf_counter() - started
            out.put_file(str(writer.path), "tokens.bin")
            out.write_bytes(arrays, "docs.npz")
            for partition, bucket in enumerate(buckets):
                out.write_bytes(bucket, bucket_name(partition))
            if dropped is not None:
                dropped.close()
                out.put_file(dropped.name, "dropped.jsonl")
            if held is not None:
                out.put_file(held.close(), "heldout.jsonl")
        out.write_json(
            {
                "rank": rank,
                "world_size": world_size,
                "partitions": partitions,
                "identity": _rank_identity(data_set, prepared, world_size),
                "budget": data_set.budget,
                "units": len(units),
                "stats": stats.to_json(),
                "tokenizer": tokenizer.info.to_json(),
                "tokenizer_digest": files_digest(tokenizer.directory, tokenizer.info.uri, tokenizer.trust_remote_code),
                "word_hash": word_loop.WORD_HASH,
                "decontamination": decontam_note,
                "cut_units": cut,  # by source: the units left at their cap, with documents unread
                "next_positions": next_positions,
            },
            "done.json",
        )
        seconds = max(stats.seconds, 1e-9)
        log.info(
            "preprocess %s rank %d/%d: %s; %.1fs, %.0f docs/s, %.0f tokens/s",
            data_set.dir_name,
            rank,
            world_size,
            stats.summary(),
            stats.seconds,
            stats.counts[keys.DOCS_READ] / seconds,
            writer.tokens / seconds,
        )
        total.merge(stats)
    return total


@dataclass(frozen=True)
class _DocumentSteps:
    """What happens to each document read: filters, decontamination, the held-out split, tokenization."""

    chain: FilterChain
    decontaminator: Decontaminator | None
    tokenizer: TextTokenizer
    hasher: MinHasher | None
    dropped: BinaryIO | None
    held: HeldOutWriter | None
    held_fraction: float


@dataclass
class _UnitReader:
    """One rank's reading: each unit's documents through the steps into the writer, up to the unit's cap."""

    steps: _DocumentSteps
    batch_docs: int
    stats: Stats
    writer: _RankWriter
    set_name: str
    rank: int
    written: WrittenTexts | None = None  # with exact dedup: a copy of a text written before is not tokenized
    last_event: float = field(default_factory=time.monotonic)

    def read(self, unit: WorkUnit, source: Source, source_index: int, cap: float, first: int = 0) -> int | None:
        """Add the unit's documents from position `first` until it gave `cap` tokens (stopping at a document
        boundary); the position of the first document not added when it stopped at the cap, None at its end."""
        steps, writer = self.steps, self.writer
        start = writer.tokens
        unread = (doc for doc in read_unit(unit, source, self.stats) if doc.position >= first)
        for batch in _batches(unread, self.batch_docs):
            kept = _keep(batch, steps.chain, steps.decontaminator, self.stats, steps.dropped)
            if steps.held is not None:
                kept = _hold_out(kept, source.name, steps.held_fraction, steps.held, self.stats)
            self.last_event = _progress_event(self.last_event, self.set_name, self.rank, self.stats, writer.tokens)
            text_keys = [text_key(d.text) for d in kept] if self.written is not None else [None] * len(kept)
            for doc, key, ids in zip(kept, text_keys, self._encode(kept, text_keys), strict=True):
                if writer.tokens - start >= cap:
                    return doc.position
                signature = steps.hasher.signature(doc.text) if steps.hasher else None
                if ids is None:
                    ids = self._copy_ids(doc, key)
                writer.add(doc, source_index, ids, steps.tokenizer.info.eos_id, signature)
                if self.written is not None and key is not None:
                    self.written.record(key, doc.unit, doc.position, len(ids))
            if writer.tokens - start >= cap:
                return batch[-1].position + 1
        return None

    def _encode(self, kept: list[Document], text_keys: list[int | None]) -> list[list[int] | None]:
        """Each document's token ids; None for a copy of a text written at an earlier place (`copies.py`)."""
        tokenizer = self.steps.tokenizer
        if self.written is None:
            return tokenizer.encode_batch([d.text for d in kept])
        self.written.trim()
        in_batch: set[int | None] = set()
        copies = []
        for doc, key in zip(kept, text_keys, strict=True):
            earlier = key in in_batch or self.written.tokens_of_earlier_copy(key, doc.unit, doc.position) is not None
            copies.append(earlier)
            in_batch.add(key)
        encoded = iter(tokenizer.encode_batch([d.text for d, copy in zip(kept, copies, strict=True) if not copy]))
        return [None if copy else next(encoded) for copy in copies]

    def _copy_ids(self, doc: Document, key: int | None) -> np.ndarray | list[int]:
        """Zeros as long as the earlier copy's ids: the reduce drops this copy and never reads them."""
        written = self.written
        count = written.tokens_of_earlier_copy(key, doc.unit, doc.position) if written and key is not None else None
        if count is None:  # the earlier copy was not written after all: tokenize this one
            return self.steps.tokenizer.encode_batch([doc.text])[0]
        return np.zeros(count, dtype=self.writer.dtype)


def _finished(
    storage: Storage, data_set: DataSet, prepared: dict[str, Any], rank: int, world_size: int
) -> dict[str, Any] | None:
    """The worker's done.json of the segment, refused when made under another spec; None when it has not finished,
    or finished for another budget than the segment's: it started as the budget grew, before the segment's first
    worker recorded its start, or an earlier incarnation of the run made it (`started.py`). It prepares again, and
    its output goes."""
    out = work_dir(storage, data_set.dir_name, rank)
    if not out.exists("done.json"):
        return None
    done = out.read_json("done.json")
    if _for_another_budget(done, data_set.budget):
        log.warning(
            "preprocess %s rank %d: prepared for spec.data.tokenBudget %d, but the segment is prepared for %d (the "
            "budget grew meanwhile, or the run was applied again with another): preparing again",
            data_set.dir_name,
            rank,
            done["budget"],
            data_set.budget,
        )
        out.remove()
        return None
    refuse_if_changed(
        done.get("identity"), _rank_identity(data_set, prepared, world_size), out.path("done.json"), storage
    )
    return done


def _for_another_budget(done: dict[str, Any], budget: int) -> bool:
    """Did the worker of this done.json prepare its segment for another budget than `budget`, the segment's? (One
    from before workers recorded their budget counts as the segment's.)"""
    return done.get("budget", budget) != budget


def _rank_identity(data_set: DataSet, prepared: dict[str, Any], world_size: int) -> dict[str, Any]:
    """What a worker records; a later segment also its budget (a worker's share depends on it)."""
    identity = rank_identity(prepared, world_size)
    if data_set.segment:
        identity[f"spec.data.tokenBudget (segment {data_set.segment})"] = data_set.budget
    return identity


def _open_units(storage: Storage, data_set: DataSet, world_size: int, rank: int) -> tuple[list[WorkUnit], dict]:
    """The units a segment reads (all of them for segment 0; for a later one, those the segment before left at
    their cap), and {unit index: the position to start at}, from this rank's record of the segment before."""
    units = plan_units(data_set.sources, world_size)
    if data_set.segment == 0:
        return units, {}
    before = work_dir(storage, segment_dir(data_set.name, data_set.segment - 1), rank)
    starts = before.read_json("done.json").get("next_positions", {}) if before.exists("done.json") else {}
    # every rank plans the same units: caps are shared over the units still open on any rank
    open_anywhere: set[str] = set()
    for other in range(world_size):
        peer = work_dir(storage, segment_dir(data_set.name, data_set.segment - 1), other)
        if peer.exists("done.json"):
            open_anywhere |= set(peer.read_json("done.json").get("next_positions", {}))
    return [u for u in units if str(u.index) in open_anywhere], starts


def _keep(
    batch: list[Document],
    chain: FilterChain,
    decontaminator: Decontaminator | None,
    stats: Stats,
    dropped: BinaryIO | None,
) -> list[Document]:
    """The documents that pass the filters and decontamination; the others are counted (and kept for
    inspection in `dropped` when asked for)."""
    kept = []
    for doc in batch:
        stats.add(keys.DOCS_READ)
        reason = chain.reason(doc.text)
        if reason is not None:
            stats.dropped(reason)
        elif decontaminator is not None and decontaminator.contaminated(doc.text):
            reason = keys.CONTAMINATED
            stats.add(keys.CONTAMINATED)
        if reason is None:
            kept.append(doc)
        elif dropped is not None:
            record = {"reason": reason, "location": doc.location, "text": doc.text}
            dropped.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
    stats.add(keys.DOCS_TOKENIZED, len(kept))
    return kept


def _progress_event(last: float, set_name: str, rank: int, stats: Stats, tokens: int) -> float:
    """Print a preprocess_progress event (documents read, tokens written) when PROGRESS_SECONDS have passed;
    returns the time of the last event."""
    now = time.monotonic()
    if now - last < PROGRESS_SECONDS:
        return last
    event = {"event": "preprocess_progress", "set": set_name, "rank": rank, "docs": stats.counts[keys.DOCS_READ]}
    print(json.dumps({**event, "tokens": tokens}), flush=True)
    return now


def _hold_out(docs: list[Document], source: str, fraction: float, held: HeldOutWriter, stats: Stats) -> list[Document]:
    """The documents that train; the held-out ones go to `held` (counted, never tokenized)."""
    kept = []
    for doc in docs:
        if is_held_out(doc.text, fraction):
            held.add(doc, source)
            stats.add(keys.HELD_OUT)
        else:
            kept.append(doc)
    return kept


def _done(storage: Storage, set_name: str, rank: int, world_size: int, partitions: int) -> dict[str, Any]:
    """A worker's done.json, refused when it is missing or was made for another world size or partition count."""
    out = work_dir(storage, set_name, rank)
    if not out.exists("done.json"):
        raise RuntimeError(
            f"preprocess {set_name}: worker {rank} of {world_size} has not finished "
            f"(no {out.path('done.json')}); rerun that worker"
        )
    done = out.read_json("done.json")
    for what, want in (("world size", world_size), ("dedup partitions", partitions)):
        had = done["world_size"] if what == "world size" else done.get("partitions", "none (an older version)")
        if had != want:
            raise RuntimeError(
                f"preprocess {set_name}: worker {rank} ran with {what} {had}, "
                f"not {want}; delete {storage.path('work')} and rerun"
            )
    return done


def _load_rank(storage: Storage, set_name: str, rank: int, done: dict[str, Any]) -> dict[str, Any]:
    """A worker's per-document columns (not its dedup buckets) for packing."""
    out = work_dir(storage, set_name, rank)
    with np.load(io.BytesIO(out.read_bytes("docs.npz"))) as arrays:
        columns = {k: arrays[k] for k in ("ends", "units", "positions", "sources")}
    return {"done": done, "columns": columns, "dir": out}


def dedup_partition(
    set_dir: Storage, world_size: int, partition: int, partitions: int, inputs: str | None = None
) -> bytes:
    """Reduce index `partition`: its bucket from every worker, decided (partitions.decide_partition); `inputs`
    (inputs_digest of the workers' done.json) is recorded in the part."""
    buckets = []
    for rank in range(world_size):
        data = set_dir.sub(f"rank-{rank:05d}").read_bytes(bucket_name(partition))
        with np.load(io.BytesIO(data)) as arrays:
            buckets.append({k: arrays[k] for k in arrays.files})
    return decide_partition(buckets, inputs=inputs)


def inputs_digest(dones: list[dict[str, Any]]) -> str:
    """A digest of every worker's done.json: decisions made from other worker outputs do not match it."""
    digest = hashlib.sha256()
    for done in dones:
        digest.update(json.dumps(done, sort_keys=True).encode())
    return digest.hexdigest()


def _decide(set_dir: Storage, decided: Storage, world_size: int, partition: int, partitions: int, inputs: str) -> None:
    """Write partition's decisions unless they exist and were made from these worker outputs."""
    if not _decided(decided, partition, inputs):
        decided.write_bytes(dedup_partition(set_dir, world_size, partition, partitions, inputs), _part_name(partition))


def _decided(decided: Storage, partition: int, inputs: str) -> bool:
    """Whether partition's decisions exist and were made from these worker outputs (inputs_digest)."""
    if not decided.exists(_part_name(partition)):
        return False
    with np.load(io.BytesIO(decided.read_bytes(_part_name(partition)))) as arrays:
        made_from = str(arrays["inputs"]) if "inputs" in arrays.files else None
    if made_from != inputs:
        log.info("dedup partition %d: decided from other worker outputs; deciding again", partition)
    return made_from == inputs


def reduce(
    spec: ContinuedPretrainSpec,
    storage: Storage,
    world_size: int,
    shard_rows: int | None = None,
    partition: int | None = None,
) -> dict[str, Any]:
    """Decide one dedup partition (all of them when None) of each set's pending segment; the index that finds all
    decided packs it and writes its manifest. Returns the status summary once every set is packed, else {}."""
    partitions = spec.data.preprocessing.partitions
    if partition is not None and not 0 <= partition < partitions:
        raise ValueError(f"dedup partition {partition} is outside spec.data.preprocessing.dedupPartitions {partitions}")
    stale = _stale_ranks(spec, storage, world_size)
    why = f"have no buckets for {partitions} partitions (finished under an older version, or another dedupPartitions)"
    if _left_to_index_0(partition, stale, why):
        return {}
    if stale:
        unpacked = [s.name for s in data_sets(spec) if not storage.exists("data", s.name, "manifest.json")]
        _prepare_again(spec, storage, world_size, dict.fromkeys(stale, unpacked), "its outputs have no dedup buckets")
        partition = None  # index 0 decides every partition and packs
    mixed = _mixed_word_hash_folders(spec, storage, world_size)
    why = "hashed words for MinHash as another version did, unlike the other workers of their segment"
    if _left_to_index_0(partition, sorted(mixed), why):
        return {}
    if mixed:
        _prepare_again(spec, storage, world_size, mixed, "its MinHash word hash is another version's")
        partition = None
    raced = _raced_ranks(spec, storage, world_size)
    why = "prepared for a budget that grew after their segment's first worker started"
    if _left_to_index_0(partition, raced, why):
        return {}
    if raced:
        for rank in raced:
            prepare(spec, storage, rank, world_size)  # for the segment's budget (_finished)
        partition = None
    tokenizer = _tokenizer_info(spec, storage)
    manifests: dict[str, dict[str, Any]] = {}
    packed = True
    for whole in data_sets(spec):
        data_set, prepared = pending_segment(spec, storage, whole, tokenizer, world_size)
        if data_set is None:
            log.info("preprocess %s: manifest exists, skipped", whole.name)
        else:
            dones = _checked_ranks(storage, data_set, world_size, prepared, partitions)
            inputs = inputs_digest(dones)
            decided = decisions_dir(storage, data_set.dir_name, partitions)
            set_dir = storage.sub("work", "preprocess", data_set.dir_name)
            for index in range(partitions) if partition is None else [partition]:
                _decide(set_dir, decided, world_size, index, partitions, inputs)
            if _packs(decided, partitions, partition, inputs):
                for index in range(partitions):  # one decided before a worker ran again: its index has finished
                    _decide(set_dir, decided, world_size, index, partitions, inputs)
                _reduce_set(spec, storage, data_set, dones, shard_rows, prepared)
            packed = packed and storage.exists("data", data_set.dir_name, MANIFEST)
        for index, manifest in enumerate(segment_manifests(storage, whole.name)):
            manifests[segment_dir(whole.name, index)] = manifest
    if not packed:  # another index packs
        return {}
    if str(manifests["domain"]["decontamination"]).startswith("skipped"):
        log.warning("preprocess domain: decontamination %s", manifests["domain"]["decontamination"])
    summary = status_summary(manifests)
    storage.write_json(summary, "data", "preprocess-status.json")
    push_status("kubecpt-dedup", {"preprocess": summary})
    return summary


def _stale_ranks(spec: ContinuedPretrainSpec, storage: Storage, world_size: int) -> list[int]:
    """Workers that finished an unpacked set without buckets for this partition count (an older version wrote
    no `partitions`, or spec.data.preprocessing.dedupPartitions changed since)."""
    partitions = spec.data.preprocessing.partitions
    stale = set()
    for data_set in data_sets(spec):
        if storage.exists("data", data_set.name, "manifest.json"):
            continue
        for rank in range(world_size):
            out = work_dir(storage, data_set.name, rank)
            if out.exists("done.json") and out.read_json("done.json").get("partitions") != partitions:
                stale.add(rank)
    return sorted(stale)


def _left_to_index_0(partition: int | None, ranks: list[int], why: str) -> bool:
    """Whether this dedup index leaves the workers `ranks` to index 0, which prepares them again and decides every
    partition: every other index does, and says why."""
    if not ranks or partition in (None, 0):
        return False
    log.warning(
        "dedup partition %d: workers %s %s; index 0 prepares them again and decides every partition",
        partition,
        ranks,
        why,
    )
    return True


def _raced_ranks(spec: ContinuedPretrainSpec, storage: Storage, world_size: int) -> list[int]:
    """Workers that finished a set's pending segment for another budget than its first worker's: they started as
    the budget grew, before that worker recorded its start, or an earlier incarnation made them (`_finished`)."""
    raced = set()
    for whole in data_sets(spec):
        folder = _pending_dir(storage, whole.name)
        budget = started_budget(storage, folder, whole.budget)
        for rank in range(world_size):
            out = work_dir(storage, folder, rank)
            if out.exists("done.json") and _for_another_budget(out.read_json("done.json"), budget):
                raced.add(rank)
    return sorted(raced)


def _mixed_word_hash_folders(spec: ContinuedPretrainSpec, storage: Storage, world_size: int) -> dict[int, list[str]]:
    """With MinHash on: where the workers of a set's pending segment hashed words differently (an image changed
    mid-run), those that did not hash them as this version does, each with the pending folders where it did not.
    Signatures of two word hashes never match; a segment whose workers agree, whatever their version, is decided
    as it is, and is not touched when the same worker is prepared again for another set."""
    if not spec.data.dedup.minhash.enabled:
        return {}
    folders: dict[int, list[str]] = {}
    for whole in data_sets(spec):
        folder = _pending_dir(storage, whole.name)
        hashes = {}
        for rank in range(world_size):
            out = work_dir(storage, folder, rank)
            if out.exists("done.json"):
                hashes[rank] = out.read_json("done.json").get("word_hash", word_loop.OLDER_WORD_HASH)
        if len(set(hashes.values())) > 1:
            for rank in (rank for rank, used in hashes.items() if used != word_loop.WORD_HASH):
                folders.setdefault(rank, []).append(folder)
    return dict(sorted(folders.items()))


def _pending_dir(storage: Storage, set_name: str) -> str:
    """The folder of the set's pending segment: the first not packed."""
    return segment_dir(set_name, len(segment_manifests(storage, set_name)))


def _prepare_again(
    spec: ContinuedPretrainSpec, storage: Storage, world_size: int, folders: dict[int, list[str]], why: str
) -> None:
    """Delete each worker's outputs in its `folders` and prepare it again, here (dedup index 0): prepare redoes
    only the sets whose output is gone."""
    for rank, deleted in folders.items():
        log.warning("dedup: preparing worker %d of %d again (%s)", rank, world_size, why)
        for folder in deleted:
            work_dir(storage, folder, rank).remove()
        prepare(spec, storage, rank, world_size)


def _tokenizer_info(spec: ContinuedPretrainSpec, storage: Storage) -> TokenizerInfo:
    """The tokenizer worker 0 recorded when its files are unchanged (tokenize.files_digest), else loaded here."""
    model = spec.model
    directory = resolve_tokenizer_dir(model.tokenizer_uri, model.tokenizer_revision)
    label = f"{model.tokenizer_uri}@{model.tokenizer_revision}" if model.tokenizer_revision else model.tokenizer_uri
    done = work_dir(storage, "domain", 0)
    if done.exists("done.json"):
        recorded = done.read_json("done.json")
        if recorded.get("tokenizer_digest") == files_digest(directory, label, model.trust_remote_code):
            return TokenizerInfo.from_json(recorded["tokenizer"])
    return TextTokenizer(
        model.tokenizer_uri, revision=model.tokenizer_revision, trust_remote_code=model.trust_remote_code
    ).info


def _packs(decided: Storage, partitions: int, partition: int | None, inputs: str) -> bool:
    """Whether this index packs: every partition is decided (the packer decides again those made from other
    worker outputs than `inputs`), and no other index claimed packing these outputs (a claim is a hint against
    double work; two indexes that pack together write the same bytes, atomically)."""
    if partition is None:
        return True
    if not all(decided.exists(_part_name(p)) for p in range(partitions)):
        log.info("dedup partition %d of %d: decided; another index will pack", partition, partitions)
        return False
    if decided.exists("pack-claim.json"):
        claim = decided.read_json("pack-claim.json")
        if claim.get("inputs") == inputs and claim["partition"] != partition:
            return False
    decided.write_json({"partition": partition, "inputs": inputs}, "pack-claim.json")
    return True


def _checked_ranks(
    storage: Storage, data_set: DataSet, world_size: int, prepared: dict[str, Any], partitions: int
) -> list[dict[str, Any]]:
    """Every worker's done.json, each refused when prepared under another identity."""
    dones = [_done(storage, data_set.dir_name, r, world_size, partitions) for r in range(world_size)]
    identity = _rank_identity(data_set, prepared, world_size)
    for rank, done in enumerate(dones):
        path = work_dir(storage, data_set.dir_name, rank).path("done.json")
        refuse_if_changed(done.get("identity"), identity, path, storage)
    return dones


def _exact_hashes(set_dir: Storage, rank: int, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """(exact hashes, the worker's document index of each) from every dedup bucket of one worker."""
    hashes, docs = [np.empty(0, dtype=np.uint64)], [np.empty(0, dtype=np.int64)]
    for partition in range(partitions):
        with np.load(io.BytesIO(set_dir.sub(f"rank-{rank:05d}").read_bytes(bucket_name(partition)))) as arrays:
            if "exact" in arrays.files:
                hashes.append(arrays["exact"])
                docs.append(arrays["exact_doc"].astype(np.int64))
    return np.concatenate(hashes), np.concatenate(docs)


def _earlier_duplicates(storage: Storage, data_set: DataSet, world_size: int, sizes: list[int]) -> np.ndarray:
    """Over every worker's documents of a later segment (in rank order): those with the exact hash (the same
    text) of a document an earlier segment prepared."""
    earlier = [np.empty(0, dtype=np.uint64)]
    for segment in range(data_set.segment):
        folder = segment_dir(data_set.name, segment)
        for rank in range(world_size):
            set_dir = storage.sub("work", "preprocess", folder)
            earlier.append(_exact_hashes(set_dir, rank, _worker_partitions(storage, folder, rank))[0])
    seen = np.concatenate(earlier)
    current = storage.sub("work", "preprocess", data_set.dir_name)
    masks = []
    for rank, size in enumerate(sizes):
        hashes, docs = _exact_hashes(current, rank, _worker_partitions(storage, data_set.dir_name, rank))
        mask = np.zeros(size, dtype=bool)
        mask[docs[np.isin(hashes, seen)]] = True
        masks.append(mask)
    return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)


def _worker_partitions(storage: Storage, folder: str, rank: int) -> int:
    """The dedup partitions a worker of a segment wrote its buckets for."""
    return int(work_dir(storage, folder, rank).read_json("done.json").get("partitions", 1))


def _merge_held_out(
    spec: ContinuedPretrainSpec, storage: Storage, data_set: DataSet, ranks: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The held-out file's manifest entry (domain set, heldOut set), after writing it from the workers' shares."""
    if data_set.name != "domain" or data_set.segment or not spec.evaluation.perplexity.domain_held_out:
        return None  # a later segment's held-out documents are left out of training only: evaluation keeps one set
    limit = spec.evaluation.perplexity.domain.max_documents
    weights = {s.name: s.weight for s in data_set.sources}
    documents = merge([r["dir"] for r in ranks], storage, limit, weights)
    return {"documents": documents, "uri": storage.url(*HELD_OUT_PATH)}


def _deduplicated(storage: Storage, data_set: DataSet, ranks: list[dict[str, Any]], stats: Stats) -> np.ndarray:
    """The keep mask over every worker's documents (in rank order), from every partition's decisions."""
    partitions = ranks[0]["done"]["partitions"]
    decided = decisions_dir(storage, data_set.dir_name, partitions)
    inputs = inputs_digest([r["done"] for r in ranks])
    decisions = []
    for p in range(partitions):
        with np.load(io.BytesIO(decided.read_bytes(_part_name(p)))) as arrays:
            if "inputs" not in arrays.files or str(arrays["inputs"]) != inputs:  # rewritten since _packs looked
                raise RuntimeError(
                    f"preprocess {data_set.name}: {decided.path(_part_name(p))} was decided from other worker "
                    "outputs; rerun the dedup"
                )
            decisions.append({k: arrays[k] for k in arrays.files if k != "inputs"})
    ids = np.concatenate([global_ids(r["columns"]["units"], r["columns"]["positions"]) for r in ranks])
    keep, exact, near = keep_masks(decisions, [len(r["columns"]["ends"]) for r in ranks], ids)
    stats.add(keys.DUPLICATES, exact)
    if near:
        stats.add(keys.NEAR_DUPLICATES, near)
    return np.concatenate(keep)


def _reduce_set(
    spec: ContinuedPretrainSpec,
    storage: Storage,
    data_set: DataSet,
    dones: list[dict[str, Any]],
    shard_rows: int | None,
    prepared: dict[str, Any],
) -> None:
    started = time.perf_counter()
    world_size = len(dones)
    ranks = [_load_rank(storage, data_set.dir_name, r, done) for r, done in enumerate(dones)]
    stats = Stats()
    for rank in ranks:
        stats.merge(Stats.from_json(rank["done"]["stats"]))
    columns = {k: np.concatenate([r["columns"][k] for r in ranks]) for k in ("units", "positions", "sources")}
    owner = np.concatenate([np.full(len(r["columns"]["ends"]), i, dtype=np.int64) for i, r in enumerate(ranks)])
    local = np.concatenate([np.arange(len(r["columns"]["ends"]), dtype=np.int64) for r in ranks])
    order = np.lexsort((columns["positions"], columns["units"]))
    keep = _deduplicated(storage, data_set, ranks, stats)
    if data_set.segment and spec.data.dedup.exact:
        earlier = _earlier_duplicates(storage, data_set, len(ranks), [len(r["columns"]["ends"]) for r in ranks])
        stats.add(keys.DUPLICATES, int((keep & earlier).sum()))
        keep &= ~earlier
    stats.add(keys.DOCS_KEPT, int(keep.sum()))
    if not keep.any():
        files = ", ".join(s.uri for s in data_set.sources)
        if data_set.segment:
            raise SourceError(
                f"preprocess {data_set.dir_name}: spec.data.tokenBudget grew from {data_set.previous_budget} to "
                f"{data_set.budget}, but {files} hold no document that the earlier segments did not prepare "
                f"({stats.summary()}): the sources ran out; add data to them"
            )
        raise SourceError(f"preprocess {data_set.name}: no document survived from {files} ({stats.summary()})")

    tokenizer = ranks[0]["done"]["tokenizer"]
    dtype = np.dtype(tokenizer["dtype"]).newbyteorder("<")
    seq_len = spec.data.sequence_length
    rows = shard_rows or rows_per_shard(seq_len, dtype.itemsize)
    per_source: dict[str, Any] = {}
    needs = source_needs(data_set)
    kept_tokens = 0
    with tempfile.TemporaryDirectory(prefix="cpt-reduce-") as cache:
        streams = [_token_stream(r["dir"], dtype, cache) for r in ranks]
        for index, source in enumerate(data_set.sources):
            packer = ShardPacker(storage.sub("data", data_set.dir_name, source.name), seq_len, dtype, rows)
            selected = order[keep[order] & (columns["sources"][order] == index)]
            for doc in selected:
                ends = ranks[owner[doc]]["columns"]["ends"]
                start = ends[local[doc] - 1] if local[doc] else 0
                packer.add(streams[owner[doc]][start : ends[local[doc]]])
            entry = packer.finish()
            if entry["rows"] == 0:
                raise SourceError(
                    f"preprocess {data_set.name}: source {source.name!r} ({source.uri}) yielded no full row of "
                    f"{seq_len} tokens ({len(selected)} document(s) kept); training would silently drop it and "
                    "its weight. Check its files and filters, or remove it from the spec"
                )
            entry["weight"] = source.weight
            entry["tokens_needed"] = needs[source.name]
            entry["epochs"] = round(needs[source.name] / entry["tokens"], 3)  # passes training makes over it
            kept_tokens += entry["tokens"] + entry["tail_tokens"]
            per_source[source.name] = entry
        del streams  # close the memmaps before their directory goes
    stats.counts[keys.TOKENS] = kept_tokens
    held_out = _merge_held_out(spec, storage, data_set, ranks)
    manifest = {
        "format": FORMAT,
        "set": data_set.name,
        "segment": data_set.segment,
        "budget": data_set.budget,
        "previous_budget": data_set.previous_budget,
        "identity": set_identity(prepared, seq_len, data_set.sources, world_size),
        "dtype": dtype.name,
        "seq_len": seq_len,
        "tokenizer": tokenizer,
        "eos_id": tokenizer["eos_id"],
        "sources": per_source,
        "rows": sum(s["rows"] for s in per_source.values()),
        "tokens": sum(s["tokens"] for s in per_source.values()),
        "tail_tokens": sum(s["tail_tokens"] for s in per_source.values()),
        "tokens_needed": data_set.tokens_needed,
        "epochs": max(entry["epochs"] for entry in per_source.values()),
        "workers": world_size,
        "decontamination": ranks[0]["done"]["decontamination"],
        "held_out": held_out,
        "stats": stats.to_json(),
        "reduce_seconds": round(time.perf_counter() - started, 3),
    }
    storage.write_json(manifest, "data", data_set.dir_name, MANIFEST)
    log.info(
        "preprocess %s: %d rows of %d tokens in %d shards (+%d tail tokens), %s epochs of the %d tokens needed; %s",
        data_set.dir_name,
        manifest["rows"],
        seq_len,
        sum(len(s["shards"]) for s in per_source.values()),
        manifest["tail_tokens"],
        manifest["epochs"],
        data_set.tokens_needed,
        stats.summary(),
    )
    _warn_if_short(data_set.dir_name, per_source, [r["done"].get("cut_units", {}) for r in ranks])


def _warn_if_short(set_name: str, per_source: dict[str, Any], cut_units: list[dict[str, list[int]]]) -> None:
    """A warning for each source whose rows cannot cover its share of the budget: training repeats them."""
    for name, entry in per_source.items():
        if entry["epochs"] <= 1:
            continue
        cut = sum(len(rank.get(name, [])) for rank in cut_units)
        why = (
            f"{cut} of its units stopped at their share (dedup or filters removed more than the "
            f"{HEADROOM:g}x headroom): set spec.data.preprocessing.limitToBudget to false to read all of it"
            if cut
            else "all of its data is used: add data, lower its weight or spec.data.tokenBudget"
        )
        log.warning(
            "preprocess %s: source '%s' holds %d of the %d tokens its weight needs: training will repeat it, "
            "%s epochs; %s",
            set_name,
            name,
            entry["tokens"],
            entry["tokens_needed"],
            entry["epochs"],
            why,
        )


def _token_stream(rank_dir: Storage, dtype: np.dtype, cache_dir: str) -> np.ndarray:
    """A rank's token stream as a memmap (object stores: downloaded to cache_dir first, streaming)."""
    path = rank_dir.local_copy("tokens.bin", cache_dir=cache_dir)
    if os.path.getsize(path) == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


TOKEN_KEYS = ("tokens", "tail_tokens")


def status_summary(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The PreprocessStatus fields (camelCase) the operator copies into the resource's status; `manifests` by
    segment folder (domain, domain-segment-01, replay, ...): tokens and counts over every segment, epochs by
    segment."""
    domain = manifests.get("domain", {})
    stats = Stats()
    for manifest in manifests.values():
        stats.merge(Stats.from_json(manifest["stats"]))
    c = stats.counts

    def tokens(set_name: str) -> int:  # over the set's segments
        of_set = [m for name, m in manifests.items() if name == set_name or name.startswith(f"{set_name}-segment-")]
        return sum(m.get(k, 0) for m in of_set for k in TOKEN_KEYS)

    return {
        "shards": sum(len(s["shards"]) for m in manifests.values() for s in m["sources"].values()),
        "tokens": tokens("domain") if domain else 0,
        "replayTokens": tokens("replay") if "replay" in manifests else 0,
        "docsRead": c[keys.DOCS_READ],
        "docsKept": c[keys.DOCS_KEPT],
        "docsDropped": stats.dropped_by_reason(),
        "duplicates": c[keys.DUPLICATES] + c[keys.NEAR_DUPLICATES],
        "contaminated": c[keys.CONTAMINATED],
        "heldOut": c[keys.HELD_OUT],
        "badRecords": c[keys.BAD_RECORDS],
        "epochs": {name: manifest["epochs"] for name, manifest in manifests.items()},
        "decontamination": domain.get("decontamination"),
    }
