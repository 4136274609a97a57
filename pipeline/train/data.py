"""Training samples from packed shards: replay mixed in at a fixed fraction, sources by weight, exact resume.

Every sample is a pure function of its global index k, so resuming needs only the step number:
- replay or domain: sample k is replay iff floor((k+1) f) > floor(k f), so exactly a fraction f of every
  prefix is replay, evenly spread. Replay ordinal = floor(k f); domain ordinal = k - floor(k f).
- the domain ordinal picks a source by smooth weighted round-robin over the source weights.
- a source ordinal o is row perm_e[o mod n] of that source, in epoch e = o div n; perm_e is a seeded
  permutation, so epochs differ and repeat data only when the budget exceeds the data.
Global indices for optimizer step s, micro-step m, rank r and batch slot b:
k = ((s * grad_accum + m) * world + r) * micro_batch + b. Ranks therefore read disjoint samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cpt_pipeline.storage import Storage

PATTERN_MAX = 4096


class DataError(ValueError):
    """Shards missing or not matching the model/tokenizer: stop before training starts."""


@dataclass
class SourceRows:
    """The shards of one source, with a cached local copy of each shard opened as a memmap."""

    set_name: str
    name: str
    weight: int
    storage: Storage
    shards: list[dict[str, Any]]
    seq_len: int
    dtype: np.dtype
    cache_dir: str
    starts: np.ndarray = field(init=False)
    _maps: dict[int, np.ndarray] = field(default_factory=dict)
    _perm: tuple[int, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.starts = np.concatenate(([0], np.cumsum([s["rows"] for s in self.shards])))

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    def row(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, index, side="right") - 1)
        if shard not in self._maps:
            path = self.storage.local_copy(self.shards[shard]["path"], cache_dir=self.cache_dir)
            self._maps[shard] = np.memmap(path, dtype=self.dtype, mode="r").reshape(-1, self.seq_len)
        return self._maps[shard][index - self.starts[shard]]

    def permuted(self, ordinal: int, seed: int, key: int) -> int:
        epoch, position = divmod(ordinal, self.rows)
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([seed, key, epoch])
            self._perm = (epoch, rng.permutation(self.rows))
        return int(self._perm[1][position])


def _round_robin(weights: list[int]) -> np.ndarray:
    """Smooth weighted round-robin order of source indices, one period long (scaled to PATTERN_MAX)."""
    total = sum(weights)
    if total > PATTERN_MAX:
        weights = [max(1, round(w * PATTERN_MAX / total)) for w in weights]
    current = [0] * len(weights)
    order = []
    for _ in range(sum(weights)):
        current = [c + w for c, w in zip(current, weights, strict=True)]
        best = max(range(len(weights)), key=lambda i: current[i])
        current[best] -= sum(weights)
        order.append(best)
    return np.array(order, dtype=np.int64)


def load_set(storage: Storage, set_name: str, cache_dir: str) -> tuple[dict[str, Any], list[SourceRows]]:
    """The manifest of a prepared set and its sources; DataError names what is missing."""
    if not storage.exists("data", set_name, "manifest.json"):
        raise DataError(
            f"no prepared {set_name} data: {storage.url('data', set_name, 'manifest.json')} is missing "
            "(run the preprocess and dedup stages first)"
        )
    manifest = storage.read_json("data", set_name, "manifest.json")
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    sources = []
    for name, entry in manifest["sources"].items():
        base = storage.sub("data", set_name, name)
        present = set(base.list())
        missing = [s["path"] for s in entry["shards"] if s["path"] not in present]
        if missing:
            raise DataError(
                f"{set_name}/{name}: shards listed in the manifest are missing from {base.url()}: {missing[:5]}"
            )
        if entry["rows"] == 0:
            raise DataError(
                f"{set_name}/{name}: the manifest lists no full row of {manifest['seq_len']} tokens for this source, "
                "so its weight could not be honoured: preprocess again with more data for it, or remove it"
            )
        sources.append(
            SourceRows(
                set_name, name, entry.get("weight", 1), base, entry["shards"], manifest["seq_len"], dtype, cache_dir
            )
        )
    if not sources:
        raise DataError(f"{set_name}: the manifest lists no source")
    return manifest, sources


@dataclass
class MixedSamples:
    """Deterministic samples by global index from the domain set and (optionally) the replay set."""

    domain: list[SourceRows]
    replay: list[SourceRows]
    fraction: float
    seed: int

    def __post_init__(self) -> None:
        self._pattern = _round_robin([s.weight for s in self.domain])
        self._replay_pattern = _round_robin([s.weight for s in self.replay]) if self.replay else None
        self._counts = [np.concatenate(([0], np.cumsum(self._pattern == i))) for i in range(len(self.domain))]
        self._replay_counts = (
            [np.concatenate(([0], np.cumsum(self._replay_pattern == i))) for i in range(len(self.replay))]
            if self.replay
            else []
        )

    def locate(self, k: int) -> tuple[SourceRows, int]:
        """(source, row) of global sample k."""
        before, after = math.floor(k * self.fraction), math.floor((k + 1) * self.fraction)
        if self.replay and after > before:
            return self._pick(self.replay, self._replay_pattern, self._replay_counts, before, key=1)
        return self._pick(self.domain, self._pattern, self._counts, k - before, key=0)

    def _pick(
        self, sources: list[SourceRows], pattern: np.ndarray, counts: list[np.ndarray], ordinal: int, key: int
    ) -> tuple[SourceRows, int]:
        period, offset = divmod(ordinal, len(pattern))
        index = int(pattern[offset])
        per_period = int(counts[index][-1])
        source_ordinal = period * per_period + int(counts[index][offset])
        source = sources[index]
        return source, source.permuted(source_ordinal, self.seed, key * 1000 + index)

    def sample(self, k: int) -> tuple[np.ndarray, str]:
        """The tokens of sample k and its id (set/source/row)."""
        source, row = self.locate(k)
        return source.row(row), f"{source.set_name}/{source.name}/{row}"

    def batch(
        self, step: int, micro: int, rank: int, world: int, micro_batch: int, grad_accum: int
    ) -> tuple[np.ndarray, list[str]]:
        first = ((step * grad_accum + micro) * world + rank) * micro_batch
        rows, ids = zip(*(self.sample(first + b) for b in range(micro_batch)), strict=True)
        return np.stack(rows).astype(np.int64), list(ids)


@dataclass
class SegmentedSamples:
    """A grown run's samples (docs/training.md, "Extending a run"): the steps of segment j, from `firsts[j]` on, read
    segment j's shards as a run of their own, counted from its first step, so the steps before keep their samples."""

    parts: list[MixedSamples]
    firsts: list[int]  # the first step (0-based) of each segment

    def batch(
        self, step: int, micro: int, rank: int, world: int, micro_batch: int, grad_accum: int
    ) -> tuple[np.ndarray, list[str]]:
        index = max(i for i, first in enumerate(self.firsts) if first <= step)
        return self.parts[index].batch(step - self.firsts[index], micro, rank, world, micro_batch, grad_accum)
