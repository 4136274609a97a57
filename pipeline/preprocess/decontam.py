"""Decontamination: drop training documents that share a long word n-gram with the evaluation data.

Text is normalised as lm-evaluation-harness's decontamination does: lower case, punctuation removed,
whitespace split. The text fields of each evaluation record (not its id or label fields) are joined, so
a short question with its choices still forms long n-grams. Every n-gram (13 words by default) is hashed
into one sorted array, and a training document is contaminated when any of its n-gram hashes is in that
array.

What is indexed is what is evaluated. With `evaluation.localTaskDir`, each task's evaluated split only
(`evaluated_files`: test when the task declares it and its file exists, else validation, as the shipped
task YAMLs are rendered), never its training or few-shot split: web text that overlaps a training split
is not contamination. `decontamination.evalData` names the files to index itself. With hub tasks neither
exists: nothing is decontaminated, and the stage says so (a warning, the manifest and the status).
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
TASKS_DIR = Path(__file__).resolve().parents[1] / "evaluate" / "tasks"  # the shipped task YAMLs
NOT_TEXT = frozenset({"id", "idx", "ind", "label", "labels", "answerKey"})  # ids and labels: no text to match


def normalised_words(text: str) -> list[str]:
    return _PUNCT.sub(" ", text.lower()).split()


def stable_ngram_hashes(words: list[str], n: int) -> np.ndarray:
    """n-gram hashes that are the same in every process (xxhash words, no Python hash seed)."""
    if len(words) < n:
        return np.empty(0, dtype=np.uint64)
    ids = np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    return ngram_hashes(ids, n)


def _strings(value: Any, key: str | None = None) -> Iterator[str]:
    """The text of a record: its strings, nested ones included, except under id and label keys."""
    if key in NOT_TEXT:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _strings(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)


def _local(location: str) -> Path:
    """A local path for a location: itself, or (s3:// and gs://) its .jsonl/.json files downloaded once into
    the cache, as evaluation does with the same localTaskDir."""
    path = Path(location.removeprefix("file://"))
    if location.startswith(("s3://", "gs://")):
        try:
            path = local_dir(location.rstrip("/"), ("*.jsonl", "*.json"))  # fnmatch: * crosses "/"
        except FileNotFoundError as error:
            raise FileNotFoundError(f"decontamination: evaluation data {location!r} not found") from error
    if not path.exists():
        raise FileNotFoundError(f"decontamination: evaluation data {location!r} not found")
    return path


def evaluated_files(task_dir: str, tasks: Iterable[str]) -> list[Path]:
    """The split file lm-eval scores for each task under a localTaskDir: `<task>/test.jsonl` when the shipped
    task declares a test split and the file exists, else `<task>/validation.jsonl`; for a task YAML of the
    user's own (`<task>.yaml`), every file of `<task>/` but train ones. Tasks without files are skipped."""
    root = _local(task_dir)
    files: list[Path] = []
    for name in tasks:
        folder = root / name
        if (root / f"{name}.yaml").is_file():
            own = (p for p in folder.rglob("*") if p.suffix in (".jsonl", ".json") and not p.stem.startswith("train"))
            files += sorted(own)
            continue
        template = TASKS_DIR / f"{name}.yaml"
        declared = template.read_text() if template.exists() else "test_split: test\nvalidation_split: validation"
        split = next(
            (s for s in ("test", "validation") if f"{s}_split: {s}" in declared and (folder / f"{s}.jsonl").is_file()),
            None,
        )
        if split is not None:
            files.append(folder / f"{split}.jsonl")
    return files


def eval_files(locations: Iterable[str]) -> list[Path]:
    """Every .jsonl/.json file under the given directories or files (decontamination.evalData)."""
    found: list[Path] = []
    for location in locations:
        path = _local(location)
        found += sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json")) if path.is_dir() else [path]
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
