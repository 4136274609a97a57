"""The held-out domain split (evaluation.perplexity.domain.heldOut): documents scored, never trained on.

A document is held out when the 64-bit hash of its text falls in the first `heldOut` share of the hash
range: the split needs no ids, is the same on every worker and every rerun, and exact copies of a held-out
document are held out with it (a copy left in training would leak it). It is drawn after the filters and
decontamination, so the held-out text is as clean as the training text. The file evaluation reads,
`data/heldout/domain.jsonl`, holds at most maxDocuments of them, shared across the domain sources by
weight (a source that has fewer gives its place to the others), and within a source those with the
smallest text hash: a deterministic sample of the whole source rather than its first file, the same for
any number of workers. Each worker keeps that many per source; the reduce merges them and writes the
choice in the global (unit, position) order.
"""

from __future__ import annotations

import heapq
import json
import math
from pathlib import Path
from typing import Any

from cpt_pipeline import jsonl
from cpt_pipeline.preprocess.dedup import exact_hash
from cpt_pipeline.preprocess.readers import Document
from cpt_pipeline.storage import Storage

RANK_FILE = "heldout.jsonl"
HELD_OUT_PATH = ("data", "heldout", "domain.jsonl")


def is_held_out(text: str, fraction: float) -> bool:
    return fraction > 0 and exact_hash(text) < fraction * 2**64


class HeldOutWriter:
    """One worker's held-out documents: per source, the `limit` with the smallest text hash (a uniform sample
    that does not depend on the reading order), in a scratch file at close."""

    def __init__(self, scratch: Path, limit: int) -> None:
        self.path = scratch / RANK_FILE
        self.limit = limit
        self._heaps: dict[str, list[tuple[int, int, int, str]]] = {}  # max-heap on the hash: (-hash, ...)
        self._hashes: dict[str, set[int]] = {}

    def add(self, doc: Document, source: str) -> None:
        key = exact_hash(doc.text)
        heap, hashes = self._heaps.setdefault(source, []), self._hashes.setdefault(source, set())
        if key in hashes:
            return  # a later copy: the first one (in reading order) stands for it
        item = (-key, doc.unit, doc.position, doc.text)
        if len(heap) < self.limit:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            hashes.discard(-heapq.heapreplace(heap, item)[0])
        else:
            return
        hashes.add(key)

    def close(self) -> str:
        with self.path.open("wb") as handle:
            for source, heap in sorted(self._heaps.items()):
                for key, unit, position, text in sorted(heap, reverse=True):
                    record = {"source": source, "hash": -key, "unit": unit, "position": position, "text": text}
                    handle.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        return str(self.path)


def quotas(available: dict[str, int], weights: dict[str, int], limit: int) -> dict[str, int]:
    """Documents per source: `limit` shared by weight (largest remainders, ties by name), what a source
    cannot fill going to the others by weight."""
    quota = dict.fromkeys(available, 0)
    left = min(limit, sum(available.values()))
    open_sources = sorted(s for s in available if available[s] > 0)
    while left > 0 and open_sources:
        total = sum(weights.get(s, 1) for s in open_sources)
        share = {s: left * weights.get(s, 1) / total for s in open_sources}
        grant = {s: math.floor(share[s]) for s in open_sources}
        by_remainder = sorted(open_sources, key=lambda s: (grant[s] - share[s], s))
        for s in by_remainder[: left - sum(grant.values())]:
            grant[s] += 1
        for s in open_sources:
            given = min(grant[s], available[s] - quota[s])
            quota[s] += given
            left -= given
        open_sources = [s for s in open_sources if quota[s] < available[s]]
    return quota


def merge(rank_dirs: list[Storage], storage: Storage, limit: int, weights: dict[str, int]) -> int:
    """At most `limit` held-out documents, shared across the sources by weight, each source's those with the
    smallest text hash (copies once), in (unit, position) order, written to data/heldout/domain.jsonl;
    returns how many. The same for any number of workers."""
    by_source: dict[str, dict[int, dict[str, Any]]] = {}
    for rank_dir in rank_dirs:
        if rank_dir.exists(RANK_FILE):
            for record in jsonl.records(rank_dir.read_bytes(RANK_FILE)):
                found = by_source.setdefault(record["source"], {})
                first = found.get(record["hash"])
                if first is None or (record["unit"], record["position"]) < (first["unit"], first["position"]):
                    found[record["hash"]] = record
    share = quotas({s: len(found) for s, found in by_source.items()}, weights, limit)
    chosen = [r for s, found in by_source.items() for _, r in sorted(found.items())[: share[s]]]
    chosen.sort(key=lambda r: (r["unit"], r["position"]))
    lines = [json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n" for r in chosen]
    storage.write_text("".join(lines), *HELD_OUT_PATH)
    return len(lines)
