"""A worker tokenizes each text once: an exact copy of a text it has already written is not tokenized again.

With exact dedup on, the reduce keeps, of documents with equal texts, the first in the global order (unit,
position) and drops the others (`dedup.first_occurrences`). A copy that comes after one its worker has written
is therefore always dropped, and its token ids are never read. The worker still writes it as before (its place,
hashes, signature, and its token count, which the unit's cap and the counts use) with zeros for ids, instead of
tokenizing it. datatrove gets the same saving by deduplicating before it tokenizes.

Copies are recognised by the xxh3-128 of the whole text (a collision, 2^-128 a pair, would put zeros in place of
a kept document's ids). The table holds the last limit/2 to `limit` texts written (about 110 B each): a copy further
back is tokenized, and the reduce drops it as before.
"""

from __future__ import annotations

import xxhash

LIMIT = 1 << 18


def text_key(text: str) -> int:
    return xxhash.xxh3_128_intdigest(text.encode("utf-8", "surrogatepass"))


class WrittenTexts:
    """The texts a worker has written in this segment: key -> (global place, token count), in one int. Two
    generations of limit/2 texts each: when the newer is full, it becomes the older and the older is forgotten."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.half = max(1, limit // 2)
        self._newer: dict[int, int] = {}
        self._older: dict[int, int] = {}

    def trim(self) -> None:
        """Forget the oldest texts once the newer generation is full (between batches, so a batch's lookups stay
        valid); constant time per text."""
        if len(self._newer) >= self.half:
            self._older, self._newer = self._newer, {}

    def _find(self, key: int) -> int | None:
        found = self._newer.get(key)
        return self._older.get(key) if found is None else found

    def tokens_of_earlier_copy(self, key: int, unit: int, position: int) -> int | None:
        """The token count of this text as written at an earlier place in the global order, if it was."""
        found = self._find(key)
        if found is None or found >> 32 >= (unit << 32 | position):
            return None
        return found & 0xFFFFFFFF

    def record(self, key: int, unit: int, position: int, tokens: int) -> None:
        if self._find(key) is None and tokens < 1 << 32:
            self._newer[key] = (unit << 32 | position) << 32 | tokens

    def __contains__(self, key: int) -> bool:
        return self._find(key) is not None
