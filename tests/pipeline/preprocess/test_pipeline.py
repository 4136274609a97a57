"""prepare (parallel workers) + reduce: global dedup, decontamination, packing invariants, atomic reruns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cpt.api.status import PreprocessStatus
from cpt.kube_yaml import dump
from cpt_pipeline.preprocess.runner import prepare, reduce
from cpt_pipeline.preprocess.shards import FAULT_ENV, read_shard
from cpt_pipeline.preprocess.tokenize import TextTokenizer
from cpt_pipeline.storage import Storage
from tests.pipeline.preprocess.helpers import document, make_spec, stories_tokenizer, write_jsonl

REPO = Path(__file__).resolve().parents[3]


def run(spec, world: int, shard_rows: int | None = None) -> dict:
    storage = Storage.from_spec(spec.storage)
    for rank in range(world):
        prepare(spec, storage, rank, world)
    return reduce(spec, storage, world, shard_rows=shard_rows)


def shards_of(storage: Storage, set_name: str, source: str) -> tuple[np.ndarray, np.ndarray, dict]:
    manifest = storage.read_json("data", set_name, "manifest.json")
    entry = manifest["sources"][source]
    base = storage.sub("data", set_name, source)
    rows = [read_shard(base, s["path"], manifest["seq_len"], manifest["dtype"]) for s in entry["shards"]]
    tail = np.frombuffer(base.read_bytes("tail.bin"), dtype=manifest["dtype"])
    return (np.concatenate(rows) if rows else np.empty((0, manifest["seq_len"]))), tail, manifest


def corpus_with_duplicates(tmp_path: Path) -> tuple[list[Path], list[str]]:
    """Three files; documents 3, 5 and 8 reappear in later files (and one twice in the same file)."""
    a = [document(i) for i in range(10)]
    b = [document(100 + i) for i in range(6)] + [a[3], a[5]]
    c = [a[8], document(200), a[8] + "\n", document(201)]  # trailing whitespace: still an exact duplicate
    paths = [write_jsonl(tmp_path / "in" / f"{n}.jsonl", docs) for n, docs in (("a", a), ("b", b), ("c", c))]
    unique = a + b[:6] + [document(200), document(201)]
    return paths, unique


def test_global_exact_dedup_across_three_workers(tmp_path: Path) -> None:
    _, unique = corpus_with_duplicates(tmp_path)
    spec = make_spec(tmp_path / "out", [{"name": "edu", "uri": str(tmp_path / "in" / "*.jsonl")}])
    summary = run(spec, world=3)
    assert summary["docsRead"] == 22 and summary["duplicates"] == 4 and summary["docsKept"] == len(unique)
    PreprocessStatus.model_validate(summary)  # the operator copies this file into status.preprocess as it is
    rows, tail, manifest = shards_of(Storage.from_spec(spec.storage), "domain", "edu")
    tokenizer = TextTokenizer(stories_tokenizer())
    expected = [t for ids in tokenizer.encode_batch(unique) for t in [*ids, tokenizer.info.eos_id]]
    assert np.concatenate([rows.ravel(), tail]).tolist() == expected  # first occurrences, in file order
    assert manifest["workers"] == 3


def test_the_result_does_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    corpus_with_duplicates(tmp_path)
    outputs = []
    for world in (1, 3):
        spec = make_spec(tmp_path / f"out{world}", [{"name": "edu", "uri": str(tmp_path / "in")}])
        run(spec, world, shard_rows=7)
        rows, tail, _ = shards_of(Storage.from_spec(spec.storage), "domain", "edu")
        outputs.append((rows.tobytes(), tail.tobytes()))
    assert outputs[0] == outputs[1]


def test_packing_invariants(tmp_path: Path, shared_data: Path) -> None:
    docs = [json.loads(line)["text"] for line in (shared_data / "corpora" / "openstax_stem.jsonl").open()][:60]
    write_jsonl(tmp_path / "in" / "stem.jsonl", docs)
    spec = make_spec(
        tmp_path / "out",
        [{"name": "stem", "uri": str(tmp_path / "in")}],
        sequenceLength=128,
        filters={"minLines": 0, "repetition": {"enabled": False}},
    )
    run(spec, world=2, shard_rows=50)
    rows, tail, manifest = shards_of(Storage.from_spec(spec.storage), "domain", "stem")
    tokenizer = TextTokenizer(stories_tokenizer())
    encoded = tokenizer.encode_batch(docs)
    assert rows.shape[1] == 128 and len(tail) < 128  # every row is exactly seq_len
    stream = np.concatenate([rows.ravel(), tail])
    assert len(stream) == sum(len(ids) + 1 for ids in encoded)  # no token lost: docs + one EOS each
    ends = np.cumsum([len(ids) + 1 for ids in encoded]) - 1
    assert (stream[ends] == tokenizer.info.eos_id).all()  # EOS between documents
    assert stream.tolist() == [t for ids in encoded for t in [*ids, tokenizer.info.eos_id]]
    entry = manifest["sources"]["stem"]
    assert [s["rows"] for s in entry["shards"]][:-1] == [50] * (len(entry["shards"]) - 1)
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] == 512
    assert manifest["rows"] * 128 + manifest["tail_tokens"] == len(stream)


def test_replay_is_its_own_shard_set_and_budget_caps_reading(tmp_path: Path, shared_data: Path) -> None:
    write_jsonl(tmp_path / "in" / "d.jsonl", [document(i, lines=20) for i in range(200)])
    spec = make_spec(
        tmp_path / "out",
        [{"name": "d", "uri": str(tmp_path / "in")}],
        replay={
            "source": {"name": "stories", "uri": str(shared_data / "corpora" / "stories260k_samples.jsonl")},
            "fraction": "0.25",
        },
        tokenBudget=20000,
        preprocessing={"limitToBudget": True, "workers": 2},
    )
    summary = run(spec, world=2)
    storage = Storage.from_spec(spec.storage)
    domain, replay = (storage.read_json("data", s, "manifest.json") for s in ("domain", "replay"))
    assert set(replay["sources"]) == {"stories"} and replay["tokens_needed"] == 5000
    longest_story = 1000  # tokens; each unit stops at the first document boundary past its share of 1.5 x need
    assert 5000 <= replay["tokens"] + replay["tail_tokens"] < 5000 * 1.5 + longest_story
    assert domain["tokens"] + domain["tail_tokens"] >= 15000
    assert summary["replayTokens"] == replay["tokens"] + replay["tail_tokens"]


def test_decontamination_drops_documents_that_quote_a_benchmark(tmp_path: Path, shared_data: Path) -> None:
    lines = (shared_data / "benchmarks" / "arc_easy" / "validation.jsonl").open()
    item = next(i for i in map(json.loads, lines) if len(i["question"].split()) >= 15)  # long enough for 13-grams
    leaked = document(1) + "\n" + item["question"] + " " + " ".join(item["choices"]["text"]) + "\nEnd of notes."
    write_jsonl(tmp_path / "in" / "d.jsonl", [document(0), leaked, document(2)])
    spec = make_spec(
        tmp_path / "out",
        [{"name": "d", "uri": str(tmp_path / "in")}],
        decontamination={"evalData": [str(shared_data / "benchmarks")]},
    )
    summary = run(spec, world=1)
    assert summary["contaminated"] == 1 and summary["docsKept"] == 2
    manifest = Storage.from_spec(spec.storage).read_json("data", "domain", "manifest.json")
    assert "13-grams from 7 files" in manifest["decontamination"]


def test_llama2_sentencepiece_is_chosen_when_the_fast_conversion_differs(shared_data: Path) -> None:
    import sentencepiece

    tokenizer = TextTokenizer(str(shared_data / "tokenizers" / "llama2-sentencepiece"))
    assert tokenizer.info.backend == "sentencepiece" and "differ" in tokenizer.info.fast_checked
    wiki = (shared_data / "corpora" / "wikitext2_valid.txt").read_text()[:20000]
    reference = sentencepiece.SentencePieceProcessor(
        model_file=str(shared_data / "tokenizers" / "llama2-sentencepiece" / "tokenizer.model")
    )
    assert tokenizer.encode_batch([wiki]) == [reference.encode(wiki)]
    assert (tokenizer.info.vocab_size, tokenizer.info.eos_id, tokenizer.info.dtype) == (32000, 2, "uint16")


def test_a_source_that_yields_nothing_is_a_clear_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in" / "d.jsonl", ["one line only", "another single line"])
    spec = make_spec(tmp_path / "out", [{"name": "short", "uri": str(tmp_path / "in")}])
    with pytest.raises(ValueError, match=r"no document survived from .*in .*min_lines=2"):
        run(spec, world=1)


def write_resource(spec, path: Path) -> Path:
    path.write_text(
        dump(
            {
                "apiVersion": "cpt.kubecpt.dev/v1alpha1",
                "kind": "ContinuedPretrain",
                "metadata": {"name": "t"},
                "spec": spec.to_api(),
            }
        )
    )
    return path


def stage(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "cpt_pipeline", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=300,
    )


def test_killed_reduce_lists_no_partial_shard_and_a_rerun_completes(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in" / "d.jsonl", [document(i, lines=12) for i in range(120)])
    spec = make_spec(tmp_path / "out", [{"name": "d", "uri": str(tmp_path / "in")}])
    resource = write_resource(spec, tmp_path / "cpt.yaml")
    for rank in range(2):
        assert stage(["preprocess", "--spec", str(resource), "--rank", str(rank), "--world-size", "2"]).returncode == 0
    killed = stage(["dedup", "--spec", str(resource), "--world-size", "2", "--shard-rows", "20"], {FAULT_ENV: "2"})
    assert killed.returncode == 137
    storage = Storage.from_spec(spec.storage)
    assert not storage.exists("data", "domain", "manifest.json")  # nothing claims to be complete
    assert not [n for n in storage.list("data", "domain", "d") if ".tmp-" in n]
    rerun = stage(["dedup", "--spec", str(resource), "--world-size", "2", "--shard-rows", "20"])
    assert rerun.returncode == 0, rerun.stderr
    rows, tail, manifest = shards_of(storage, "domain", "d")
    reference = make_spec(tmp_path / "ref", [{"name": "d", "uri": str(tmp_path / "in")}])
    run(reference, world=2, shard_rows=20)
    ref_rows, ref_tail, _ = shards_of(Storage.from_spec(reference.storage), "domain", "d")
    assert rows.tobytes() == ref_rows.tobytes() and tail.tobytes() == ref_tail.tobytes()
    assert len(manifest["sources"]["d"]["shards"]) > 2


def test_unfinished_worker_blocks_reduce_and_reruns_skip_finished_work(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in" / "d.jsonl", [document(i) for i in range(30)])
    spec = make_spec(tmp_path / "out", [{"name": "d", "uri": str(tmp_path / "in")}])
    storage = Storage.from_spec(spec.storage)
    prepare(spec, storage, 0, 2)
    with pytest.raises(RuntimeError, match="worker 1 of 2 has not finished"):
        reduce(spec, storage, 2)
    done = storage.sub("work", "preprocess", "domain", "rank-00000")
    before = os.path.getmtime(done.path("tokens.bin"))
    prepare(spec, storage, 0, 2)  # already done: skipped
    assert os.path.getmtime(done.path("tokens.bin")) == before
    prepare(spec, storage, 1, 2)
    with pytest.raises(RuntimeError, match="world size 2, not 3"):
        reduce(spec, storage, 3)
    assert reduce(spec, storage, 2)["docsKept"] == 30


def test_dropped_documents_can_be_written_for_inspection(tmp_path: Path, shared_data: Path) -> None:
    lines = (shared_data / "benchmarks" / "arc_easy" / "validation.jsonl").open()
    item = next(i for i in map(json.loads, lines) if len(i["question"].split()) >= 15)
    leaked = document(9) + "\n" + item["question"] + " " + " ".join(item["choices"]["text"])
    write_jsonl(tmp_path / "in" / "d.jsonl", [document(0), "one line", leaked, document(2)])
    spec = make_spec(
        tmp_path / "out",
        [{"name": "d", "uri": str(tmp_path / "in")}],
        filters={"writeDropped": True},
        decontamination={"evalData": [str(shared_data / "benchmarks")]},
    )
    run(spec, world=1)
    path = tmp_path / "out" / "work" / "preprocess" / "domain" / "rank-00000" / "dropped.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["reason"], r["text"]) for r in records] == [("min_lines", "one line"), ("contaminated", leaked)]
    first_line = len(json.dumps({"id": 0, "text": document(0)})) + 1
    assert records[0]["location"] == f"{tmp_path / 'in' / 'd.jsonl'}@{first_line}"


def test_minhash_removes_near_duplicates_across_workers(tmp_path: Path) -> None:
    base = [document(i, lines=8) for i in range(12)]
    near = base[4].replace("(4.2)", "(4.2, revised)")  # one small edit: a near duplicate, not an exact one
    write_jsonl(tmp_path / "in" / "a.jsonl", base)
    write_jsonl(tmp_path / "in" / "b.jsonl", [near, document(99, lines=8)])
    exact_only = make_spec(tmp_path / "exact", [{"name": "d", "uri": str(tmp_path / "in")}])
    assert run(exact_only, world=2)["duplicates"] == 0
    spec = make_spec(
        tmp_path / "near",
        [{"name": "d", "uri": str(tmp_path / "in")}],
        dedup={"minhash": {"enabled": True, "threshold": "0.7"}},
    )
    summary = run(spec, world=2)
    assert summary["duplicates"] == 1 and summary["docsKept"] == 13
    rows, tail, _ = shards_of(Storage.from_spec(spec.storage), "domain", "d")
    tokenizer = TextTokenizer(stories_tokenizer())
    kept = [t for t in [*base, near, document(99, lines=8)] if t != near]  # the later copy goes
    expected = [t for ids in tokenizer.encode_batch(kept) for t in [*ids, tokenizer.info.eos_id]]
    assert np.concatenate([rows.ravel(), tail]).tolist() == expected


def test_a_sentencepiece_only_tokenizer_is_converted_and_checked(tmp_path: Path, shared_data: Path) -> None:
    source = shared_data / "tokenizers" / "llama2-sentencepiece"
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(source / name, tmp_path / name)
    tokenizer = TextTokenizer(str(tmp_path))
    # transformers converted the model to a fast tokenizer; its ids were compared with SentencePiece's
    assert tokenizer.info.fast_checked.startswith(("ids match", "ids differ"))
    import sentencepiece

    reference = sentencepiece.SentencePieceProcessor(model_file=str(source / "tokenizer.model"))
    text = "Forces  and\n\n  motion:   a  body at rest stays at rest."
    assert tokenizer.encode_batch([text]) == [reference.encode(text)]  # whichever backend won, ids are exact
