"""evaluation.perplexity.domain.heldOut: a deterministic share of the domain documents that no shard holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from cpt_pipeline.preprocess.held_out import is_held_out
from cpt_pipeline.storage import Storage
from tests.pipeline.preprocess.helpers import document, make_spec, stories_tokenizer, write_jsonl
from tests.pipeline.preprocess.test_pipeline import run, shards_of

MARK = re.compile(r"\((\d+)\.0\)")


def prepared(tmp_path: Path, name: str, world: int, docs: list[str], max_documents: int = 1000) -> Storage:
    spec = make_spec(
        tmp_path / name,
        [{"name": "a", "uri": str(tmp_path / "a.jsonl")}],
        evaluation={"perplexity": {"domain": {"heldOut": "0.2", "maxDocuments": max_documents}}},
        preprocessing={"workers": world, "limitToBudget": False},
    )
    summary = run(spec, world=world)
    storage = Storage.from_spec(spec.storage)
    assert summary["heldOut"] == sum(is_held_out(d, 0.2) for d in docs)
    return storage


def trained_text(storage: Storage) -> str:
    rows, tail, _ = shards_of(storage, "domain", "a")
    ids = np.concatenate([rows.reshape(-1), tail]).tolist()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(stories_tokenizer()).decode(ids)


def held_out(storage: Storage) -> list[str]:
    text = storage.read_bytes("data", "heldout", "domain.jsonl").decode()
    return [json.loads(line)["text"] for line in text.splitlines()]


def test_held_out_documents_never_reach_a_shard_and_the_split_is_deterministic(tmp_path: Path) -> None:
    docs = [document(i) for i in range(200)]
    copy_of_held = next(d for d in docs if is_held_out(d, 0.2))
    write_jsonl(tmp_path / "a.jsonl", [*docs, copy_of_held])  # a copy of a held-out document is held out too
    written = [*docs, copy_of_held]
    one, two = prepared(tmp_path, "one", 1, written), prepared(tmp_path, "two", 3, written)
    seeds = {int(m) for d in docs if is_held_out(d, 0.2) for m in MARK.findall(d)}
    assert 20 <= len(seeds) <= 60  # about 20% of 200
    for storage in (one, two):
        trained = {int(m) for m in MARK.findall(trained_text(storage))}
        assert trained == set(range(200)) - seeds  # every other document trains, none held out does
        assert {int(m) for d in held_out(storage) for m in MARK.findall(d)} == seeds
    assert held_out(one) == held_out(two)  # the same documents in the same order, whatever the workers
    manifest = one.read_json("data", "domain", "manifest.json")
    assert manifest["held_out"]["documents"] == len(seeds)


def test_the_held_out_file_keeps_max_documents(tmp_path: Path) -> None:
    docs = [document(i) for i in range(200)]
    write_jsonl(tmp_path / "a.jsonl", docs)
    storage = prepared(tmp_path, "capped", 2, docs, max_documents=5)
    assert len(held_out(storage)) == 5
    trained = {int(m) for m in MARK.findall(trained_text(storage))}
    assert not trained & {int(m) for d in docs if is_held_out(d, 0.2) for m in MARK.findall(d)}


def test_the_held_out_file_samples_the_sources_by_weight(tmp_path: Path) -> None:
    """Two sources, units planned source by source: the capped file still holds both, 3:1 as weighted."""
    write_jsonl(tmp_path / "a.jsonl", [document(i) for i in range(300)])
    write_jsonl(tmp_path / "b.jsonl", [document(1000 + i) for i in range(300)])
    sources = [
        {"name": "a", "uri": str(tmp_path / "a.jsonl"), "weight": 3},
        {"name": "b", "uri": str(tmp_path / "b.jsonl")},
    ]
    files = []
    for world in (1, 3):
        spec = make_spec(
            tmp_path / f"out{world}",
            sources,
            evaluation={"perplexity": {"domain": {"heldOut": "0.2", "maxDocuments": 20}}},
            preprocessing={"workers": world, "limitToBudget": False},
        )
        run(spec, world=world)
        files.append(held_out(Storage.from_spec(spec.storage)))
    seeds = [int(MARK.search(text).group(1)) for text in files[0]]
    assert len(seeds) == 20 and len(set(seeds)) == 20
    assert sum(s < 1000 for s in seeds) == 15 and sum(s >= 1000 for s in seeds) == 5
    assert all(is_held_out(text, 0.2) for text in files[0])
    assert files[0] == files[1]  # the same sample whatever the workers
