"""The held-out domain split (evaluation.perplexity.domain.heldOut): documents scored, never trained on.

A document is held out when the 64-bit hash of its text falls in the first `heldOut` share of the hash
range: the split needs no ids, is the same on every worker and every rerun, and exact copies of a held-out
document are held out with it (a copy left in training would leak it). It is drawn after the filters and
decontamination, so the held-out text is as clean as the training text. Each worker writes up to
maxDocuments of its held-out documents; the reduce merges them in the global (unit, position) order into
`data/heldout/domain.jsonl`, which evaluation reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

from cpt_pipeline import jsonl
from cpt_pipeline.preprocess.dedup import exact_hash
from cpt_pipeline.preprocess.readers import Document
from cpt_pipeline.storage import Storage

RANK_FILE = "heldout.jsonl"
HELD_OUT_PATH = ("data", "heldout", "domain.jsonl")


def is_held_out(text: str, fraction: float) -> bool:
    return fraction > 0 and exact_hash(text) < fraction * 2**64


class HeldOutWriter:
    """One worker's held-out documents, up to `limit`, in a scratch file."""

    def __init__(self, scratch: Path, limit: int) -> None:
        self.path = scratch / RANK_FILE
        self.handle: BinaryIO = self.path.open("wb")
        self.limit = limit
        self.written = 0

    def add(self, doc: Document) -> None:
        if self.written < self.limit:
            record = {"unit": doc.unit, "position": doc.position, "text": doc.text}
            self.handle.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
            self.written += 1

    def close(self) -> str:
        self.handle.close()
        return str(self.path)


def merge(rank_dirs: list[Storage], storage: Storage, limit: int) -> int:
    """Every worker's held-out documents in (unit, position) order, copies once, at most `limit`, written to
    data/heldout/domain.jsonl; returns how many."""
    records: list[dict[str, Any]] = []
    for rank_dir in rank_dirs:
        if rank_dir.exists(RANK_FILE):
            records += jsonl.records(rank_dir.read_bytes(RANK_FILE))
    records.sort(key=lambda r: (r["unit"], r["position"]))
    seen: set[int] = set()
    lines = []
    for record in records:
        key = exact_hash(record["text"])
        if key not in seen and len(lines) < limit:
            seen.add(key)
            lines.append(json.dumps({"text": record["text"]}, ensure_ascii=False) + "\n")
    storage.write_text("".join(lines), *HELD_OUT_PATH)
    return len(lines)
