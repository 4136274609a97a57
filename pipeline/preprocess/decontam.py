"""Decontamination: drop training documents that share a long word n-gram with the evaluation data.

Text is normalised as lm-evaluation-harness's decontamination does: lower case, punctuation removed,
whitespace split. The string fields of each evaluation record are joined, so a short question with its
choices still forms long n-grams. Every n-gram (13 words by default) is hashed into one sorted array,
and a training document is contaminated when any of its n-gram hashes is in that array.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from cpt_pipeline import jsonl
from cpt_pipeline.fetch import local_dir
from cpt_pipeline.preprocess.ngrams import ngram_hashes

_PUNCT = re.compile(r"[^\w\s]")


def normalised_words(text: str) -> list[str]:
    return _PUNCT.sub(" ", text.lower()).split()


def stable_ngram_hashes(words: list[str], n: int) -> np.ndarray:
    """n-gram hashes that are the same in every process (xxhash words, no Python hash seed)."""
    if len(words) < n:
        return np.empty(0, dtype=np.uint64)
    ids = np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    return ngram_hashes(ids, n)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def eval_files(locations: Iterable[str]) -> list[Path]:
    """Every .jsonl/.json file under the given directories or files: local, or on s3:// / gs:// (downloaded
    once into the cache, as evaluation does with the same localTaskDir)."""
    found: list[Path] = []
    for location in locations:
        path = Path(location.removeprefix("file://"))
        if location.startswith(("s3://", "gs://")):
            try:
                path = local_dir(location.rstrip("/"), ("*.jsonl", "*.json"))  # fnmatch: * crosses "/"
            except FileNotFoundError as error:
                raise FileNotFoundError(f"decontamination: evaluation data {location!r} not found") from error
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json"))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"decontamination: evaluation data {location!r} not found")
    return found


class Decontaminator:
    """The n-gram index of the evaluation data."""

    def __init__(self, texts: Iterable[str], n: int) -> None:
        self.n = n
        arrays = [stable_ngram_hashes(normalised_words(t), n) for t in texts]
        self.index = np.unique(np.concatenate(arrays)) if arrays else np.empty(0, dtype=np.uint64)

    @classmethod
    def from_files(cls, files: list[Path], n: int) -> Decontaminator:
        texts: list[str] = []
        for path in files:
            text = path.read_text(encoding="utf-8")
            rows = jsonl.records(text) if path.suffix == ".jsonl" else [json.loads(text)] if text.strip() else []
            texts += [" ".join(_strings(row)) for row in rows]  # one text per record: question, choices, passage
        return cls(texts, n)

    def __len__(self) -> int:
        return len(self.index)

    def contaminated(self, text: str) -> bool:
        if len(self.index) == 0:
            return False
        grams = stable_ngram_hashes(normalised_words(text), self.n)
        if len(grams) == 0:
            return False
        positions = np.searchsorted(self.index, grams)
        positions[positions == len(self.index)] = 0
        return bool(np.any(self.index[positions] == grams))
