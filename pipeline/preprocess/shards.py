"""Packed token shards: fixed-length rows in flat binary files, listed by a manifest written last.

Format `kubecpt-packed-v1` (see docs/shard-format.md): each shard is `rows x seq_len` tokens, little-
endian uint16 (vocab <= 65536) or uint32, no header, so row i starts at byte i * seq_len * itemsize and
a reader needs only a memmap or an HTTP range read. Documents are concatenated with EOS after each
one. Tokens that do not fill a last row go to `tail.bin`, so none is lost. A shard is written whole and
atomically. The manifest lists only complete shards, and a missing manifest means the set is not ready.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from cpt_pipeline.storage import Storage

FORMAT = "kubecpt-packed-v1"
TARGET_SHARD_BYTES = 64 << 20
FAULT_ENV = "CPT_FAULT_EXIT_AFTER_SHARDS"  # tests: simulate a kill after N shards


def rows_per_shard(seq_len: int, itemsize: int, target_bytes: int = TARGET_SHARD_BYTES) -> int:
    return max(1, target_bytes // (seq_len * itemsize))


@dataclass
class ShardPacker:
    """Concatenates documents into rows of seq_len tokens and writes full shards as they fill."""

    target: Storage
    seq_len: int
    dtype: np.dtype
    rows: int
    shards: list[dict[str, Any]] = field(default_factory=list)
    _buffer: np.ndarray = field(init=False)
    _fill: int = 0

    def __post_init__(self) -> None:
        self.dtype = np.dtype(self.dtype).newbyteorder("<")
        self._buffer = np.empty(self.rows * self.seq_len, dtype=self.dtype)

    def add(self, tokens: np.ndarray) -> None:
        start = 0
        while start < len(tokens):
            take = min(len(tokens) - start, len(self._buffer) - self._fill)
            self._buffer[self._fill : self._fill + take] = tokens[start : start + take]
            self._fill += take
            start += take
            if self._fill == len(self._buffer):
                self._write(self._buffer)
                self._fill = 0

    def _write(self, data: np.ndarray) -> None:
        name = f"shard-{len(self.shards):05d}.bin"
        payload = data.tobytes()
        self.target.write_bytes(payload, name)
        self.shards.append(
            {
                "path": name,
                "rows": len(data) // self.seq_len,
                "tokens": len(data),
                "xxh3_128": xxhash.xxh3_128_hexdigest(payload),
            }
        )
        fault = os.environ.get(FAULT_ENV)
        if fault and len(self.shards) >= int(fault):
            os._exit(137)

    def finish(self) -> dict[str, Any]:
        """Write the last (shorter) shard and the tail; returns the manifest entry of this source."""
        full = (self._fill // self.seq_len) * self.seq_len
        if full:
            self._write(self._buffer[:full])
        tail = self._buffer[full : self._fill]
        self.target.write_bytes(tail.tobytes(), "tail.bin")
        rows = sum(s["rows"] for s in self.shards)
        return {
            "shards": self.shards,
            "rows": rows,
            "tokens": rows * self.seq_len,
            "tail_tokens": len(tail),
            "tail": "tail.bin",
        }


def read_shard(storage: Storage, path: str, seq_len: int, dtype: str) -> np.ndarray:
    """A whole shard as a (rows, seq_len) array."""
    data = np.frombuffer(storage.read_bytes(path), dtype=np.dtype(dtype).newbyteorder("<"))
    return data.reshape(-1, seq_len)
